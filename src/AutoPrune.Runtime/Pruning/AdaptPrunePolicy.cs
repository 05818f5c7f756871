using AutoPrune.Compute;
using System.Numerics.Tensors;

namespace AutoPrune.Pruning;

/// <summary>AdaptPrune: attention × Gaussian prior, greedy soft NMS over grid distance and key similarity; original positions kept.</summary>
internal sealed class AdaptPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var attention = ctx.LastTokenVisualAttention(view);
        // Layer K's key projection (no RoPE) of the hidden states entering layer K, L2-normalised.
        var (_, keys) = view.NextLayerQueryKeys(rope: false);
        int kd = view.KvHeads * view.HeadDim, v = ctx.VisualCount;
        var features = new float[v * kd];
        var rows = ctx.VisualRows;
        for (int i = 0; i < v; i++)
        {
            var src = keys.AsSpan(rows[i] * kd, kd);
            float norm = MathF.Sqrt(TensorPrimitives.SumOfSquares<float>(src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, features.AsSpan(i * kd, kd));
        }
        if (ctx.TokenMap is { SquareGrid: null } map) return ctx.Build(SelectByGeometry(ctx, map, attention, features, kd, step.Kept), null, renumber: false);
        // The grid prior and the spatial NMS need a patch per token: a [CLS] token ("full") has none and is kept.
        var (cls, patches) = ctx.SplitCls();
        if (cls.Length == 0)
            return ctx.Build(AdaptiveNms.Select(attention, features, ctx.Shape.GridSize, step.Kept, Options), null, renumber: false);
        var patchAttention = patches.Select(i => attention[i]).ToArray();
        var patchFeatures = new float[patches.Length * kd];
        for (int j = 0; j < patches.Length; j++) features.AsSpan(patches[j] * kd, kd).CopyTo(patchFeatures.AsSpan(j * kd, kd));
        var chosen = AdaptiveNms.Select(patchAttention, patchFeatures, ctx.Shape.GridSize, step.Kept - cls.Length, Options);
        return ctx.Build([.. cls.Concat(chosen.Select(j => patches[j])).Order()], null, renumber: false);
    }

    /// <summary>
    /// Tokens placed anywhere in an image (LLaVA-NeXT's views, Qwen2.5-VL's merged grid): the prior and the NMS on each
    /// token's place in the original image (all views together, or each view with its quota under <see cref="BudgetScope.PerView"/>).
    /// </summary>
    private int[] SelectByGeometry(PruneContext ctx, VisualTokenMap map, float[] attention, float[] unitKeys, int kd, int k)
    {
        var patches = Enumerable.Range(0, ctx.VisualCount).Select(ctx.Patch).ToArray();
        var prior = map.Geometry.PositionalPrior(patches, Options.AdaptPruneSigmaPFactor);
        var s = new float[attention.Length];
        for (int i = 0; i < s.Length; i++) s[i] = attention[i] * prior[i];
        return ctx.SelectByScope(k, (candidates, q) =>
        {
            var feats = new float[candidates.Length * kd];
            for (int j = 0; j < candidates.Length; j++) unitKeys.AsSpan(candidates[j] * kd, kd).CopyTo(feats.AsSpan(j * kd, kd));
            return CoverageNms.Select(candidates.Select(c => s[c]).ToArray(), feats, kd, candidates.Select(c => patches[c]).ToArray(), map.Geometry, q, strength: 1,
                Options.AdaptPruneDistanceLimit, Options.AdaptPruneDistanceSigma, Options.AdaptPruneSimilaritySigma);
        });
    }
}
