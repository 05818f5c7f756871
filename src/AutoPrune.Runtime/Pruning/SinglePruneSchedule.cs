namespace AutoPrune.Pruning;

/// <summary>
/// FastV, AdaptPrune and DART: layers 0..K-1 see all V tokens, one prune after layer K-1 keeps k tokens,
/// K = max(1, round(2L/32)).
/// </summary>
internal static class SinglePruneSchedule
{
    /// <summary>The first layer that sees the pruned sequence (0-based): K = max(1, round(2L/32)), at most L-1.</summary>
    public static int PruneLayer(int layers)
    {
        int k = Math.Max(1, ScheduleMath.Round(2.0 * layers / 32.0));
        return layers > 1 ? Math.Min(k, layers - 1) : 1;
    }

    public static double Minimum(ModelShape shape, BudgetAccounting accounting)
    {
        int L = shape.Layers, V = shape.VisualTokens, K = PruneLayer(L);
        if (accounting == BudgetAccounting.Published) return 1;
        if (K >= L) return V;
        return ((double)K * V + (L - K)) / L;
    }

    public static LayerSchedule Solve(PruningMethod method, ModelShape shape, double budgetTokens, BudgetAccounting accounting)
    {
        if (method is not (PruningMethod.FastV or PruningMethod.AdaptPrune or PruningMethod.Dart))
            throw new ArgumentOutOfRangeException(nameof(method), method, "Single-prune schedule is for FastV, AdaptPrune and DART.");
        shape.Validate();
        int L = shape.Layers, V = shape.VisualTokens, K = PruneLayer(L);
        Budget.EnsureFeasible(method, accounting, shape, budgetTokens, Minimum(shape, accounting));

        int keep;
        if (accounting == BudgetAccounting.Published)
        {
            keep = (int)Math.Floor(budgetTokens + 1e-9);
        }
        else
        {
            keep = K >= L ? V : (int)Math.Floor((L * budgetTokens - (double)K * V) / (L - K) + 1e-9);
            // Guard against rounding: the processed average must never exceed the budget.
            while (keep > 1 && ((double)K * V + (double)(L - K) * keep) / L > budgetTokens + 1e-9) keep--;
        }
        keep = Math.Clamp(keep, 1, V);
        return Build(method, shape, accounting, budgetTokens, keep);
    }

    /// <summary>FastV's paper default: keep round((1-R) V) at K.</summary>
    public static LayerSchedule PaperDefault(PruningMethod method, ModelShape shape, PruningOptions options)
    {
        int keep = Math.Clamp(ScheduleMath.Round((1 - options.FastVDropRatio) * shape.VisualTokens), 1, shape.VisualTokens);
        return Build(method, shape, BudgetAccounting.Published, keep, keep);
    }

    private static LayerSchedule Build(PruningMethod method, ModelShape shape, BudgetAccounting accounting, double budget, int keep)
    {
        int L = shape.Layers, V = shape.VisualTokens, K = PruneLayer(L);
        var output = new int[L];
        for (int l = 0; l < L; l++) output[l] = l < K - 1 ? V : keep;
        var processed = ScheduleMath.ProcessedFromOutput(V, output);
        var b = new LayerScheduleBuilder();
        b.Signals["prune_layer"] = K;
        b.Signals["keep"] = keep;
        double achievedProcessed = ScheduleMath.Mean(processed);
        double achievedPublished = keep;
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? achievedProcessed : achievedPublished, budget);
        return new LayerSchedule(method, accounting, budget, processed, output, [new PruneStep(K - 1, keep, 0)],
            achievedProcessed, achievedPublished, b.Signals, b.Notes);
    }
}
