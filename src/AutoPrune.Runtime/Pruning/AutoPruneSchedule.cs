using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>
/// AutoPrune's complexity-adaptive logistic schedule, in two shapes (<see cref="AutoPruneScheduleShape"/>).
/// <para><b>Paper</b>: layer 0 keeps N0 = min(floor(2.5 B), V); after each layer l = 1..L-1 it keeps
/// keep_l = min(ceil((N0-1) * min(1, s * base_l)), current) (at least 1) and recycles the dropped tokens; the scale s
/// is solved by bisection so the average meets B.</para>
/// <para><b>Smooth</b>: the count entering every layer follows one logistic, E_l = min(E_{l-1}, ceil(s V base_l)),
/// scaled by s so the average meets B; N0 = E_1 is part of the curve instead of a fixed 2.5 B, and with
/// <see cref="PruningOptions.AutoPruneBeforeLlm"/> layer 0 itself runs on E_0 &lt;= V tokens chosen before the LLM.
/// The counts before layer 2 are fixed before MI1 is known (with the prior slope k0/2); the curve after them follows
/// the sample's slope.</para>
/// </summary>
internal static class AutoPruneSchedule
{
    /// <summary>Slope k = max(k0 - gamma * MI1 * 32/H, 0); <paramref name="mi1HeadSum"/> is MI summed over heads.</summary>
    public static double Slope(double mi1HeadSum, int heads, PruningOptions options)
        => Math.Max(options.AutoPruneK0 - options.AutoPruneGamma * mi1HeadSum * 32.0 / heads, 0);

    /// <summary>
    /// The slope used to fix the counts needed before MI1 is measured (Smooth shape): the calibration's slope for its median
    /// question when there is one, else half the largest slope. A sample whose own slope is this one gets a curve without a step.
    /// </summary>
    public static double PriorSlope(PruningOptions options)
    {
        if (options.AutoPruneSlope == AutoPruneSlope.Paper && options.AutoPruneGamma == 0) return options.AutoPruneK0; // a fixed slope
        if (options.AutoPruneSlope == AutoPruneSlope.Calibrated && options.AutoPruneCalibration is { } c)
            return c.Slope(c.Quantiles.TryGetValue("p50", out var median) ? median : (c.Low + c.High) / 2, options.AutoPruneK0);
        return options.AutoPruneK0 / 2;
    }

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

    private static bool Recycles(PruningOptions options) => options.AutoPruneRecycle;

    // ---------------------------------------------------------------- paper shape

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
            int recycled = Recycles(options) ? ScheduleMath.RecycleGroups(current - keep, options) : 0;
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
    /// Smallest reachable average. Paper shape: the curve with N0 = 1 (N0 shrinks from 2.5 B when that cannot meet the
    /// budget, in either accounting, so every budget from here up is feasible). Smooth shape: one token per layer after
    /// layer 0 (processed, layer 0 on all V unless it runs before the LLM), or 1.
    /// </summary>
    public static double Minimum(ModelShape shape, BudgetAccounting accounting, PruningOptions options)
    {
        if (options.AutoPruneScheduleShape == AutoPruneScheduleShape.Smooth)
        {
            if (options.AutoPruneBeforeLlm) return 1;
            // Layer 0 runs on all V; a one-layer model has nothing after it to prune.
            if (shape.Layers == 1) return shape.VisualTokens;
            return accounting == BudgetAccounting.Published ? 1 : (shape.VisualTokens + shape.Layers - 1.0) / shape.Layers;
        }
        return MinimumFor(shape, 1, accounting, options);
    }

