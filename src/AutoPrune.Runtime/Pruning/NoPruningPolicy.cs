using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>The full model.</summary>
internal sealed class NoPruningPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;
}
