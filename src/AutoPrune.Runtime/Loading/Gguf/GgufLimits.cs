namespace AutoPrune.Loading.Gguf;

/// <summary>
/// Bounds on what a GGUF header may declare, checked before anything is allocated. Independently of these, every count is
/// checked against the bytes the file really has left (an array of n uint32 needs 4·n bytes, a string array 8·n), so memory
/// spent on a header never exceeds a small multiple of the file's size. The defaults hold every published model
/// (a 256k-token vocabulary with its merges, a few thousand tensors).
/// </summary>
internal sealed record GgufLimits
{
    /// <summary>Tensors in one file: 65,536.</summary>
    public long MaxTensors { get; init; } = 1 << 16;

    /// <summary>Metadata key/value pairs in one file: 65,536.</summary>
    public long MaxMetadataEntries { get; init; } = 1 << 16;

    /// <summary>Elements of one metadata array (vocabularies, merges, scores): 16,777,216.</summary>
    public long MaxArrayElements { get; init; } = 1 << 24;

    /// <summary>Bytes of one string value (a chat template is ~10 KB): 16 MiB.</summary>
    public long MaxStringBytes { get; init; } = 16 << 20;

    /// <summary>Bytes of a metadata key: 65,535.</summary>
    public long MaxKeyBytes { get; init; } = 65535;

    /// <summary>Bytes of a tensor name (llama.cpp's own limit is 63): 1,024.</summary>
    public long MaxTensorNameBytes { get; init; } = 1024;

    /// <summary>Nesting of arrays of arrays: 4.</summary>
    public int MaxArrayDepth { get; init; } = 4;

    /// <summary>Largest <c>general.alignment</c>: 1 MiB (the default is 32).</summary>
    public long MaxAlignment { get; init; } = 1 << 20;

    internal void Validate()
    {
        foreach (var (name, v) in new[] { (nameof(MaxTensors), MaxTensors), (nameof(MaxMetadataEntries), MaxMetadataEntries), (nameof(MaxArrayElements), MaxArrayElements),
                     (nameof(MaxStringBytes), MaxStringBytes), (nameof(MaxKeyBytes), MaxKeyBytes), (nameof(MaxTensorNameBytes), MaxTensorNameBytes), (nameof(MaxAlignment), MaxAlignment) })
            if (v < 1 || v > Array.MaxLength)
                throw new ArgumentOutOfRangeException(name, v, $"GgufLimits.{name} must be between 1 and {Array.MaxLength:N0}.");
        if (MaxArrayDepth is < 1 or > 64)
            throw new ArgumentOutOfRangeException(nameof(MaxArrayDepth), MaxArrayDepth, "GgufLimits.MaxArrayDepth must be between 1 and 64.");
    }
}
