namespace AutoPrune;

/// <summary>How to generate the answer.</summary>
public sealed record GenerationOptions
{
    /// <summary>Largest number of tokens to generate.</summary>
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>0 (the default) decodes greedily; above 0 samples with this temperature.</summary>
    public float Temperature { get; init; }
    /// <summary>Nucleus sampling mass (used when sampling).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Seed for sampling; null picks a random one.</summary>
    public int? Seed { get; init; }
    /// <summary>Generation stops when the text ends with one of these (not included in the answer).</summary>
    public IReadOnlyList<string>? StopSequences { get; init; }
}
