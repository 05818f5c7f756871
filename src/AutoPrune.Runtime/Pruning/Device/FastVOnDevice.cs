using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

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
