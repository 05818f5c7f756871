namespace AutoPrune.Pruning;

/// <summary>
/// One pruning step: after decoder layer <see cref="AfterLayer"/> (0-based; -1 = before the LLM, VisionZip)
/// keep <see cref="Kept"/> visual tokens and insert <see cref="Recycled"/> merged tokens after them.
/// </summary>
internal readonly record struct PruneStep(int AfterLayer, int Kept, int Recycled)
{
    public int Output => Kept + Recycled;
}

/// <summary>
/// A solved per-layer visual-token schedule. <see cref="Processed"/>[l] is the number of visual tokens
/// layer l runs on; <see cref="Output"/>[l] the number leaving layer l (after its pruning and recycling).
/// </summary>
internal sealed record LayerSchedule(
    PruningMethod Method,
    BudgetAccounting Accounting,
    double Budget,
    int[] Processed,
    int[] Output,
    IReadOnlyList<PruneStep> Steps,
    double AchievedProcessed,
    double AchievedPublished,
    IReadOnlyDictionary<string, double> Signals,
    IReadOnlyList<string> Notes)
{
    /// <summary>The achieved average in the chosen accounting.</summary>
    public double Achieved => Accounting == BudgetAccounting.Processed ? AchievedProcessed : AchievedPublished;
}

/// <summary>Small helpers shared by the schedule solvers.</summary>
internal static class ScheduleMath
{
    /// <summary>Rounds half away from zero (2.5 -> 3), used for every depth-scaled layer position.</summary>
    public static int Round(double x) => (int)Math.Round(x, MidpointRounding.AwayFromZero);

    /// <summary>Processed counts from output counts: layer 0 sees <paramref name="input"/>, layer l sees Output[l-1].</summary>
    public static int[] ProcessedFromOutput(int input, int[] output)
    {
        var processed = new int[output.Length];
        for (int l = 0; l < output.Length; l++) processed[l] = l == 0 ? input : output[l - 1];
        return processed;
    }

    public static double Mean(ReadOnlySpan<int> counts)
    {
        if (counts.Length == 0) return 0;
        long sum = 0;
        foreach (int c in counts) sum += c;
        return (double)sum / counts.Length;
    }

    /// <summary>Number of dropped tokens that are recycled: top fraction (+1), at most all of them.</summary>
    public static int RecycleSelected(int dropped, PruningOptions options)
    {
        if (dropped <= 0) return 0;
        return Math.Min(dropped, (int)Math.Floor(options.RecycleFraction * dropped + 1e-9) + 1);
    }

    /// <summary>Number of merged tokens produced from <paramref name="dropped"/> dropped tokens: floor(n/10)+1 groups of the n selected.</summary>
    public static int RecycleGroups(int dropped, PruningOptions options)
    {
        int n = RecycleSelected(dropped, options);
        if (n == 0) return 0;
        return Math.Min(n, n / Math.Max(1, options.RecycleClusterDivisor) + 1);
    }

    /// <summary>Largest x in [lo, hi] with f(x) &lt;= target, for f non-decreasing; assumes f(lo) &lt;= target.</summary>
    public static double BisectLargest(Func<double, double> f, double target, double lo, double hi, int iterations = 80)
    {
        if (f(hi) <= target) return hi;
        for (int i = 0; i < iterations; i++)
        {
            double mid = 0.5 * (lo + hi);
            if (f(mid) <= target) lo = mid; else hi = mid;
        }
        return lo;
    }

    public static void CheckWithinOneToken(LayerScheduleBuilder b, double achieved, double budget)
    {
        if (budget - achieved >= 1 - 1e-9)
            b.Notes.Add(FormattableString.Invariant($"Achieved average {achieved:0.###} is more than one token below the budget {budget:0.###}: the method cannot reach the budget exactly."));
    }
}

/// <summary>Mutable helper used while solving.</summary>
internal sealed class LayerScheduleBuilder
{
    public Dictionary<string, double> Signals { get; } = new(StringComparer.Ordinal);
    public List<string> Notes { get; } = new();
}
