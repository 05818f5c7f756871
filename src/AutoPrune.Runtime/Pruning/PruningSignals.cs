namespace AutoPrune.Pruning;

/// <summary>
/// The signals a pruning method reads, and a model provides. <see cref="PruningCapabilities"/> refuses a method on a model
/// that lacks one, naming it.
/// </summary>
[Flags]
public enum PruningSignals
{
    None = 0,

    /// <summary>
    /// How much attention the vision tower pays each visual token: its [CLS] token's attention at the feature layer
    /// (CLIP towers), or, in a tower without [CLS] (Qwen2.5-VL), the attention each token receives in the last
    /// full-attention block. Absent when the feature layer is the embedding layer.
    /// </summary>
    VisionAttention = 1,

    /// <summary>The vision tower's keys per visual token (similarities between tokens before the LLM).</summary>
    VisionKeys = 2,

    /// <summary>Attention rows of the decoder's layers over the sequence.</summary>
    DecoderAttention = 4,

    /// <summary>The decoder's keys and hidden states per row (attention-free selections inside the LLM).</summary>
    DecoderStates = 8,

    /// <summary>The visual tokens in the decoder's space before the LLM (the projector's output).</summary>
    ProjectedTokens = 16,

    /// <summary>Everything above.</summary>
    All = VisionAttention | VisionKeys | DecoderAttention | DecoderStates | ProjectedTokens,
}

/// <summary>What each pruning method reads (the one table; each policy's own comment says why).</summary>
public static class PruningSignalNeeds
{
    /// <summary>The signals <paramref name="options"/>' method reads with those options.</summary>
    public static PruningSignals Of(PruningOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Method switch
        {
            PruningMethod.None => PruningSignals.None,
            PruningMethod.FastV => PruningSignals.DecoderAttention,
            PruningMethod.PDrop => PruningSignals.DecoderAttention,
            PruningMethod.SparseVLM => PruningSignals.DecoderAttention | PruningSignals.DecoderStates,
            PruningMethod.AdaptPrune => PruningSignals.DecoderAttention | PruningSignals.DecoderStates,
            PruningMethod.VisionZip => PruningSignals.VisionAttention | PruningSignals.VisionKeys | PruningSignals.ProjectedTokens,
            PruningMethod.DivPrune => PruningSignals.ProjectedTokens,
            PruningMethod.Dart => PruningSignals.DecoderStates,
            // Layer 0's pre-selection weighs the vision tower's attention; a selection before the LLM compares vision keys
            // (coverage) or projected tokens (diversity).
            PruningMethod.AutoPrune => PruningSignals.DecoderAttention | PruningSignals.DecoderStates | PruningSignals.VisionAttention
                | (options.AutoPruneBeforeLlmSelection == AutoPruneBeforeLlmSelection.Diversity ? PruningSignals.ProjectedTokens : PruningSignals.VisionKeys),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Method, "Unknown pruning method."),
        };
    }

    /// <summary>How a missing signal is named in an error.</summary>
    public static string Describe(PruningSignals missing)
    {
        var parts = new List<string>();
        if (missing.HasFlag(PruningSignals.VisionAttention)) parts.Add("the vision tower's attention to each visual token ([CLS] attention)");
        if (missing.HasFlag(PruningSignals.VisionKeys)) parts.Add("the vision tower's keys");
        if (missing.HasFlag(PruningSignals.DecoderAttention)) parts.Add("the decoder's attention");
        if (missing.HasFlag(PruningSignals.DecoderStates)) parts.Add("the decoder's keys and hidden states");
        if (missing.HasFlag(PruningSignals.ProjectedTokens)) parts.Add("the projected visual tokens");
        return string.Join(" and ", parts);
    }
}
