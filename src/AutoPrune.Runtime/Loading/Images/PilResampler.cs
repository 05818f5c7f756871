using AutoPrune.Compute;

namespace AutoPrune.Loading.Images;

/// <summary>
/// A port of Pillow's <c>Image.resize</c> for 8-bit RGB (libImaging/Resample.c): separable
/// convolution, horizontal pass then vertical pass, each rounded to uint8; filter support scaled by
/// the downscale factor (antialiasing); coefficients normalised, then turned into 22-bit fixed point
/// exactly as Pillow does. Bicubic is Pillow's BICUBIC (Keys cubic, a = -0.5). With the same input
/// bytes it gives the same output bytes as <c>PIL.Image.resize(size, resample)</c> with
/// <c>reducing_gap=None</c>, which is what Hugging Face's CLIPImageProcessor calls.
/// <para>
/// <see cref="ResizeTorchAntialias"/> runs the same passes with the coefficients PyTorch uses for antialiased
/// bilinear/bicubic interpolation of uint8 images on the CPU (what torchvision's <c>resize</c> does on a uint8
/// tensor, and so what transformers' torchvision-based image processors do): the same normalised weights, in int16
/// with a precision chosen from the largest weight of the pass (at most 22 bits) instead of Pillow's fixed 22 bits.
/// The results differ from Pillow's by one level in some pixels.
/// </para>
/// </summary>
internal static class PilResampler
{
    private const int PrecisionBits = 32 - 8 - 2;

    private readonly record struct Filter(Func<double, double> Fn, double Support);

    /// <summary>Pillow's fixed 22-bit coefficients, or torch's int16 ones with a per-pass precision.</summary>
    private enum Coefficients { Pillow, TorchInt16 }

    public static byte[] Resize(byte[] rgb, int width, int height, int outWidth, int outHeight, int resample)
    {
        if (outWidth == width && outHeight == height) return rgb;
        return ResizePixels(rgb, width, height, outWidth, outHeight, resample);
    }

    /// <summary><see cref="Resize(byte[], int, int, int, int, int)"/> of pixels anywhere (a native buffer); always a new array.</summary>
    internal static byte[] ResizePixels(ReadOnlyMemory<byte> rgb, int width, int height, int outWidth, int outHeight, int resample)
    {
        if (outWidth == width && outHeight == height) return rgb.ToArray();
        if (resample == 0) return Nearest(rgb, width, height, outWidth, outHeight);
        return Separable(rgb, width, height, outWidth, outHeight, GetFilter(resample), Coefficients.Pillow);
    }

    /// <summary>
    /// <c>torch.nn.functional.interpolate(x, size, mode, antialias=True, align_corners=False)</c> of a uint8 RGB image
    /// on the CPU, for <paramref name="resample"/> 2 (bilinear) or 3 (bicubic, a = -0.5 as torch's antialiased kernel).
    /// </summary>
    public static byte[] ResizeTorchAntialias(byte[] rgb, int width, int height, int outWidth, int outHeight, int resample)
    {
        if (outWidth == width && outHeight == height) return rgb;
        return ResizePixelsTorchAntialias(rgb, width, height, outWidth, outHeight, resample);
    }

    /// <summary><see cref="ResizeTorchAntialias(byte[], int, int, int, int, int)"/> of pixels anywhere (a native buffer); always a new array.</summary>
    internal static byte[] ResizePixelsTorchAntialias(ReadOnlyMemory<byte> rgb, int width, int height, int outWidth, int outHeight, int resample)
    {
        if (outWidth == width && outHeight == height) return rgb.ToArray();
        var filter = resample switch
        {
            2 => new Filter(Bilinear, 1.0),
            3 => new Filter(TorchBicubic, 2.0),
            _ => throw new NotSupportedException($"Antialiased uint8 interpolation as torch does it exists for bilinear (2) and bicubic (3), not resample {resample}."),
        };
        return Separable(rgb, width, height, outWidth, outHeight, filter, Coefficients.TorchInt16);
    }

    private static byte[] Separable(ReadOnlyMemory<byte> rgb, int width, int height, int outWidth, int outHeight, Filter filter, Coefficients kind)
    {
        ReadOnlyMemory<byte> cur = rgb;
        byte[]? result = null;
        int curW = width;
        if (outWidth != width)
        {
            cur = result = Horizontal(cur, curW, height, outWidth, filter, kind);
            curW = outWidth;
        }
        if (outHeight != height)
            result = Vertical(cur, curW, height, outHeight, filter, kind);
        return result ?? cur.ToArray();
    }

    private static Filter GetFilter(int resample) => resample switch
    {
        1 => new Filter(Lanczos, 3.0),
        2 => new Filter(Bilinear, 1.0),
        3 => new Filter(Bicubic, 2.0),
        4 => new Filter(Box, 0.5),
        5 => new Filter(Hamming, 1.0),
        _ => throw new NotSupportedException($"PIL resample filter {resample} is not supported (0..5)."),
    };

