using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>
/// AutoPrune's complexity-adaptive logistic schedule. Layer 0 keeps N0 = min(floor(2.5 B), V); after
/// each layer l = 1..L-1 it keeps keep_l = min(ceil((N0-1) * min(1, s * base_l)), current) (at least 1)
/// and recycles the dropped tokens; the scale s is solved by bisection so the average meets B.
/// </summary>
internal static class AutoPruneSchedule
{
    /// <summary>Slope k = max(k0 - gamma * MI1 * 32/H, 0); <paramref name="mi1HeadSum"/> is MI summed over heads.</summary>
    public static double Slope(double mi1HeadSum, int heads, PruningOptions options)
        => Math.Max(options.AutoPruneK0 - options.AutoPruneGamma * mi1HeadSum * 32.0 / heads, 0);

    /// <summary>base_l = A / (1 + exp(k*32/L * (l - (x0*L/32 + k)))).</summary>
    public static double Base(int layer, int layers, double k, PruningOptions options)
    {
        double x0 = options.AutoPruneX0 * layers / 32.0;
        double slope = k * 32.0 / layers;
        return options.AutoPruneAmplitude / (1 + Math.Exp(slope * (layer - (x0 + k))));
    }

    /// <summary>N0 = min(floor(factor * B), V).</summary>
    public static int DefaultN0(double budgetTokens, int visual, PruningOptions options)
        => Math.Clamp((int)Math.Floor(options.AutoPruneN0Factor * budgetTokens + 1e-9), 1, visual);

    internal static int[] Output(ModelShape shape, int n0, double k, double s, PruningOptions options, out PruneStep[] steps)
    {
        int L = shape.Layers;
        var output = new int[L];
        steps = new PruneStep[Math.Max(0, L - 1) + 1];
        output[0] = n0;
        steps[0] = new PruneStep(0, n0, 0);
        int current = n0;
        for (int l = 1; l < L; l++)
        {
            double ratio = Math.Min(1.0, s * Base(l, L, k, options));
            int target = (int)Math.Ceiling((n0 - 1) * ratio - 1e-12);
            int keep = Math.Clamp(target, 1, current);
            int recycled = ScheduleMath.RecycleGroups(current - keep, options);
            steps[l] = new PruneStep(l, keep, recycled);
            current = keep + recycled;
            output[l] = current;
        }
        return output;
    }

    private static double Achieved(ModelShape shape, int n0, double k, double s, PruningOptions options, BudgetAccounting accounting)
    {
        var output = Output(shape, n0, k, s, options, out _);
        return accounting == BudgetAccounting.Published
            ? ScheduleMath.Mean(output)
            : ScheduleMath.Mean(ScheduleMath.ProcessedFromOutput(shape.VisualTokens, output));
    }

    // At s = 0 every layer keeps one token (plus recycled ones), independent of k.
    private static double MinimumFor(ModelShape shape, int n0, BudgetAccounting accounting, PruningOptions options)
        => Achieved(shape, n0, 0, 0, options, accounting);

    /// <summary>
    /// Smallest reachable average. Processed: N0 = 1 (shrunk), i.e. (V + L - 1) / L. Published: N0 is not
    /// shrunk, so the smallest integer budget B whose N0 = floor(2.5 B) still fits.
    /// </summary>
    public static double Minimum(ModelShape shape, BudgetAccounting accounting, PruningOptions options)
    {
        if (accounting == BudgetAccounting.Processed) return MinimumFor(shape, 1, accounting, options);
        for (int b = 1; b <= shape.VisualTokens; b++)
            if (MinimumFor(shape, DefaultN0(b, shape.VisualTokens, options), accounting, options) <= b + 1e-9) return b;
        return shape.VisualTokens;
    }

    /// <summary>
    /// N0, the count kept after layer 0. It depends on the budget only (not on MI1), so the runtime can
    /// pre-select before layer 1 runs. Under processed accounting it is the largest N0 &lt;= 2.5 B that
    /// leaves a feasible s.
    /// </summary>
    public static int InitialKeep(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options)
    {
        shape.Validate();
        int n0 = DefaultN0(budgetTokens, shape.VisualTokens, options);
        if (MinimumFor(shape, n0, accounting, options) <= budgetTokens + 1e-9) return n0;
        if (accounting == BudgetAccounting.Published)
            throw Budget.Infeasible(PruningMethod.AutoPrune, accounting, shape, budgetTokens, Minimum(shape, accounting, options));
        // MinimumFor is non-decreasing in n0: binary search the largest feasible n0.
        int lo = 1, hi = n0 - 1;
        if (MinimumFor(shape, 1, accounting, options) > budgetTokens + 1e-9)
            throw Budget.Infeasible(PruningMethod.AutoPrune, accounting, shape, budgetTokens, Minimum(shape, accounting, options));
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (MinimumFor(shape, mid, accounting, options) <= budgetTokens + 1e-9) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>Solves the schedule for a sample whose layer-1 mutual information (summed over heads) is <paramref name="mi1HeadSum"/>.</summary>
    public static LayerSchedule Solve(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double mi1HeadSum)
    {
        shape.Validate();
        var b = new LayerScheduleBuilder();
        int n0Default = DefaultN0(budgetTokens, shape.VisualTokens, options);
        int n0 = InitialKeep(shape, budgetTokens, accounting, options);
        if (n0 != n0Default)
            b.Notes.Add(string.Create(CultureInfo.InvariantCulture,
                $"AutoPrune: N0 = {n0Default} leaves no feasible scale under processed accounting; using N0 = {n0}."));

        double k = Slope(mi1HeadSum, shape.Heads, options);
        double target = budgetTokens + 1e-9;
        Func<double, double> f = s => Achieved(shape, n0, k, s, options, accounting);
        double sMax = options.AutoPruneMaxScale;
        double s = ScheduleMath.BisectLargest(f, target, 0, sMax);
        if (s >= sMax && budgetTokens - f(s) >= 1 - 1e-9)
        {
            // The curve at s = sMax stays below the budget: widen the interval until every layer keeps N0-1.
            double minBase = double.PositiveInfinity;
            for (int l = 1; l < shape.Layers; l++) minBase = Math.Min(minBase, Base(l, shape.Layers, k, options));
            double sHi = minBase > 0 && double.IsFinite(1 / minBase) ? Math.Max(sMax, 1 / minBase) : 1e12;
            s = ScheduleMath.BisectLargest(f, target, sMax, sHi);
            b.Notes.Add(string.Create(CultureInfo.InvariantCulture,
                $"AutoPrune: the budget needs a curve scale above {sMax}; searched up to {sHi:G4}."));
        }

        var output = Output(shape, n0, k, s, options, out var steps);
        var processed = ScheduleMath.ProcessedFromOutput(shape.VisualTokens, output);
        b.Signals["mi1"] = mi1HeadSum;
        b.Signals["mi1_scaled"] = mi1HeadSum * 32.0 / shape.Heads;
        b.Signals["k"] = k;
        b.Signals["s"] = s;
        b.Signals["n0"] = n0;
        double ap = ScheduleMath.Mean(processed), apub = ScheduleMath.Mean(output);
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? ap : apub, budgetTokens);
        return new LayerSchedule(PruningMethod.AutoPrune, accounting, budgetTokens, processed, output, steps, ap, apub, b.Signals, b.Notes);
    }
}
