using Microsoft.ML.Data;
using SkiaSharp;

namespace AutoPrune.MLNet;

/// <summary>Turns an <see cref="MLImage"/>'s pixels into PNG bytes the runtime can decode.</summary>
/// <remarks>
/// Microsoft.ML.ImageAnalytics 5.0.1 is compiled against SkiaSharp 2.88, while the runtime uses SkiaSharp 3.119: with
/// 3.x loaded, <see cref="MLImage.Pixels"/> throws <see cref="MissingMethodException"/> (SKBitmap.GetPixelSpan changed
/// signature). <see cref="MLImage.GetBGRPixels"/> still works, so it is the fallback (alpha is then taken as opaque).
/// </remarks>
internal static class MLImageEncoding
{
    private static volatile bool s_pixelsBroken;

    public static byte[] ToPng(MLImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        int w = image.Width, h = image.Height;
        if (w <= 0 || h <= 0) throw new ArgumentException($"The MLImage has no pixels ({w}x{h}).", nameof(image));
        if (!s_pixelsBroken)
        {
            try { return FromFourChannel(image, w, h); }
            catch (MissingMethodException) { s_pixelsBroken = true; }
        }
        return FromBgr(image.GetBGRPixels, w, h);
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

    private static unsafe byte[] FromBgr(byte[] bgr, int w, int h)
    {
        if (bgr.Length < w * h * 3) throw new ArgumentException($"The MLImage has {bgr.Length} BGR bytes, fewer than {w}x{h}x3.");
        var rgba = new byte[w * h * 4];
        for (int i = 0, j = 0; i < w * h; i++, j += 3)
        {
            rgba[4 * i] = bgr[j + 2];
            rgba[4 * i + 1] = bgr[j + 1];
            rgba[4 * i + 2] = bgr[j];
            rgba[4 * i + 3] = 255;
        }
        fixed (byte* p = rgba) return Encode(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Opaque), (IntPtr)p, w * 4);
    }

    private static byte[] Encode(SKImageInfo info, IntPtr pixels, int rowBytes)
    {
        using var pixmap = new SKPixmap(info, pixels, rowBytes);
        using var data = pixmap.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException($"SkiaSharp could not encode a {info.Width}x{info.Height} image as PNG.");
        return data.ToArray();
    }
}
