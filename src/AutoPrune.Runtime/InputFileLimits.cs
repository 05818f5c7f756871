namespace AutoPrune;

/// <summary>
/// Largest file of each kind the runtime reads, in bytes. A file is checked to be a regular file (not a FIFO, a device
/// or a directory) before it is opened for reading, and reading stops at its limit whatever the file's length says.
/// Safetensors shards have no limit here: they are memory-mapped, and their JSON header is limited to 100,000,000 bytes.
/// </summary>
public sealed record InputFileLimits
{
    /// <summary><c>config.json</c>, <c>preprocessor_config.json</c>, <c>tokenizer_config.json</c>, <c>added_tokens.json</c>: 16 MiB.</summary>
    public long ConfigBytes { get; init; } = 16L << 20;

    /// <summary><c>tokenizer.model</c> or <c>tokenizer.json</c>: 64 MiB.</summary>
    public long TokenizerBytes { get; init; } = 64L << 20;

    /// <summary><c>model.safetensors.index.json</c>: 100,000,000 bytes (the safetensors header limit).</summary>
    public long IndexBytes { get; init; } = 100_000_000;

    /// <summary>An image file given by path (<see cref="ImageInput.FromFile"/>): 128 MiB. Image bytes given in memory are the caller's.</summary>
    public long ImageBytes { get; init; } = 128L << 20;

    /// <summary>A pruning options file or an AutoPrune calibration file (<c>autoprune-calibration.json</c>): 1 MiB.</summary>
    public long OptionsBytes { get; init; } = 1L << 20;

    internal void Validate()
    {
        foreach (var (name, value) in new[] { (nameof(ConfigBytes), ConfigBytes), (nameof(TokenizerBytes), TokenizerBytes), (nameof(IndexBytes), IndexBytes), (nameof(ImageBytes), ImageBytes), (nameof(OptionsBytes), OptionsBytes) })
            if (value < 1 || value > Array.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(ModelOptions.FileLimits), value, $"FileLimits.{name} must be between 1 and {Array.MaxLength:N0} bytes.");
    }
}
