namespace AutoPrune.Pruning;

/// <summary>What <see cref="PruningCapabilities"/> looks at in a request to decide whether a method can prune it.</summary>
/// <param name="Images">Images in the request (0 for a text question).</param>
/// <param name="AnyRes">Whether the images are LLaVA-NeXT anyres images (a base view plus tiles).</param>
public readonly record struct PruningRequestShape(int Images, bool AnyRes = false)
{
    /// <summary>The signals the model provides (every one, unless the model says otherwise).</summary>
    public PruningSignals Signals { get; init; } = PruningSignals.All;
}
