namespace AutoPrune;

/// <summary>An image given to the model: a file or encoded bytes (PNG, JPEG, WebP, …).</summary>
public sealed class ImageInput
{
    private ImageInput(string? path, ReadOnlyMemory<byte> bytes, string name)
    {
        Path = path; Bytes = bytes; Name = name;
    }

    public string? Path { get; }
    public ReadOnlyMemory<byte> Bytes { get; }
    /// <summary>What error messages call the image.</summary>
    public string Name { get; }

    public static ImageInput FromFile(string path) => new(path ?? throw new ArgumentNullException(nameof(path)), default, path);
    public static ImageInput FromBytes(ReadOnlyMemory<byte> bytes, string? name = null) => new(null, bytes, name ?? $"<{bytes.Length} bytes>");
}
