using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// AutoPrune on the device. Layer 0: MI0 (read back with the prefill's final readback) and, when the curve prunes
/// there, the pre-selection score ([CLS] mean + w·MI0·text mean). Layer 1: MI1 and its bound come back in the prefill's
/// one extra wait, the slope is set and the rest of the curve solved on the host (a few numbers). Each pruning layer:
/// the text rows' mean attention over the visual columns, and the coverage selection over the hidden states' unit rows
/// and each row's patch (or plain top-k without coverage). Positions as the options say (original by default).
/// </summary>
internal sealed class AutoPruneOnDevice(AutoPrunePolicy policy) : IDevicePruner
{
    private ArrayView<float> _attention, _mi;
    private int _attentionLayer = -1;

    public bool ReadsAttention(int layer) => layer <= 1 || DevicePruners.PrunesAfter(policy.Schedule!, layer);

    /// <summary>Recycling merges on the host, and LLaVA-NeXT images and host-only vision features stay with the host code.</summary>
    public bool Handles(PruneContext ctx) => !policy.Options.AutoPruneRecycle && (ctx.TokenMap is null or { SquareGrid: not null }) && policy.VisionOnDevice && ctx.TextCount > 0;

    public IReadOnlyDictionary<string, double> Signals { get; } = new Dictionary<string, double>();

    /// <summary>The text rows' attention over the visual columns at this layer: [heads, T, V] (computed once per layer).</summary>
    private ArrayView<float> TextAttention(DeviceLayerSignals dev, PruneContext ctx)
    {
        if (_attentionLayer != dev.Layer)
        {
            _attention = dev.AttentionWindow(ctx.Prefix + ctx.VisualCount, ctx.TextCount, ctx.Prefix, ctx.VisualCount);
            _attentionLayer = dev.Layer;
        }
        return _attention;
    }

    public void BeforeSteps(DeviceLayerSignals dev, PruneContext ctx)
    {
        int T = ctx.TextCount, V = ctx.VisualCount, heads = dev.Heads;
        if (dev.Layer > 1) return;
        var attn = TextAttention(dev, ctx);
        if (dev.Layer == 0)
            _mi = dev.MutualInformation(attn, T, V, dev.AtEnd<float>(2, r => policy.MeasuredMi0(r[0], T, heads)));
        else
        {
            _mi = dev.MutualInformation(attn, T, V);
            // The prefill's one wait besides the final readback: two floats, from which the rest of the curve is known.
            var mi = dev.Read(_mi, 2);
            policy.MeasuredMi1(mi[0], mi[1]);
        }
    }

