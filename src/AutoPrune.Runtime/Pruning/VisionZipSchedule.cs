namespace AutoPrune.Pruning;

/// <summary>VisionZip (D dominant + C contextual) and DivPrune (k diverse): tokens chosen before the LLM, constant at every layer.</summary>
internal static class VisionZipSchedule
{
    public static double Minimum() => 1;

    /// <summary>D = round(f * n), C = n - D with n = floor(B) (64 -> 54+10, 128 -> 108+20, 192 -> 162+30).</summary>
    public static (int Dominant, int Contextual) Split(double budgetTokens, PruningOptions options)
    {
        int n = Math.Max(1, (int)Math.Floor(budgetTokens + 1e-9));
        int d = Math.Clamp(ScheduleMath.Round(options.VisionZipDominantFraction * n), 1, n);
        return (d, n - d);
    }

    public static LayerSchedule Solve(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options)
    {
        shape.Validate();
        Budget.EnsureFeasible(PruningMethod.VisionZip, accounting, shape, budgetTokens, Minimum());
        var (d, c) = Split(budgetTokens, options);
        var b = new LayerScheduleBuilder();
        b.Signals["dominant"] = d;
        b.Signals["contextual"] = c;
        return BeforeLlm(PruningMethod.VisionZip, shape, accounting, budgetTokens, d, c, b);
    }

    /// <summary>
    /// DivPrune: k = floor(B) tokens chosen before the LLM, processed by every layer (both accountings).
    /// </summary>
    public static LayerSchedule SolveDivPrune(ModelShape shape, double budgetTokens, BudgetAccounting accounting)
    {
        shape.Validate();
        Budget.EnsureFeasible(PruningMethod.DivPrune, accounting, shape, budgetTokens, Minimum());
        int k = Math.Clamp((int)Math.Floor(budgetTokens + 1e-9), 1, shape.VisualTokens);
        var b = new LayerScheduleBuilder();
        b.Signals["keep"] = k;
        return BeforeLlm(PruningMethod.DivPrune, shape, accounting, budgetTokens, k, 0, b);
    }

    /// <summary>A schedule whose selection happens before the LLM: <paramref name="kept"/> + <paramref name="merged"/> tokens at every layer.</summary>
    private static LayerSchedule BeforeLlm(PruningMethod method, ModelShape shape, BudgetAccounting accounting, double budgetTokens, int kept, int merged, LayerScheduleBuilder b)
    {
        int n = Math.Min(kept + merged, shape.VisualTokens);
        var processed = Enumerable.Repeat(n, shape.Layers).ToArray();
        ScheduleMath.CheckWithinOneToken(b, n, budgetTokens);
        return new LayerSchedule(method, accounting, budgetTokens, processed, (int[])processed.Clone(),
            [new PruneStep(-1, kept, merged)], n, n, b.Signals, b.Notes);
    }
}
