using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>SparseVLM: text raters (relevance above the mean) score the visual tokens; dropped ones are recycled.</summary>
internal sealed class SparseVlmPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public override IReadOnlyDictionary<string, double> RuntimeSignals => _signals;

    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        int d = ctx.Shape.HiddenSize;
        var text = ctx.TextRows;
        var raters = AttentionScores.SparseVlmRaters(ctx.VisualHidden(), ctx.State.Hidden.AsSpan(text[0] * d, text.Length * d), d);
        if (raters.Length == 0) raters = Enumerable.Range(0, text.Length).ToArray();
        var raterRows = raters.Select(r => text[r]).ToArray();
        var scores = AttentionScores.MeanOverHeadsAndRows(view.AttentionRows(raterRows), view.Heads, raterRows.Length, ctx.State.Length, ctx.VisualRows);
        _signals[$"raters_layer{view.Layer}"] = raters.Length;
        return ctx.KeepAndRecycle(scores, step);
    }
}
