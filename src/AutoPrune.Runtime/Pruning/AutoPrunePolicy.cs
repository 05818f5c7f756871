using AutoPrune.Compute;
using System.Globalization;
using System.Numerics.Tensors;

namespace AutoPrune.Pruning;

/// <summary>
/// AutoPrune: a per-sample retention curve over the decoder layers whose slope follows how focused the question's
/// attention on the image is (layer 1's text–image mutual information), scaled to meet the budget exactly.
/// <list type="bullet">
/// <item>Optionally (<see cref="PruningOptions.AutoPruneBeforeLlm"/>) layer 0 runs only on the tokens the curve gives
/// it, chosen before the LLM by the vision tower's [CLS] attention.</item>
/// <item>After layer 0, pre-selection by [CLS] + MI0-weighted text attention keeps N0.</item>
/// <item>After layer 1, MI1 sets the slope k (the paper's formula, this model's calibration, or the scale-free
/// default) and the rest of the curve is solved.</item>
/// <item>After each later layer, the tokens the text attends to most are kept; dropped ones may be recycled.</item>
/// </list>
/// Every selection can add coverage (<see cref="PruningOptions.AutoPruneCoverage"/>): a soft suppression of tokens
/// close to and like one already kept, so every distinct region keeps a token.
/// </summary>
internal sealed class AutoPrunePolicy : IPruningPolicy
{
    private readonly ModelShape _shape;
    private readonly PruningOptions _options;
    private readonly double _budget;
    private readonly (int Entering, int N0) _initial;
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    private VisionFeatures? _vision;
    private float[]? _clsMeanHost;
    private VisualImage? _image;

    public AutoPrunePolicy(ModelShape shape, PruningOptions options)
    {
        _shape = shape;
        _options = options;
        _budget = Budget.Resolve(options, shape);
        _initial = AutoPruneSchedule.InitialCounts(shape, _budget, options.Accounting, options); // an infeasible budget fails here
        options.AutoPruneCalibration?.EnsureMatches(shape);
        // Until layer 1 has measured MI1 (on a model too shallow to reach it, for good) the curve has the prior slope.
        Schedule = AutoPruneSchedule.SolveForSlope(shape, _budget, options.Accounting, options, AutoPruneSchedule.PriorSlope(options),
            new Dictionary<string, double>(), ["AutoPrune: the model has no layer 1 to measure MI1 at; the curve has the prior slope k0/2."]);
    }

    public PruningMethod Method => PruningMethod.AutoPrune;
    public LayerSchedule? Schedule { get; private set; }
    public bool RunsInDecoder => true;
    public IReadOnlyDictionary<string, double> RuntimeSignals => _signals;

    private bool Renumber => false; // positions: the session's PruneContext applies PruningOptions.Positions over this default

    public void OnVision(VisionFeatures vision)
    {
        if (vision.Device is null ? vision.ClsAttention is null : vision.Device.Cls is null)
            throw new NotSupportedException("AutoPrune needs the vision tower's [CLS] attention, but this model's feature layer is the embedding layer.");
        _vision = vision;
    }

    /// <summary>Whether the request's vision features are on a GPU (the device selections need them there).</summary>
    internal bool VisionOnDevice => _vision?.Device is not null;

    /// <summary>The vision features of the request (set by <see cref="OnVision"/>).</summary>
    internal VisionFeatures Vision => _vision ?? throw new InvalidOperationException("AutoPrune has not seen the vision features.");

    /// <summary>The [CLS] attention's head mean per token (or the attention each token receives), computed on the host when the host code first needs it.</summary>
    private float[] ClsMean => _clsMeanHost ??= (_image ?? throw new InvalidOperationException("AutoPrune has not seen the image.")).ClsMean();

    /// <summary>The visual tokens entering layer 0 and the count after layer 0's pre-selection.</summary>
    internal (int Entering, int N0) Initial => _initial;

    internal PruningOptions Options => _options;

    /// <summary>The request's image: its map and the vision tower's signals per token.</summary>
    public void OnImage(VisualImage image)
    {
        _image = image;
        _clsMeanHost = null;
    }