    public PruneAction? AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int V = ctx.VisualCount, T = ctx.TextCount;
        int k = dev.Layer == 0 ? policy.Initial.N0 : step.Kept;
        if ((dev.Layer == 0 ? k : step.Output) >= V) return null;
        var attn = TextAttention(dev, ctx);
        var visual = dev.VisualIndex.SubView(ctx.Prefix, V);
        var options = policy.Options;
        var shape = ctx.Shape;
        int patches = shape.GridSize * shape.GridSize, d = dev.Hidden;
        if (options.AutoPruneCoverage > 0)
        {
            // The text mean, the unit hidden rows and the coverage selection in one launch; at layer 0 the score is the
            // pre-selection ([CLS] mean + w·MI0·text mean), computed there too.
            var p = dev.Scratch<int>(ctx.Prefix + k + T);
            var coverage = Coverage(options, shape.GridSize, V, d, k, gridMode: 1, ctx.Prefix, T, writePlan: 1) with { ScoreRows = T, Heads = dev.Heads, Normalize = 1 };
            ArrayView<float> cls = default;
            if (dev.Layer == 0)
            {
                var vision = policy.Vision.Device!;
                cls = vision.Cls!.View;
                coverage = coverage with { Preselect = 1, ClsHeads = vision.Heads, ClsPatches = vision.Patches, TextWeight = (float)options.AutoPruneTextWeight };
            }
            dev.Ops.CoverageNms(attn, default, dev.Scratch<float>(V), dev.HiddenStates.SubView((long)ctx.Prefix * d, (long)V * d), dev.Scratch<float>(V), visual,
                dev.Scratch<int>(patches), dev.Scratch<int>(V), dev.Scratch<int>(Math.Max(1, k)), p, coverage, cls, _mi);
            return DevicePruners.Action(p, ctx, k, default, 0, renumber: false);
        }
        var scores = dev.ColumnMean(attn, T, V);
        if (dev.Layer == 0)
        {
            var vision = policy.Vision.Device!;
            var cls = dev.Scratch<float>(vision.Patches);
            dev.Ops.ClsMean(vision.Cls!.View, vision.Heads, vision.Patches, cls);
            var pre = dev.Scratch<float>(V);
            dev.Ops.Preselection(cls, scores, visual, _mi, pre, V, T, dev.Heads, (float)options.AutoPruneTextWeight, patches);
            scores = pre;
        }
        var plan = dev.KeepTopK(scores, default, default, new PlanShape(V, k, ctx.Prefix, T, 0, 0, dev.Heads, 1, 0, 1)).Plan;
        return DevicePruners.Action(plan, ctx, k, default, 0, renumber: false);
    }

    /// <summary>The coverage kernel's constants from the options (as <c>AutoPrunePolicy</c> passes them to <c>CoverageNms.Select</c>).</summary>
    internal static CoverageShape Coverage(PruningOptions o, int grid, int n, int features, int k, int gridMode, int prefix, int text, int writePlan)
    {
        double limit = o.AutoPruneCoverageDistanceLimit, sd = o.AutoPruneCoverageDistanceSigma, ss = o.AutoPruneCoverageSimilaritySigma;
        return new CoverageShape(n, features, k, grid, (int)Math.Floor(limit), limit * limit, 2 * sd * sd, 2 * ss * ss, Math.Min(1, o.AutoPruneCoverage),
            gridMode, prefix, text, writePlan);
    }

    /// <summary>
    /// AutoPrune's selection before the LLM on the device (<c>AutoPrunePolicy.SelectBeforeLlm</c>): the [CLS] attention's
    /// head mean with coverage over the unit vision keys (or DivPrune's diversity over the projected rows), the [CLS] row
    /// of the "full" strategy always kept; the chosen rows are projected and stay on the device with their patches.
    /// Null when the curve lets every token into layer 0.
    /// </summary>
    public static ImageRows? SelectBeforeLlm(IVisualProjector projector, AutoPrunePolicy policy, VisionFeatures vision)
    {
        var dv = vision.Device ?? throw new ArgumentException("The vision features are not on the device.", nameof(vision));
        int entering = policy.Initial.Entering;
        if (entering >= dv.Tokens) return null;
        if (dv.Cls is null || dv.Keys is null)
            throw new NotSupportedException("AutoPrune's selection before the LLM needs the vision tower's attention, but this model's feature layer is the embedding layer.");
        int cls = dv.Tokens - dv.Patches, k = entering - cls;
        var options = policy.Options;
        bool original = options.Positions != PrunedPositions.Contiguous;
        if (options.AutoPruneBeforeLlmSelection == AutoPruneBeforeLlmSelection.Diversity)
            return DivPruneOnDevice.Select(projector, vision, k, original);
        var backend = dv.Backend;
        using (backend.Enter())
        {
            var mem = backend.Memory;
            var ops = backend.Ops;
            int V = dv.Patches, dk = dv.Hidden, grid = (int)Math.Round(Math.Sqrt(V));
            using var score = mem.Allocate<float>(V);
            using var unit = mem.Allocate<float>((long)V * dk);
            using var s = mem.Allocate<float>(V);
            using var at = mem.Allocate<int>((long)grid * grid);
            using var kept = mem.Allocate<int>(V);
            using var keptLocal = mem.Allocate<int>(Math.Max(1, k));
            ops.ClsMean(dv.Cls.View, dv.Heads, V, score.View);
            if (options.AutoPruneCoverage <= 0)
                ops.TopKPlan(score.View, default, default, kept.View, keptLocal.View, default, new PlanShape(V, k, 0, 0, 0, 0, 0, 0, 0, 0));
            else
            {
                ops.L2NormalizeRows(dv.Keys.View, 0, V, dk, unit.View);
                ops.CoverageNms(default, score.View, s.View, unit.View, default, default, at.View, kept.View, keptLocal.View, default,
                    Coverage(options, grid, V, dk, k, gridMode: 0, 0, 0, writePlan: 0));
            }
            return DevicePruners.SelectedRows(backend, projector, dv.Features.View, keptLocal.View, cls, k, dv.Hidden, project: true, original);
        }
    }
}
