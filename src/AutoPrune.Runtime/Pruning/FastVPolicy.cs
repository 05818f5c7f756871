using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>FastV: one prune at layer K by the last prompt token's attention; original positions kept.</summary>
internal sealed class FastVPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
        => ctx.Build(ctx.TopKByScope(ctx.LastTokenVisualAttention(view), step.Kept), null, renumber: false);
}