    /// <summary>
    /// The counts fixed before MI1 is known: what enters layer 0 (V, or fewer when AutoPrune selects before the LLM)
    /// and N0, the count kept after layer 0. Paper shape: N0 depends on the budget only (under processed accounting the
    /// largest N0 &lt;= 2.5 B that leaves a feasible s). Smooth shape: the first two counts of the curve solved with the
    /// prior slope. An infeasible budget fails here.
    /// </summary>
    public static (int Entering, int N0) InitialCounts(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options)
    {
        shape.Validate();
        if (options.AutoPruneScheduleShape == AutoPruneScheduleShape.Smooth)
        {
            Budget.EnsureFeasible(PruningMethod.AutoPrune, accounting, shape, budgetTokens, Minimum(shape, accounting, options));
            var e = SmoothCounts(shape, budgetTokens, accounting, options, PriorSlope(options), null, out _);
            return (e[0], e.Length > 1 ? e[1] : e[0]);
        }
        return (shape.VisualTokens, InitialKeep(shape, budgetTokens, accounting, options));
    }

    private static int InitialKeep(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options)
    {
        int n0 = DefaultN0(budgetTokens, shape.VisualTokens, options);
        if (MinimumFor(shape, n0, accounting, options) <= budgetTokens + 1e-9) return n0;
        // MinimumFor is non-decreasing in n0: binary search the largest feasible n0. (Under published accounting a budget
        // just above another's could otherwise fail: N0 = floor(2.5 B) grows with B faster than the curve's floor.)
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

    /// <summary>Solves the schedule for a sample whose layer-1 mutual information (summed over heads) is <paramref name="mi1HeadSum"/>, with the paper's slope.</summary>
    public static LayerSchedule Solve(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double mi1HeadSum)
    {
        var signals = new Dictionary<string, double>
        {
            ["mi1"] = mi1HeadSum,
            ["mi1_scaled"] = mi1HeadSum * 32.0 / shape.Heads,
        };
        return SolveForSlope(shape, budgetTokens, accounting, options, Slope(mi1HeadSum, shape.Heads, options), signals, []);
    }

    /// <summary>Solves the schedule for slope <paramref name="k"/>; <paramref name="signals"/> and <paramref name="notes"/> go into the report.</summary>
    public static LayerSchedule SolveForSlope(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double k,
        IReadOnlyDictionary<string, double> signals, IEnumerable<string> notes)
    {
        shape.Validate();
        var b = new LayerScheduleBuilder();
        foreach (var (key, v) in signals) b.Signals[key] = v;
        b.Notes.AddRange(notes);
        b.Signals["k"] = k;
        return options.AutoPruneScheduleShape == AutoPruneScheduleShape.Smooth
            ? SolveSmooth(shape, budgetTokens, accounting, options, k, b)
            : SolvePaper(shape, budgetTokens, accounting, options, k, b);
    }

    private static LayerSchedule SolvePaper(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double k, LayerScheduleBuilder b)
    {
        int n0Default = DefaultN0(budgetTokens, shape.VisualTokens, options);
        int n0 = InitialKeep(shape, budgetTokens, accounting, options);
        if (n0 != n0Default)
            b.Notes.Add(string.Create(CultureInfo.InvariantCulture,
                $"AutoPrune: N0 = {n0Default} leaves no feasible scale; using N0 = {n0}."));

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
        b.Signals["s"] = s;
        b.Signals["n0"] = n0;
        double ap = ScheduleMath.Mean(processed), apub = ScheduleMath.Mean(output);
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? ap : apub, budgetTokens);
        return new LayerSchedule(PruningMethod.AutoPrune, accounting, budgetTokens, processed, output, steps, ap, apub, b.Signals, b.Notes);
    }

    // ---------------------------------------------------------------- smooth shape

