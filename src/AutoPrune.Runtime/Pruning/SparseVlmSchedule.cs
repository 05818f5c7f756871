namespace AutoPrune.Pruning;

/// <summary>
/// SparseVLM: prune after layers round(l*L/32), l = 2, 6, 15 (distinct, at least 1). Each prune keeps
/// floor(rho * current) tokens (at least 1) and recycles the dropped ones into
/// <see cref="ScheduleMath.RecycleGroups"/> merged tokens, which count toward the budget.
/// One ratio rho for all three prunes is solved by bisection.
/// </summary>
internal static class SparseVlmSchedule
{
    public static int[] PruneLayers(int layers)
    {
        var result = new List<int>(3);
        foreach (int l in (int[])[2, 6, 15])
        {
            int p = Math.Max(1, ScheduleMath.Round(l * layers / 32.0));
            if (result.Count > 0) p = Math.Max(p, result[^1] + 1);
            if (p <= layers - 1) result.Add(p);
        }
        return result.ToArray();
    }

    internal static int[] Output(ModelShape shape, int[] pruneLayers, double rho, PruningOptions options, out PruneStep[] steps)
    {
        int L = shape.Layers;
        var output = new int[L];
        steps = new PruneStep[pruneLayers.Length];
        int current = shape.VisualTokens, stage = 0;
        for (int l = 0; l < L; l++)
        {
            if (stage < pruneLayers.Length && l == pruneLayers[stage])
            {
                int keep = Math.Clamp((int)Math.Floor(rho * current), 1, current);
                int recycled = ScheduleMath.RecycleGroups(current - keep, options);
                steps[stage++] = new PruneStep(l, keep, recycled);
                current = keep + recycled;
            }
            output[l] = current;
        }
        return output;
    }

    private static double Achieved(ModelShape shape, int[] pruneLayers, double rho, PruningOptions options, BudgetAccounting accounting)
    {
        var output = Output(shape, pruneLayers, rho, options, out _);
        return accounting == BudgetAccounting.Published
            ? ScheduleMath.Mean(output)
            : ScheduleMath.Mean(ScheduleMath.ProcessedFromOutput(shape.VisualTokens, output));
    }

    public static double Minimum(ModelShape shape, BudgetAccounting accounting, PruningOptions options)
        => Achieved(shape, PruneLayers(shape.Layers), 0, options, accounting);

    public static LayerSchedule Solve(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options)
    {
        shape.Validate();
        var layers = PruneLayers(shape.Layers);
        Budget.EnsureFeasible(PruningMethod.SparseVLM, accounting, shape, budgetTokens, Minimum(shape, accounting, options));
        double rho = ScheduleMath.BisectLargest(x => Achieved(shape, layers, x, options, accounting), budgetTokens + 1e-9, 0, 1);

        var output = Output(shape, layers, rho, options, out var steps);
        var processed = ScheduleMath.ProcessedFromOutput(shape.VisualTokens, output);
        var b = new LayerScheduleBuilder();
        b.Signals["rho"] = rho;
        for (int i = 0; i < layers.Length; i++) b.Signals[$"prune_layer{i + 1}"] = layers[i];
        double ap = ScheduleMath.Mean(processed), apub = ScheduleMath.Mean(output);
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? ap : apub, budgetTokens);
        return new LayerSchedule(PruningMethod.SparseVLM, accounting, budgetTokens, processed, output, steps, ap, apub, b.Signals, b.Notes);
    }
}
