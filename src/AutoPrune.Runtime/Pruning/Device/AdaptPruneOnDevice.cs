using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

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