    /// <summary>
    /// Counts entering each layer (E_0..E_{L-1}) on the curve with slope <paramref name="k"/>, scaled to the budget.
    /// <paramref name="fixedPrefix"/> (E_0, E_1) are kept as given when known. <paramref name="s"/> is the scale found.
    /// </summary>
    internal static int[] SmoothCounts(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double k,
        (int Entering, int N0)? fixedPrefix, out double s)
    {
        int L = shape.Layers, V = shape.VisualTokens;
        bool beforeLlm = options.AutoPruneBeforeLlm;
        int[] Counts(double scale)
        {
            var e = new int[L];
            for (int l = 0; l < L; l++)
            {
                int cap = l == 0 ? V : e[l - 1];
                if (l == 0 && !beforeLlm) { e[0] = V; continue; }
                if (fixedPrefix is { } f && l < 2) { e[l] = l == 0 ? f.Entering : Math.Min(f.N0, cap); continue; }
                double want = scale * V * Base(l, L, k, options);
                e[l] = Math.Clamp((int)Math.Ceiling(want - 1e-9), 1, cap);
            }
            return e;
        }
        double Avg(int[] e) => accounting == BudgetAccounting.Published ? PublishedMean(e) : ScheduleMath.Mean(e);
        double target = budgetTokens + 1e-9;
        // The largest base is at l = 0 (the curve decreases); s = hi makes every free layer keep its cap.
        double minBase = double.PositiveInfinity;
        for (int l = 0; l < L; l++) minBase = Math.Min(minBase, Base(l, L, k, options));
        double hi = minBase > 0 && double.IsFinite(1 / minBase) ? 1 / minBase * 1.0001 : 1e12;
        s = ScheduleMath.BisectLargest(x => Avg(Counts(x)), target, 0, hi, iterations: 100);
        return Counts(s);
    }

    /// <summary>Published accounting of a smooth schedule: each layer counted with what it outputs (the last layer, what it processed).</summary>
    private static double PublishedMean(int[] entering)
    {
        int L = entering.Length;
        double sum = 0;
        for (int l = 0; l < L; l++) sum += l + 1 < L ? entering[l + 1] : entering[L - 1];
        return sum / L;
    }

    private static LayerSchedule SolveSmooth(ModelShape shape, double budgetTokens, BudgetAccounting accounting, PruningOptions options, double k, LayerScheduleBuilder b)
    {
        int L = shape.Layers, V = shape.VisualTokens;
        Budget.EnsureFeasible(PruningMethod.AutoPrune, accounting, shape, budgetTokens, Minimum(shape, accounting, options));
        var prefix = InitialCounts(shape, budgetTokens, accounting, options);
        var e = SmoothCounts(shape, budgetTokens, accounting, options, k, prefix, out double s);
        var steps = new List<PruneStep>();
        if (e[0] < V) steps.Add(new PruneStep(-1, e[0], 0));
        var output = new int[L];
        for (int l = 0; l < L; l++)
        {
            int next = l + 1 < L ? e[l + 1] : e[L - 1];
            output[l] = next;
            if (l + 1 < L && next < e[l]) steps.Add(SmoothStep(l, e[l], next, options, recycle: l >= 1));
        }
        b.Signals["s"] = s;
        b.Signals["n0"] = L > 1 ? e[1] : e[0];
        b.Signals["entering_layer0"] = e[0];
        double ap = ScheduleMath.Mean(e), apub = PublishedMean(e);
        ScheduleMath.CheckWithinOneToken(b, accounting == BudgetAccounting.Processed ? ap : apub, budgetTokens);
        return new LayerSchedule(PruningMethod.AutoPrune, accounting, budgetTokens, e, output, steps, ap, apub, b.Signals, b.Notes);
    }

    /// <summary>
    /// A prune from <paramref name="current"/> to <paramref name="target"/> tokens: without recycling keep the target;
    /// with it, the most kept tokens such that kept + merged groups of the dropped ones = target (a drop too small to
    /// leave room for a merged token just keeps the target).
    /// </summary>
    private static PruneStep SmoothStep(int layer, int current, int target, PruningOptions options, bool recycle)
    {
        if (recycle && Recycles(options))
            for (int kept = target - 1; kept >= 1; kept--)
            {
                int groups = ScheduleMath.RecycleGroups(current - kept, options);
                if (kept + groups == target) return new PruneStep(layer, kept, groups);
                if (kept + groups < target) break;
            }
        return new PruneStep(layer, target, 0);
    }
}