    /// <summary>
    /// Stage 0 (before the LLM): the curve's first count, by the [CLS] attention (or the attention each token receives)
    /// with coverage over the vision keys and the tokens' places in the image, or by diversity of the projected tokens;
    /// LLaVA-1.5's "full" [CLS] row is always kept.
    /// </summary>
    public PreLlmSelection? SelectBeforeLlm(VisualImage image)
    {
        int cls = image.Map.HasCls ? 1 : 0;
        if (_initial.Entering >= image.Count + cls) return null;
        bool original = _options.Positions != PrunedPositions.Contiguous;
        int k = _initial.Entering - cls;
        int[] keep;
        if (_options.AutoPruneBeforeLlmSelection == AutoPruneBeforeLlmSelection.Diversity)
        {
            var rows = image.ProjectedTokens();
            int d = image.Hidden;
            keep = image.Map.SquareGrid is not null ? DivPruneSelector.Select(rows, d, k)
                : image.SelectByScope(k, (candidates, q) =>
                {
                    var f = new float[candidates.Length * d];
                    for (int j = 0; j < candidates.Length; j++) rows.AsSpan(candidates[j] * d, d).CopyTo(f.AsSpan(j * d, d));
                    return DivPruneSelector.Select(f, d, q);
                });
        }
        else
        {
            int dk = image.KeyDim;
            var unit = CoverageNms.Normalize(image.Keys(), dk);
            var score = ClsMean;
            keep = image.Map.SquareGrid is not null ? Select(score, unit, dk, Enumerable.Range(0, image.Count).ToArray(), k)
                : image.SelectByScope(k, (candidates, q) =>
                {
                    var f = new float[candidates.Length * dk];
                    for (int j = 0; j < candidates.Length; j++) unit.AsSpan(candidates[j] * dk, dk).CopyTo(f.AsSpan(j * dk, dk));
                    return SelectAt(candidates.Select(c => score[c]).ToArray(), f, dk, candidates, q, image.Map.Geometry);
                });
        }
        return image.Select(keep, null, 0, original);
    }

