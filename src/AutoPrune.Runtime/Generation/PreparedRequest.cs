using AutoPrune.Pruning;

namespace AutoPrune.Generation;

/// <summary>A validated request: its prompt ids, how many tokens it may generate and the pruning it runs with.</summary>
/// <param name="PruningNotes">Why the pruning that runs is not the one the defaults named, if it is not.</param>
/// <param name="ImageTokens">Visual tokens of each image in the prompt (for LLaVA-NeXT, from each image's size).</param>
internal sealed record PreparedRequest(VisionRequest Request, int[] Ids, int MaxNew, PruningOptions Pruning, IReadOnlyList<string> PruningNotes, int[] ImageTokens)
{
    /// <summary>Receives the full last-position prefill logits (device comparisons).</summary>
    public Action<float[]>? OnPrefillLogits { get; init; }
}
