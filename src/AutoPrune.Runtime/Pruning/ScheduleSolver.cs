namespace AutoPrune.Pruning;

/// <summary>Entry point: resolves the budget of <see cref="PruningOptions"/> and solves the method's schedule.</summary>
internal static class ScheduleSolver
{
    /// <param name="mi1HeadSum">AutoPrune only: layer 1's mutual information summed over heads (not divided by T).</param>
    public static LayerSchedule Solve(ModelShape shape, PruningOptions options, double mi1HeadSum = 0)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Method == PruningMethod.None) return Unpruned(shape, options); // any number of visual tokens, 0 included
        shape.Validate();
        double budget = Budget.Resolve(options, shape);
        return options.Method switch
        {
            PruningMethod.FastV or PruningMethod.AdaptPrune or PruningMethod.Dart => SinglePruneSchedule.Solve(options.Method, shape, budget, options.Accounting),
            PruningMethod.PDrop => PDropSchedule.Solve(shape, budget, options.Accounting),
            PruningMethod.SparseVLM => SparseVlmSchedule.Solve(shape, budget, options.Accounting, options),
            PruningMethod.VisionZip => VisionZipSchedule.Solve(shape, budget, options.Accounting, options),
            PruningMethod.DivPrune => VisionZipSchedule.SolveDivPrune(shape, budget, options.Accounting),
            PruningMethod.AutoPrune => AutoPruneSchedule.Solve(shape, budget, options.Accounting, options, mi1HeadSum),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Method, "Unknown pruning method."),
        };
    }

    public static LayerSchedule Unpruned(ModelShape shape, PruningOptions options)
    {
        var all = Enumerable.Repeat(shape.VisualTokens, shape.Layers).ToArray();
        return new LayerSchedule(PruningMethod.None, options.Accounting, shape.VisualTokens, all, (int[])all.Clone(), [],
            shape.VisualTokens, shape.VisualTokens, new Dictionary<string, double>(), []);
    }
}
