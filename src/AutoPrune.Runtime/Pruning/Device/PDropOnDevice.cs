using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

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
