using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// DART on the device (<c>DartPolicy</c>): this layer's fp32 keys give each visual and text row's L1 norm (pivots), the
/// final norm of the rows entering the next layer gives the features, and one single-group kernel keeps the rows least
/// duplicated with each pivot; original positions unless the options say otherwise.
/// </summary>
internal sealed class DartOnDevice(LayerSchedule schedule, PruningOptions options) : IDevicePruner
{
    public bool ReadsAttention(int layer) => DevicePruners.PrunesAfter(schedule, layer);

    /// <summary>Token maps other than LLaVA-1.5's square grid (LLaVA-NeXT, Qwen2.5-VL) stay with the host code.</summary>
    public bool Handles(PruneContext ctx) => ctx.TokenMap is null or { SquareGrid: not null };

    public IReadOnlyDictionary<string, double> Signals { get; } = new Dictionary<string, double>();

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int V = ctx.VisualCount, T = ctx.TextCount, kvd = dev.KvHeads * dev.HeadDim, d = dev.Hidden, k = Math.Clamp(step.Kept, 0, V);
        var keys = dev.LayerKeys;
        // The visual rows and the text rows after them are one run: one launch each for the key norms and the final norm.
        var norms = dev.Scratch<float>(V + T + 1);
        dev.Ops.RowL1(keys, ctx.Prefix, V + T, kvd, norms);
        var visualNorms = norms.SubView(0, Math.Max(1, V));
        var textNorms = norms.SubView(V, Math.Max(1, T));
        var hidden = dev.FinalNorm(ctx.Prefix, V + T);
        var visualHidden = hidden.SubView(0, Math.Max(1L, (long)V * d));
        var textHidden = T > 0 ? hidden.SubView((long)V * d, (long)T * d) : dev.Scratch<float>(1);
        var plan = dev.Scratch<int>(ctx.Prefix + k + T);
        dev.Ops.Dart(visualNorms, textNorms, visualHidden, textHidden, dev.Scratch<float>(Math.Max(1, V)), dev.Scratch<float>(Math.Max(1, V)),
            dev.Scratch<int>(Math.Max(1, options.DartVisualPivots + options.DartTextPivots)), dev.Scratch<int>(Math.Max(1, T)), dev.Scratch<int>(Math.Max(1, V)),
            dev.Scratch<int>(Math.Max(1, k)), plan,
            new DartShape(V, T, d, k, options.DartVisualPivots, options.DartTextPivots, ctx.Prefix));
        return DevicePruners.Action(plan, ctx, k, default, 0, renumber: false);
    }
}
