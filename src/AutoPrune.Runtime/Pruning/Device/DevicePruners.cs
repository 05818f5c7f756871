using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// A pruning policy's selection run on the device, beside its host code (which the CPU backend, and GPU runs of methods
/// not moved yet, keep using): the signals, the top-k, the merges and the new sequence's plan are kernels, and nothing
/// comes back to the host. Each mirrors its host policy's arithmetic where it decides what is kept, so both make the
/// same decisions on the same inputs.
/// </summary>
internal interface IDevicePruner
{
    /// <summary>Whether the pruner reads layer <paramref name="layer"/>'s attention (its fp32 queries and keys are then kept).</summary>
    bool ReadsAttention(int layer);

    /// <summary>False when this sequence needs the host code (e.g. a [CLS] token among AdaptPrune's patches).</summary>
    bool Handles(PruneContext ctx) => true;

    /// <summary>Called after every layer before its schedule step, if any (AutoPrune measures MI here and may re-solve its curve).</summary>
    void BeforeSteps(DeviceLayerSignals dev, PruneContext ctx) { }

    /// <summary>The prune after <c>dev.Layer</c> (its schedule step), as a device plan.</summary>
    PruneAction? AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step);

    /// <summary>Signals measured while running (merged into the report), e.g. SparseVLM's rater counts.</summary>
    IReadOnlyDictionary<string, double> Signals { get; }
}

/// <summary>The device pruners, by method (null where a method still runs on the host).</summary>
internal static class DevicePruners
{
    public static IDevicePruner? For(IPruningPolicy policy, PruningOptions options) => policy.Schedule is not { } schedule ? null : policy.Method switch
    {
        PruningMethod.FastV => new FastVOnDevice(schedule),
        PruningMethod.AdaptPrune => new AdaptPruneOnDevice(schedule, options),
        PruningMethod.PDrop => new PDropOnDevice(),
        PruningMethod.SparseVLM => new SparseVlmOnDevice(schedule, options),
        PruningMethod.AutoPrune => new AutoPruneOnDevice((AutoPrunePolicy)policy),
        PruningMethod.Dart => new DartOnDevice(schedule, options),
        _ => null,
    };

    /// <summary>True when <paramref name="schedule"/> prunes after <paramref name="layer"/>.</summary>
    internal static bool PrunesAfter(LayerSchedule schedule, int layer)
    {
        foreach (var s in schedule.Steps)
            if (s.AfterLayer == layer) return true;
        return false;
    }

    /// <summary>The plan's action: kept visual rows (and merged ones) after the prefix, then the text; positions as the options say over the method's default.</summary>
    internal static PruneAction Action(ArrayView<int> plan, PruneContext ctx, int kept, ArrayView<float> merged, int mergedRows, bool renumber)
    {
        renumber = ctx.Options.Positions switch { PrunedPositions.Original => false, PrunedPositions.Contiguous => true, _ => renumber };
        return PruneAction.FromDevice(new DevicePrunePlan(plan, ctx.Prefix + kept + mergedRows + ctx.TextCount, kept + mergedRows, merged, mergedRows), renumber);
    }

    /// <summary>
    /// The rows a policy that chooses before the LLM lets in, selected where the vision features are (a GPU), or null when
    /// the features are on the host or the policy does not choose there (or is not moved to the device).
    /// </summary>
    public static PreLlmRows? SelectBeforeLlm(IPruningPolicy policy, VisionFeatures vision, IVisualProjector projector)
    {
        if (vision.Device is null) return null;
        if (policy is VisionZipPolicy zip && zip.Options.Positions != PrunedPositions.Original && vision.Tokens == vision.Patches)
            return new PreLlmRows(VisionZipOnDevice.Select(projector, zip, vision), null, false);
        if (policy is AutoPrunePolicy auto)
            return AutoPruneOnDevice.SelectBeforeLlm(projector, auto, vision) is { } rows ? new PreLlmRows(rows, null, rows.OriginalPositions) : null;
        if (policy is DivPrunePolicy div)
        {
            var rows = DivPruneOnDevice.Select(projector, vision, div.PatchesToKeep(vision), div.OriginalPositions);
            return new PreLlmRows(rows, null, rows.OriginalPositions);
        }
        return null;
    }

