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
    /// <summary>
    /// The answer's shape: null or <see cref="AutoPrune.ResponseFormat.Text"/> for free text, or a JSON object or a JSON
    /// document valid against a schema (decoding constrained token by token; see <see cref="AutoPrune.ResponseFormat"/>).
    /// Cannot be combined with <see cref="StopSequences"/>.
    /// </summary>
    public ResponseFormat? ResponseFormat { get; init; }
}
