namespace AutoPrune.Pruning;

/// <summary>VisionZip: D dominant + C contextual tokens before the LLM, constant at every layer.</summary>
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
        int n = Math.Min(d + c, shape.VisualTokens);
        var processed = Enumerable.Repeat(n, shape.Layers).ToArray();
        var b = new LayerScheduleBuilder();
        b.Signals["dominant"] = d;
        b.Signals["contextual"] = c;
        ScheduleMath.CheckWithinOneToken(b, n, budgetTokens);
        return new LayerSchedule(PruningMethod.VisionZip, accounting, budgetTokens, processed, (int[])processed.Clone(),
            [new PruneStep(-1, d, c)], n, n, b.Signals, b.Notes);
    }
}