    /// <summary>
    /// The rows a selection before the LLM lets in, on the device: the first <paramref name="cls"/> rows of
    /// <paramref name="source"/> ([rows, width]) and the kept ones (keptLocal, ascending, offset by cls), projected when
    /// asked; their visual indices ([CLS] or the patch) stay with them. The caller is inside the backend's Enter.
    /// </summary>
    internal static ImageRows SelectedRows(CudaBackend backend, IVisualProjector projector, ArrayView<float> source, ArrayView<int> keptLocal, int cls, int k, int width,
        bool project, bool originalPositions)
    {
        var mem = backend.Memory;
        int count = cls + k;
        using var index = mem.Allocate<int>(Math.Max(1, count));
        var visual = mem.Allocate<int>(Math.Max(1, count));
        DeviceBuffer<float>? gathered = null;
        try
        {
            backend.Ops.SelectedRows(keptLocal, cls, k, index.View, visual.View);
            gathered = mem.Allocate<float>(Math.Max(1, (long)count * width));
            if (count > 0) backend.Ops.RowGatherMixed(source, source, index.View.SubView(0, count), gathered.View.SubView(0, (long)count * width), width);
            Tensor rows;
            if (project)
            {
                using (gathered) rows = projector.Project(DeviceTensor.Of(gathered.View.SubView(0, Math.Max(1, (long)count * width))), count);
            }
            else rows = DeviceTensor.Owning(gathered, (long)count * width);
            var result = ImageRows.OnBackend(backend, rows, DeviceTensor.Owning(visual, count), count, projector.Hidden);
            result.OriginalPositions = originalPositions;
            return result;
        }
        catch
        {
            visual.Dispose();
            gathered?.Dispose();
            throw;
        }
    }
}

/// <summary>FastV on the device: the last prompt row's attention over the visual columns, head-averaged, top k; original positions.</summary>
internal sealed class FastVOnDevice(LayerSchedule schedule) : IDevicePruner
{
    public bool ReadsAttention(int layer) => DevicePruners.PrunesAfter(schedule, layer);
    public IReadOnlyDictionary<string, double> Signals { get; } = new Dictionary<string, double>();

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int v = ctx.VisualCount;
        var attn = dev.AttentionWindow(ctx.LastRow, 1, ctx.Prefix, v);
        var (plan, _, _, _) = dev.KeepTopK(default, attn, default, new PlanShape(v, Math.Min(step.Kept, v), ctx.Prefix, ctx.TextCount, 0, 1, dev.Heads, 1, 0, 1));
        return DevicePruners.Action(plan, ctx, Math.Min(step.Kept, v), default, 0, renumber: false);
    }
}

/// <summary>
/// AdaptPrune on the device: the last row's head-averaged attention times the positional prior, and the greedy soft NMS
/// over grid distance and the next layer's unit key features (normalized there), in one single-group kernel; original positions.
/// </summary>
internal sealed class AdaptPruneOnDevice(LayerSchedule schedule, PruningOptions options) : IDevicePruner
{
    public bool ReadsAttention(int layer) => DevicePruners.PrunesAfter(schedule, layer);

    /// <summary>Only a patch grid: with a [CLS] token ("full" strategy) the host code keeps it and selects among the patches.</summary>
    public bool Handles(PruneContext ctx) => ctx.VisualCount == ctx.Shape.GridSize * ctx.Shape.GridSize;
    public IReadOnlyDictionary<string, double> Signals { get; } = new Dictionary<string, double>();

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int v = ctx.VisualCount, g = ctx.Shape.GridSize;
        if (v != g * g) throw new InvalidOperationException($"AdaptPrune needs the {g}x{g} grid's {g * g} visual tokens; the sequence has {v}.");
        int kd = dev.KvHeads * dev.HeadDim, k = Math.Clamp(step.Kept, 0, v);
        var (q, lk, shape) = dev.QueryKeys; // the last row's attention is computed by the NMS kernel itself
        var keys = dev.NextLayerKeys(ctx.Prefix, v);
        var features = dev.Scratch<float>((long)v * kd); // the unit keys, written by the NMS kernel
        var prior = dev.Constant(FormattableString.Invariant($"adaptprune-prior-{g}-{options.AdaptPruneSigmaPFactor:R}"),
            () => AdaptiveNms.PositionalPrior(g, options.AdaptPruneSigmaPFactor));
        var plan = dev.Scratch<int>(ctx.Prefix + k + ctx.TextCount);
        double limit = options.AdaptPruneDistanceLimit, sd = options.AdaptPruneDistanceSigma, ss = options.AdaptPruneSimilaritySigma;
        dev.Ops.AdaptiveNms(q, lk, shape, new WindowShape(ctx.LastRow, 1, ctx.Prefix, v), dev.Scratch<float>((long)dev.Heads * v), prior, keys, features,
            dev.Scratch<float>(v), dev.Scratch<int>(v), dev.Scratch<int>(Math.Max(1, k)), plan,
            new NmsShape(g, kd, k, dev.Heads, ctx.Prefix, ctx.TextCount, (int)Math.Floor(limit), limit * limit, 2 * sd * sd, 2 * ss * ss));
        return DevicePruners.Action(plan, ctx, k, default, 0, renumber: false);
    }
}

