namespace AutoPrune.Loading.Images;

/// <summary>
/// Thrown when image data is empty, not in a format the decoder knows, truncated or corrupt, has a
/// zero size, or declares more pixels than allowed. The message says which; <see cref="FilePath"/>
/// names the file when the image was read from one.
/// </summary>
public class ImageDecodeException : ArgumentException
{
    public ImageDecodeException(string message, string? filePath = null, Exception? inner = null)
        : base(filePath is null ? message : $"{message} (file '{filePath}')", inner)
    {
        FilePath = filePath;
    }

    /// <summary>The image file, when the image was loaded from one.</summary>
    public string? FilePath { get; }
}
