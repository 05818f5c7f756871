using Microsoft.ML.Data;
using SkiaSharp;

namespace AutoPrune.MLNet;

/// <summary>Turns an <see cref="MLImage"/>'s pixels into PNG bytes the runtime can decode.</summary>
internal static class MLImageEncoding
{
    public static unsafe byte[] ToPng(MLImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var colorType = image.PixelFormat switch
        {
            MLPixelFormat.Bgra32 => SKColorType.Bgra8888,
            MLPixelFormat.Rgba32 => SKColorType.Rgba8888,
            var f => throw new NotSupportedException($"MLImage pixel format {f} is not supported; expected Bgra32 or Rgba32."),
        };
        int w = image.Width, h = image.Height;
        if (w <= 0 || h <= 0) throw new ArgumentException($"MLImage has no pixels ({w}x{h}).", nameof(image));
        ReadOnlySpan<byte> pixels = image.Pixels;
        int rowBytes = pixels.Length / h;
        if (rowBytes < w * 4) throw new ArgumentException($"MLImage has {pixels.Length} pixel bytes, fewer than {w}x{h}x4.", nameof(image));
        var info = new SKImageInfo(w, h, colorType, SKAlphaType.Unpremul);
        fixed (byte* p = pixels)
        {
            using var pixmap = new SKPixmap(info, (IntPtr)p, rowBytes);
            using var data = pixmap.Encode(SKEncodedImageFormat.Png, 100)
                ?? throw new InvalidOperationException($"SkiaSharp could not encode a {w}x{h} MLImage as PNG.");
            return data.ToArray();
        }
    }
}