/// <summary>PDrop on the device: the next layer's query of the last row (its norm, projections and RoPE) against the visual keys; positions renumbered.</summary>
internal sealed class PDropOnDevice : IDevicePruner
{
    public bool ReadsAttention(int layer) => false;
    public IReadOnlyDictionary<string, double> Signals { get; } = new Dictionary<string, double>();

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int v = ctx.VisualCount, n = dev.Rows, k = Math.Clamp(step.Kept, 0, v);
        // The next layer's q|k|v (norm + GEMM, which that layer then skips: the gather carries it over), its last row's
        // attention with RoPE applied on the fly, the top-k: four launches, two of them the next layer's own.
        var qkv = dev.NextLayerQkv();
        var attn = dev.Scratch<float>((long)dev.Heads * v);
        var (cos, sin) = dev.Rope;
        dev.Ops.AttentionWindowFromQkv(qkv, dev.Positions, cos, sin, attn, AttentionShape.Create(n, n, dev.Heads, dev.KvHeads, dev.HeadDim, causal: true),
            new WindowShape(ctx.LastRow, 1, ctx.Prefix, v));
        var (plan, _, _, _) = dev.KeepTopK(default, attn, default, new PlanShape(v, k, ctx.Prefix, ctx.TextCount, 0, 1, dev.Heads, 1, 0, 1));
        return DevicePruners.Action(plan, ctx, k, default, 0, renumber: true);
    }
}

/// <summary>
/// SparseVLM on the device: raters from the hidden states (relevance above the mean), the raters' head-averaged
/// attention over the visual columns, top k, and the dropped tokens recycled by density-peak clustering; positions
/// renumbered. The rater count comes back with the prefill's final readback.
/// </summary>
internal sealed class SparseVlmOnDevice(LayerSchedule schedule, PruningOptions options) : IDevicePruner
{
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public bool ReadsAttention(int layer) => DevicePruners.PrunesAfter(schedule, layer);
    public IReadOnlyDictionary<string, double> Signals => _signals;

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int v = ctx.VisualCount, t = ctx.TextCount, d = dev.Hidden, k = Math.Clamp(step.Kept, 0, v);
        if (t == 0) throw new InvalidOperationException("SparseVLM needs text tokens after the image.");
        int textStart = ctx.Prefix + v;
        int layer = dev.Layer;
        int dropped = v - k;
        int merged = step.Recycled > 0 && dropped > 0 ? step.Recycled : 0;
        int selected = merged > 0 ? ScheduleMath.RecycleSelected(dropped, options) : 0;
        if (merged > 0 && ScheduleMath.RecycleGroups(dropped, options) != merged)
            throw new InvalidOperationException($"Recycling would produce {ScheduleMath.RecycleGroups(dropped, options)} merged tokens where the schedule expected {merged}.");
        var recycle = new RecycleShape(v, k, selected, merged, options.RecycleDensityNeighbours, d, ctx.Prefix);
        var plan = dev.Scratch<int>(ctx.Prefix + k + merged + t);
        var sel = dev.Scratch<int>(Math.Max(1, selected));
        var (q, keys, shape) = dev.QueryKeys;
        // The relevance, the text rows' attention over the visual columns, and in the last group to finish the raters, top
        // k, plan and the rows to recycle: one launch. The raters' count comes back with the final readback.
        var o = new SparseVlmViews
        {
            Relevance = dev.Scratch<double>(t), Raters = dev.Scratch<int>(t), Count = dev.AtEnd<int>(1, c => _signals[$"raters_layer{layer}"] = c[0]),
            Scores = dev.Scratch<float>(v), Kept = dev.Scratch<int>(v), KeptLocal = dev.Scratch<int>(Math.Max(1, k)), Plan = plan,
            Flags = dev.Scratch<int>(v), Sel = sel,
        };
        dev.Ops.SparseVlm(dev.HiddenStates, dev.Scratch<double>((long)v * t), q, keys, dev.Scratch<float>((long)dev.Heads * t * v), shape, textStart, o,
            new PlanShape(v, k, ctx.Prefix, t, merged, 1, dev.Heads, t, 1, 1), recycle);
        ArrayView<float> mergedRows = default;
        if (merged > 0)
        {
            mergedRows = dev.Scratch<float>((long)merged * d);
            dev.Ops.Recycle(dev.HiddenStates, sel, dev.Scratch<double>((long)selected * selected),
                dev.Scratch<double>(selected), dev.Scratch<float>(selected), dev.Scratch<int>(merged), dev.Scratch<int>(selected), dev.Scratch<int>(selected + merged + 1),
                mergedRows, recycle);
        }
        return DevicePruners.Action(plan, ctx, k, mergedRows, merged, renumber: true);
    }
}
