using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>PDrop: at each stage end, score with the next layer's query of the last instruction token; positions renumbered.</summary>
internal sealed class PDropPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var (q, k) = view.NextLayerQueryKeys(rope: true);
        int n = ctx.State.Length;
        var attn = Compute.Cpu.Attention.Rows(q, k, n, n, view.Heads, view.KvHeads, view.HeadDim, [ctx.LastRow], causal: true);
        var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, 1, n, ctx.VisualRows);
        return ctx.Build(ctx.TopKByScope(scores, step.Kept), null, renumber: true);
    }
}
