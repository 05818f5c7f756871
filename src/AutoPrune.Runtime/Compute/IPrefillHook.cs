namespace AutoPrune.Compute;

/// <summary>Called by the decoder between layers during prefill (a pruning session).</summary>
internal interface IPrefillHook
{
    /// <summary>Called after decoder layer <c>view.Layer</c> ran on all tokens that entered it.</summary>
    PruneAction? AfterLayer(LayerView view);

    /// <summary>
    /// Whether the hook will read layer <paramref name="layer"/>'s attention (its fp32 queries and keys). A GPU backend
    /// writes those only where they are read.
    /// </summary>
    bool ReadsAttention(int layer) => true;
}