    private static double Box(double x) => x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
    private static double Bilinear(double x) { if (x < 0) x = -x; return x < 1.0 ? 1.0 - x : 0.0; }
    private static double Hamming(double x)
    {
        if (x < 0) x = -x;
        if (x == 0) return 1.0;
        if (x >= 1.0) return 0.0;
        x *= Math.PI;
        return Math.Sin(x) / x * (0.54 + 0.46 * Math.Cos(x));
    }
    private static double Bicubic(double x)
    {
        const double a = -0.5;
        if (x < 0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }
    // torch's antialiased cubic kernel (a = -0.5), in its own order of operations.
    private static double TorchBicubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
        if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
        return 0.0;
    }
    private static double Sinc(double x) { if (x == 0.0) return 1.0; x *= Math.PI; return Math.Sin(x) / x; }
    private static double Lanczos(double x) => -3.0 <= x && x < 3.0 ? Sinc(x) * Sinc(x / 3) : 0.0;

    // Pillow: precompute_coeffs + normalize_coeffs_8bpc. torch: the same weights (in double), then int16 with the
    // precision of _compute_index_ranges_int16_weights.
    private static (int[] Bounds, int[] Coeffs, int KSize, int Precision) Precompute(int inSize, int outSize, Filter filter, Coefficients kind)
    {
        float in0 = 0, in1 = inSize;
        double scale = (double)(in1 - in0) / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = filter.Support * filterscale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var kk = new double[outSize * ksize];
        var bounds = new int[outSize * 2];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = in0 + (xx + 0.5) * scale;
            double ww = 0.0;
            double ss = 1.0 / filterscale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            if (xmax > ksize) xmax = ksize; // a rare rounding overshoot: torch clips it, and it keeps the writes in this row's slot
            int k = xx * ksize;
            int x;
            for (x = 0; x < xmax; x++)
            {
                double w = filter.Fn((x + xmin - center + 0.5) * ss);
                kk[k + x] = w;
                ww += w;
            }
            for (x = 0; x < xmax; x++)
                if (ww != 0.0) kk[k + x] /= ww;
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        int precision = PrecisionBits;
        if (kind == Coefficients.TorchInt16)
        {
            // The most bits (up to 22) for which the largest weight still fits an int16 after rounding.
            double max = 0;
            foreach (double v in kk) max = Math.Max(max, v);
            for (precision = 0; precision < 22; precision++)
                if ((int)(0.5 + max * (1 << (precision + 1))) >= (1 << 15)) break;
        }
        var coeffs = new int[kk.Length];
        for (int i = 0; i < kk.Length; i++)
            coeffs[i] = kk[i] < 0 ? (int)(-0.5 + kk[i] * (1 << precision)) : (int)(0.5 + kk[i] * (1 << precision));
        return (bounds, coeffs, ksize, precision);
    }

    private static byte Clip8(int v, int precision)
    {
        if (v >= (1 << precision << 8)) return 255;
        if (v <= 0) return 0;
        return (byte)(v >> precision);
    }

    private static byte[] Horizontal(ReadOnlyMemory<byte> source, int w, int h, int outW, Filter filter, Coefficients kind)
    {
        var (bounds, k, ksize, precision) = Precompute(w, outW, filter, kind);
        var dst = new byte[outW * h * 3];
        Parallel.For(0, h, ComputeScheduler.Options(), y =>
        {
            var src = source.Span;
            int rowIn = y * w * 3, rowOut = y * outW * 3;
            for (int xx = 0; xx < outW; xx++)
            {
                int xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], kb = xx * ksize;
                int s0 = 1 << (precision - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < xmax; x++)
                {
                    int p = rowIn + (x + xmin) * 3, c = k[kb + x];
                    s0 += src[p] * c; s1 += src[p + 1] * c; s2 += src[p + 2] * c;
                }
                int o = rowOut + xx * 3;
                dst[o] = Clip8(s0, precision); dst[o + 1] = Clip8(s1, precision); dst[o + 2] = Clip8(s2, precision);
            }
        });
        return dst;
    }

    private static byte[] Vertical(ReadOnlyMemory<byte> source, int w, int h, int outH, Filter filter, Coefficients kind)
    {
        var (bounds, k, ksize, precision) = Precompute(h, outH, filter, kind);
        var dst = new byte[w * outH * 3];
        int stride = w * 3;
        Parallel.For(0, outH, ComputeScheduler.Options(), yy =>
        {
            var src = source.Span;
            int ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1], kb = yy * ksize, rowOut = yy * stride;
            var acc = new int[stride];
            Array.Fill(acc, 1 << (precision - 1));
            for (int y = 0; y < ymax; y++)
            {
                int c = k[kb + y], rowIn = (y + ymin) * stride;
                for (int i = 0; i < stride; i++) acc[i] += src[rowIn + i] * c;
            }
            for (int i = 0; i < stride; i++) dst[rowOut + i] = Clip8(acc[i], precision);
        });
        return dst;
    }

    // Pillow's nearest-neighbour resize (an affine transform sampling pixel centres).
    private static byte[] Nearest(ReadOnlyMemory<byte> source, int w, int h, int outW, int outH)
    {
        var src = source.Span;
        var dst = new byte[outW * outH * 3];
        double sx = (double)w / outW, sy = (double)h / outH;
        for (int y = 0; y < outH; y++)
        {
            int iy = Math.Min(h - 1, (int)((y + 0.5) * sy));
            for (int x = 0; x < outW; x++)
            {
                int ix = Math.Min(w - 1, (int)((x + 0.5) * sx));
                src.Slice((iy * w + ix) * 3, 3).CopyTo(dst.AsSpan((y * outW + x) * 3));
            }
        }
        return dst;
    }
}
