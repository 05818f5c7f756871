using AutoPrune.Compute;
using AutoPrune.Pruning;

namespace AutoPrune.Generation;

/// <summary>A validated request: its prompt ids, how many tokens it may generate and the pruning it runs with.</summary>
/// <param name="PruningNotes">Why the pruning that runs is not the one the defaults named, if it is not.</param>
/// <param name="ImageTokens">Visual tokens of each image in the prompt (for LLaVA-NeXT, from each image's size).</param>
internal sealed record PreparedRequest(VisionRequest Request, int[] Ids, int MaxNew, PruningOptions Pruning, IReadOnlyList<string> PruningNotes, int[] ImageTokens)
{
    /// <summary>Receives the full last-position prefill logits (device comparisons).</summary>
    public Action<float[]>? OnPrefillLogits { get; init; }

    /// <summary>Receives the sequence after the prefill and the tokens each layer's cache holds (tests).</summary>
    public Action<Compute.SequenceState, int[]>? OnPrefillState { get; init; }

    /// <summary>LLaVA-NeXT: each image's visual patches (its tokens without the image_newline rows); null when every image token is a visual token.</summary>
    public int[]? ImagePatches { get; init; }

    /// <summary>Rows before the first image's run.</summary>
    public int Prefix { get; init; }

    /// <summary>The request's pruning session, its plan solved when the request was prepared (one per request).</summary>
    public PruningSession Session { get; init; } = null!;

    /// <summary>LLaVA-NeXT: the shape the pruning policy sees (the first image's patches and views); null for LLaVA-1.5's fixed shape.</summary>
    public ModelShape? PruningShape { get; init; }
}
