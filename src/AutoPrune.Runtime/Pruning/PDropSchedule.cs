using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>
/// PyramidDrop: stages end at L/4, L/2, 3L/4 (boundary b = first layer of the next stage, the prune
/// happens after layer b-1). Stage i keeps floor(lambda^i * V) (at least 1); lambda is
/// solved by bisection to meet the budget.
/// </summary>
internal static class PDropSchedule
{
    /// <summary>Default boundaries round(i*L/4), i = 1..3, clamped to [1, L-1], distinct.</summary>
    public static int[] DefaultBoundaries(int layers)
        => Normalise([ScheduleMath.Round(layers / 4.0), ScheduleMath.Round(layers / 2.0), ScheduleMath.Round(3.0 * layers / 4.0)], layers);

    /// <summary>Fallback: first boundary at <paramref name="first"/>, the other two evenly over the remaining depth.</summary>
    public static int[] EvenBoundariesFrom(int first, int layers)
        => Normalise([first, first + ScheduleMath.Round((layers - first) / 3.0), first + ScheduleMath.Round(2.0 * (layers - first) / 3.0)], layers);

    private static int[] Normalise(int[] b, int layers)
    {
        var result = new List<int>(3);
        foreach (int x in b)
        {
            int v = Math.Max(x, result.Count == 0 ? 1 : result[^1] + 1);
            if (v <= layers - 1) result.Add(v);
        }
        return result.ToArray();
    }

    internal static int[] Output(int layers, int visual, int[] boundaries, double lambda, out int[] stageCounts)
    {
        stageCounts = new int[boundaries.Length];
        var output = new int[layers];
        int current = visual, stage = 0;
        for (int l = 0; l < layers; l++)
        {
            if (stage < boundaries.Length && l == boundaries[stage] - 1)
            {
                // floor(lambda^i * V) rather than floor(lambda * current): the count is then continuous in
                // lambda up to a single one-token step per stage, so bisection lands within one token.
                current = Math.Clamp((int)Math.Floor(Math.Pow(lambda, stage + 1) * visual), 1, current);
                stageCounts[stage++] = current;
            }
            output[l] = current;
        }
        return output;
    }

    private static double Achieved(int layers, int visual, int[] boundaries, double lambda, BudgetAccounting accounting)
    {
        var output = Output(layers, visual, boundaries, lambda, out _);
        return accounting == BudgetAccounting.Published
            ? ScheduleMath.Mean(output)
            : ScheduleMath.Mean(ScheduleMath.ProcessedFromOutput(visual, output));
    }

    private static double MinimumFor(ModelShape shape, int[] boundaries, BudgetAccounting accounting)
        => Achieved(shape.Layers, shape.VisualTokens, boundaries, 0, accounting);

    /// <summary>Smallest reachable average: boundaries from layer 1 (the earliest allowed) with lambda -> 0.</summary>
    public static double Minimum(ModelShape shape, BudgetAccounting accounting)
    {
        if (shape.Layers < 2) return shape.VisualTokens;
        return Math.Min(MinimumFor(shape, DefaultBoundaries(shape.Layers), accounting),
                        MinimumFor(shape, EvenBoundariesFrom(1, shape.Layers), accounting));
    }

    public static LayerSchedule Solve(ModelShape shape, double budgetTokens, BudgetAccounting accounting)
    {
        shape.Validate();
        int L = shape.Layers, V = shape.VisualTokens;
        var b = new LayerScheduleBuilder();
        Budget.EnsureFeasible(PruningMethod.PDrop, accounting, shape, budgetTokens, Minimum(shape, accounting));

        int[] boundaries = DefaultBoundaries(L);
        if (MinimumFor(shape, boundaries, accounting) > budgetTokens + 1e-9)
        {
            // Largest first boundary (closest to the default) that makes the budget feasible, never before layer 1.
            int first = boundaries.Length > 0 ? boundaries[0] - 1 : 1;
            for (; first >= 1; first--)
            {
                boundaries = EvenBoundariesFrom(first, L);
                if (MinimumFor(shape, boundaries, accounting) <= budgetTokens + 1e-9) break;
            }
            if (first < 1) boundaries = EvenBoundariesFrom(1, L);
            b.Notes.Add(string.Create(CultureInfo.InvariantCulture,
                $"PDrop: the default stage boundaries ({string.Join(", ", DefaultBoundaries(L))}) cannot meet the budget; stages moved to end at layers {string.Join(", ", boundaries)} (evenly from the latest feasible first boundary)."));
        }

        double lambda = ScheduleMath.BisectLargest(x => Achieved(L, V, boundaries, x, accounting), budgetTokens + 1e-9, 0, 1);
        return Build(shape, accounting, budgetTokens, boundaries, lambda, b);
    }

    /// <summary>PDrop's paper default: lambda = options.PDropLambda at the default boundaries.</summary>
    public static LayerSchedule PaperDefault(ModelShape shape, PruningOptions options)
    {
        shape.Validate();
        var boundaries = DefaultBoundaries(shape.Layers);
        var output = Output(shape.Layers, shape.VisualTokens, boundaries, options.PDropLambda, out _);
        return Build(shape, BudgetAccounting.Processed, ScheduleMath.Mean(ScheduleMath.ProcessedFromOutput(shape.VisualTokens, output)),
            boundaries, options.PDropLambda, new LayerScheduleBuilder());
    }

    private static LayerSchedule Build(ModelShape shape, BudgetAccounting accounting, double budget, int[] boundaries, double lambda, LayerScheduleBuilder b)
    {
        int L = shape.Layers, V = shape.VisualTokens;
        var output = Output(L, V, boundaries, lambda, out var stageCounts);
        var processed = ScheduleMath.ProcessedFromOutput(V, output);
        var steps = new PruneStep[boundaries.Length];
        for (int i = 0; i < boundaries.Length; i++) steps[i] = new PruneStep(boundaries[i] - 1, stageCounts[i], 0);
        b.Signals["lambda"] = lambda;
        for (int i = 0; i < boundaries.Length; i++) b.Signals[$"boundary{i + 1}"] = boundaries[i];
        double ap = ScheduleMath.Mean(processed), apub = ScheduleMath.Mean(output);
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? ap : apub, budget);
        return new LayerSchedule(PruningMethod.PDrop, accounting, budget, processed, output, steps, ap, apub, b.Signals, b.Notes);
    }
}