    public PruneAction? AfterLayer(LayerView view, PruneContext ctx)
    {
        int T = ctx.TextCount;
        if (T == 0) throw new InvalidOperationException("AutoPrune needs text tokens after the image.");
        var attn = view.AttentionRows(ctx.TextRows);
        var visual = ctx.VisualRows;
        var textMean = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, T, ctx.State.Length, visual);
        if (view.Layer == 0)
        {
            float mi = MutualInformation.Compute(attn, view.Heads, T, ctx.State.Length, visual);
            double mi0 = MeasuredMi0(mi, T, view.Heads);
            var cls = new float[ctx.VisualCount];
            for (int i = 0; i < cls.Length; i++)
            {
                // The [CLS] token itself ("full" strategy) has no [CLS] attention: it is always pre-selected.
                int patch = ctx.Patch(i);
                cls[i] = patch >= 0 ? ClsMean[patch] : float.PositiveInfinity;
            }
            var scores = AttentionScores.AutoPrunePreselection(cls, textMean, (float)mi0, _options);
            if (_initial.N0 >= ctx.VisualCount) return null;
            return ctx.Build(SelectInLlm(scores, ctx, _initial.N0), null, Renumber);
        }
        if (view.Layer == 1)
        {
            var (mi1, bound) = MutualInformation.ComputeWithBound(attn, view.Heads, T, ctx.State.Length, visual);
            MeasuredMi1(mi1, bound);
        }
        foreach (var step in Schedule!.Steps)
        {
            if (step.AfterLayer != view.Layer) continue;
            if (step.Output >= ctx.VisualCount) return null;
            var keep = SelectInLlm(textMean, ctx, step.Kept);
            return ctx.KeepAndRecycle(keep, textMean, step, Renumber);
        }
        return null;
    }

    /// <summary>Layer 0's MI (summed over heads) as the report's <c>mi0</c>: divided by T and scaled to 32 heads.</summary>
    internal double MeasuredMi0(float mi, int T, int heads)
    {
        double mi0 = mi / T * 32.0 / heads;
        _signals["mi0"] = mi0;
        return mi0;
    }

    /// <summary>Layer 1's MI and its bound set the slope k; the rest of the curve is solved (<see cref="Schedule"/>).</summary>
    internal void MeasuredMi1(float mi1, float bound)
    {
        double normalized = bound > 0 ? mi1 / bound : 0;
        // k is kept to a hundredth of its range: the curve must not hinge on MI1's last digits, which differ between
        // an fp32 CPU and an fp16 GPU (so both backends solve the same schedule).
        double step = _options.AutoPruneK0 / 100;
        double k = Slope(mi1, normalized, out var how);
        if (step > 0) k = Math.Round(k / step) * step;
        var signals = new Dictionary<string, double>
        {
            ["mi1"] = mi1,
            ["mi1_scaled"] = mi1 * 32.0 / _shape.Heads,
            ["mi1_normalized"] = normalized,
        };
        Schedule = AutoPruneSchedule.SolveForSlope(_shape, _budget, _options.Accounting, _options, k, signals, [how]);
    }

    /// <summary>The slope k for this sample and a note saying where it came from.</summary>
    private double Slope(double mi1, double normalized, out string how)
    {
        var inv = CultureInfo.InvariantCulture;
        double k0 = _options.AutoPruneK0;
        switch (_options.AutoPruneSlope)
        {
            case AutoPruneSlope.Paper:
                double k = AutoPruneSchedule.Slope(mi1, _shape.Heads, _options);
                how = string.Create(inv, $"AutoPrune slope (paper): k = max({k0} - {_options.AutoPruneGamma} * MI1 * 32/H, 0) = {k:0.###} for MI1 = {mi1:0.###}.");
                return k;
            case AutoPruneSlope.Calibrated when _options.AutoPruneCalibration is { } cal:
            {
                double signal = cal.Signal == AutoPruneCalibration.SignalRaw ? mi1 : normalized;
                double kc = cal.Slope(signal, k0);
                how = string.Create(inv, $"AutoPrune slope (calibrated on {cal.Samples} questions{(cal.Data is null ? "" : " of " + Path.GetFileName(cal.Data))}): {cal.Signal} = {signal:0.####} in [{cal.Low:0.####}, {cal.High:0.####}] gives k = {kc:0.###}.");
                return kc;
            }
            default:
            {
                var d = AutoPruneCalibration.ScaleFreeDefault;
                double kd = d.Slope(normalized, k0);
                string why = _options.AutoPruneSlope == AutoPruneSlope.Calibrated ? " (no calibration for this model: scale-free default)" : "";
                how = string.Create(inv, $"AutoPrune slope{why}: MI1 / its bound = {normalized:0.####} in [{d.Low}, {d.High}] gives k = {kd:0.###}.");
                return kd;
            }
        }
    }

    /// <summary>Top-k of the visual rows by score, with coverage over their hidden states when asked for (per view under <see cref="BudgetScope.PerView"/>).</summary>
    private int[] SelectInLlm(float[] scores, PruneContext ctx, int k)
    {
        if (_options.AutoPruneCoverage <= 0) return ctx.TopKByScope(scores, k);
        int d = _shape.HiddenSize, n = ctx.VisualCount;
        var grid = new int[n];
        for (int i = 0; i < n; i++) grid[i] = ctx.Patch(i);
        var unit = CoverageNms.Normalize(ctx.VisualHidden(), d);
        if (ctx.TokenMap is not { SquareGrid: null } map) return Select(scores, unit, d, grid, k);
        return ctx.SelectByScope(k, (candidates, q) =>
        {
            var f = new float[candidates.Length * d];
            for (int j = 0; j < candidates.Length; j++) unit.AsSpan(candidates[j] * d, d).CopyTo(f.AsSpan(j * d, d));
            return SelectAt(candidates.Select(c => scores[c]).ToArray(), f, d, candidates.Select(c => grid[c]).ToArray(), q, map.Geometry);
        });
    }

    /// <summary>The coverage selection by geometry (LLaVA-NeXT, Qwen2.5-VL): distances between the tokens' places in the original image.</summary>
    private int[] SelectAt(float[] scores, float[] unitFeatures, int dim, int[] patches, int k, VisualGeometry geometry)
    {
        if (_options.AutoPruneCoverage <= 0) return TopK.SelectInOrder(scores, k);
        return CoverageNms.Select(scores, unitFeatures, dim, patches, geometry, k, Math.Min(1, _options.AutoPruneCoverage),
            _options.AutoPruneCoverageDistanceLimit, _options.AutoPruneCoverageDistanceSigma, _options.AutoPruneCoverageSimilaritySigma);
    }

    private int[] Select(float[] scores, float[] unitFeatures, int dim, int[] grid, int k)
    {
        if (_options.AutoPruneCoverage <= 0) return TopK.SelectInOrder(scores, k);
        return CoverageNms.Select(scores, unitFeatures, dim, grid, _shape.GridSize, k, Math.Min(1, _options.AutoPruneCoverage),
            _options.AutoPruneCoverageDistanceLimit, _options.AutoPruneCoverageDistanceSigma, _options.AutoPruneCoverageSimilaritySigma);
    }
}
