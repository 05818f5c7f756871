using Microsoft.ML.Data;
using SkiaSharp;

namespace AutoPrune.MLNet;

/// <summary>Turns an <see cref="MLImage"/>'s pixels into PNG bytes the runtime can decode.</summary>
/// <remarks>
/// The runtime uses SkiaSharp 2.88, the version Microsoft.ML.ImageAnalytics 5.0.1 is compiled against, so
/// <see cref="MLImage.Pixels"/> works (with 3.x loaded it throws <see cref="MissingMethodException"/>).
/// </remarks>
internal static class MLImageEncoding
{
    public static byte[] ToPng(MLImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        int w = image.Width, h = image.Height;
        if (w <= 0 || h <= 0) throw new ArgumentException($"The MLImage has no pixels ({w}x{h}).", nameof(image));
        return FromFourChannel(image, w, h);
    }

    private static unsafe byte[] FromFourChannel(MLImage image, int w, int h)
    {
        var colorType = image.PixelFormat switch
        {
            MLPixelFormat.Bgra32 => SKColorType.Bgra8888,
            MLPixelFormat.Rgba32 => SKColorType.Rgba8888,
            var f => throw new NotSupportedException($"MLImage pixel format {f} is not supported; expected Bgra32 or Rgba32."),
        };
        ReadOnlySpan<byte> pixels = image.Pixels;
        int rowBytes = pixels.Length / h;
        if (rowBytes < w * 4) throw new ArgumentException($"The MLImage has {pixels.Length} pixel bytes, fewer than {w}x{h}x4.", nameof(image));
        fixed (byte* p = pixels) return Encode(new SKImageInfo(w, h, colorType, SKAlphaType.Unpremul), (IntPtr)p, rowBytes);
    }

    private static byte[] Encode(SKImageInfo info, IntPtr pixels, int rowBytes)
    {
        using var pixmap = new SKPixmap(info, pixels, rowBytes);
        using var data = pixmap.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException($"SkiaSharp could not encode a {info.Width}x{info.Height} image as PNG.");
        return data.ToArray();
    }
}
