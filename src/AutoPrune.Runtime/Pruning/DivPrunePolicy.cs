using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>DivPrune: the k most diverse projected visual tokens (greedy max-min) enter the LLM; it then runs unchanged.</summary>
internal sealed class DivPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    /// <summary>The tokens to keep: the schedule's count before the LLM, less the [CLS] row of the "full" strategy (always kept).</summary>
    internal int PatchesToKeep(VisionFeatures vision) => Schedule!.Steps.Single(s => s.AfterLayer == -1).Kept - (vision.Tokens - vision.Patches);

    /// <summary>Whether the kept rows keep their original RoPE positions (DivPrune renumbers by default).</summary>
    internal bool OriginalPositions => Options.Positions == PrunedPositions.Original;

    /// <summary>
    /// The most diverse tokens in the decoder's space: of the whole image, or (LLaVA-NeXT under
    /// <see cref="BudgetScope.PerView"/>) of each view with its share.
    /// </summary>
    public override PreLlmSelection SelectBeforeLlm(VisualImage image)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        int k = step.Kept - (image.Map.HasCls ? 1 : 0);
        var rows = image.ProjectedTokens();
        int d = image.Hidden;
        if (image.Map.SquareGrid is not null)
            return image.Select(DivPruneSelector.Select(rows, d, k, image.MatchDevice), null, 0, OriginalPositions);
        var keep = image.SelectByScope(k, (candidates, q) =>
        {
            var f = new float[candidates.Length * d];
            for (int j = 0; j < candidates.Length; j++) rows.AsSpan(candidates[j] * d, d).CopyTo(f.AsSpan(j * d, d));
            return DivPruneSelector.Select(f, d, q);
        });
        return image.Select(keep, null, 0, OriginalPositions);
    }
}
