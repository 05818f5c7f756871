using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>
/// DART: after layer K-1, pivots by the L1 norm of layer K-1's keys (4 visual, 4 text), then the visual tokens least
/// duplicated with each pivot (cosine of the final-norm hidden states entering layer K); original positions kept.
/// </summary>
internal sealed class DartPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        int kvd = view.KvHeads * view.HeadDim, d = ctx.Shape.HiddenSize;
        var keys = view.Keys();
        var visualRows = ctx.VisualRows;
        var textRows = ctx.TextRows;
        var visualNorms = new float[visualRows.Length];
        for (int i = 0; i < visualRows.Length; i++) visualNorms[i] = TensorPrimitives.SumOfMagnitudes<float>(keys.AsSpan(visualRows[i] * kvd, kvd));
        var textNorms = new float[textRows.Length];
        for (int i = 0; i < textRows.Length; i++) textNorms[i] = TensorPrimitives.SumOfMagnitudes<float>(keys.AsSpan(textRows[i] * kvd, kvd));
        var visualHidden = view.FinalNorm(visualRows);
        var textHidden = view.FinalNorm(textRows);
        if (ctx.ViewShares is null)
            return ctx.Build(DartSelector.Select(visualNorms, textNorms, visualHidden, textHidden, d, step.Kept,
                Options.DartVisualPivots, Options.DartTextPivots), null, renumber: false);
        // Per view: each view's quota chosen among its own tokens, with its own visual pivots and the request's text pivots.
        var keep = ctx.SelectByScope(step.Kept, (candidates, q) =>
        {
            var hidden = new float[candidates.Length * d];
            for (int j = 0; j < candidates.Length; j++) visualHidden.AsSpan(candidates[j] * d, d).CopyTo(hidden.AsSpan(j * d, d));
            return DartSelector.Select(candidates.Select(c => visualNorms[c]).ToArray(), textNorms, hidden, textHidden, d, q,
                Options.DartVisualPivots, Options.DartTextPivots);
        });
        return ctx.Build(keep, null, renumber: false);
    }
}
