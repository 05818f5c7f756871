using System.Runtime.InteropServices;
using System.Text.Json;
using SkiaSharp;

namespace AutoPrune.Loading.Images;

/// <summary>
/// CLIP image preprocessing as a checkpoint's <c>preprocessor_config.json</c> says: decode (SkiaSharp:
/// PNG, JPEG, WebP, GIF, BMP, ICO, WBMP, whatever <see cref="SKCodec"/> reads), convert to RGB, optionally
/// pad to a square (LLaVA-1.5's <c>expand2square</c>), resize the shortest edge, centre-crop, rescale,
/// normalise; the result is CHW float32 <c>[3, crop_height, crop_width]</c>.
/// <para>
/// Parity with Hugging Face's (slow, PIL-based) <c>CLIPImageProcessor</c>:
/// <list type="bullet">
/// <item>Resizing is a port of Pillow's resampler (<see cref="PilResampler"/>, BICUBIC a = -0.5 with the
/// support widened on downscale, 22-bit fixed point, uint8 between the two passes), so for the same RGB
/// bytes the resized bytes are identical to PIL's, and an image already at the target size passes through
/// untouched. Output size and crop offsets use transformers' formulas (<c>int(short * long / short)</c>,
/// <c>(h - crop) // 2</c>).</item>
/// <item>Rescale and normalise follow numpy's order and precision: <c>(float)(byte * rescale_factor)</c>
/// in double, then <c>(x - mean) / std</c> in float32; bit-identical to the slow processor.</item>
/// <item>Where results can differ: decoding. JPEG decoders (libjpeg-turbo in Skia vs in Pillow) may differ
/// by ±1 in a few pixels with different IDCT/upsampling settings; Skia ignores EXIF orientation (as PIL
/// does without <c>exif_transpose</c>); embedded ICC profiles are ignored (as PIL does); 16-bit PNGs are
/// reduced to 8 bits by Skia, while PIL's convert("RGB") of 16-bit data may differ. The "fast" torchvision
/// processor that transformers 5 uses by default resizes in float with its own antialias kernel; against it
/// expect differences of about one 8-bit level in resized images (none for images already at size).</item>
/// <item>Alpha is dropped like PIL's <c>convert("RGB")</c>: the un-premultiplied colour is kept, whatever
/// the alpha.</item>
/// </list>
/// </para>
/// </summary>
internal sealed class ImagePreprocessor
{
    /// <summary>Default limit on declared image size: 50 megapixels.</summary>
    public const long DefaultMaxPixels = 50_000_000;

    private readonly float[] _mean;
    private readonly float[] _std;

    public ImagePreprocessor(ClipPreprocessorConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config;
        PreprocessorConfigChecks.Validate(config);
        _mean = config.ImageMean;
        _std = config.ImageStd;
        (OutputHeight, OutputWidth) = ComputeOutputSize(config);
        _lut = BuildLut();
    }

    public ClipPreprocessorConfig Config { get; }

    /// <summary>Height of the produced tensor (crop height, or the resize height when there is no crop).</summary>
    public int OutputHeight { get; }

    /// <summary>Width of the produced tensor.</summary>
    public int OutputWidth { get; }

    /// <summary>Images whose header declares more pixels than this are refused before decoding (decompression bombs).</summary>
    public long MaxPixels { get; set; } = DefaultMaxPixels;

    /// <summary>Largest image file read by <see cref="PreprocessFile"/> / <see cref="ReadFile"/>.</summary>
    public long MaxFileBytes { get; set; } = new InputFileLimits().ImageBytes;

    /// <summary>
    /// The LLaVA-1.5 <c>expand2square</c> background: <c>int(mean * 255)</c> per channel, truncated as
    /// LLaVA's <c>tuple(int(x*255) for x in image_processor.image_mean)</c> does ((122, 116, 104) for CLIP).
    /// </summary>
    public (byte R, byte G, byte B) PadColor =>
        ((byte)Math.Clamp((int)(_mean[0] * 255.0), 0, 255), (byte)Math.Clamp((int)(_mean[1] * 255.0), 0, 255), (byte)Math.Clamp((int)(_mean[2] * 255.0), 0, 255));

    /// <summary>
    /// Reads <c>preprocessor_config.json</c> from a model folder. Without one: CLIPImageProcessor's
    /// defaults, with size and crop taken from <c>config.json</c>'s <c>vision_config.image_size</c> when present.
    /// </summary>
    /// <exception cref="ModelLoadException">The file is not valid JSON or has unusable values.</exception>
    /// <param name="visionImageSize">The vision tower's <c>image_size</c>: the preprocessing must produce exactly that square.</param>
    public static ImagePreprocessor Load(string folder, InputFileLimits? limits = null, int? visionImageSize = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        limits ??= new InputFileLimits();
        string path = Path.Combine(folder, "preprocessor_config.json");
        ClipPreprocessorConfig config;
        if (File.Exists(path))
        {
            var bytes = ModelFiles.ReadBytes(path, limits.ConfigBytes, "ModelOptions.FileLimits.ConfigBytes");
            try
            {
                config = JsonSerializer.Deserialize<ClipPreprocessorConfig>(bytes)
                         ?? throw new JsonException("the file holds null");
            }
            catch (JsonException ex)
            {
                throw new ModelLoadException($"preprocessor_config.json is not valid: {ex.Message}", path, inner: ex);
            }
        }
        else
        {
            config = new ClipPreprocessorConfig();
            int? imageSize = visionImageSize ?? ReadVisionImageSize(Path.Combine(folder, "config.json"), limits.ConfigBytes);
            if (imageSize is int s and > 0)
            {
                config.Size = new() { ShortestEdge = s };
                config.CropSize = new() { Height = s, Width = s };
            }
        }
        ImagePreprocessor result;
        try
        {
            result = new ImagePreprocessor(config) { MaxFileBytes = limits.ImageBytes };
        }
        catch (ArgumentException ex)
        {
            throw new ModelLoadException($"preprocessor_config.json: {ex.Message}", path, inner: ex);
        }
        if (visionImageSize is int side) PreprocessorConfigChecks.MatchVisionTower(result, side, path);
        return result;
    }

    private static int? ReadVisionImageSize(string configPath, long maxBytes)
    {
        if (!File.Exists(configPath)) return null;
        try
        {
            using var doc = JsonDocument.Parse(ModelFiles.ReadBytes(configPath, maxBytes, "ModelOptions.FileLimits.ConfigBytes"));
            return doc.RootElement.TryGetProperty("vision_config", out var vc) && vc.TryGetProperty("image_size", out var s) && s.TryGetInt32(out int v) ? v : null;
        }
        catch (JsonException)
        {
            return null; // config.json problems are reported by the config loader
        }
    }

    private static (int H, int W) ComputeOutputSize(ClipPreprocessorConfig c)
    {
        if (c.DoCenterCrop)
        {
            if (c.CropSize?.Height is not int h || c.CropSize.Width is not int w || h <= 0 || w <= 0)
                throw new ArgumentException($"crop_size must have positive height and width (got {c.CropSize}).", nameof(c));
            return (h, w);
        }
        if (c.DoResize && c.Size?.Height is int rh && c.Size.Width is int rw && rh > 0 && rw > 0) return (rh, rw);
        return (-1, -1); // depends on the image
    }

    /// <summary>Preprocesses an image file; errors name the file.</summary>
    public float[] PreprocessFile(string path, bool padToSquare = false) => Preprocess(ReadFile(path, MaxFileBytes), padToSquare, path);

    /// <summary>
    /// Reads an image file: a regular file of at most <paramref name="maxBytes"/> bytes (checked before and while reading),
    /// read once; decoding then works on these bytes without another copy.
    /// </summary>
    /// <exception cref="ImageDecodeException">Missing, not a regular file, too large or unreadable, naming it.</exception>
    internal static byte[] ReadFile(string path, long maxBytes)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            return InputFile.ReadAllBytes(path, maxBytes, "Image file", "ModelOptions.FileLimits.ImageBytes");
        }
        catch (InputFileException ex)
        {
            throw new ImageDecodeException(ex.Message, null, ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ImageDecodeException($"The image file cannot be read: {ex.Message}", path, ex);
        }
    }

    /// <summary>Preprocesses encoded image bytes; <paramref name="path"/> (may be null) names the image in errors.</summary>
    public float[] Preprocess(ReadOnlySpan<byte> encodedImage, bool padToSquare, string? path)
    {
        using var decoded = DecodePixels(encodedImage, MaxPixels, path, (w, h) => ImageSizePlan.Create(w, h, padToSquare, Config, MaxPixels, path));
        return PreprocessPixels(decoded.Rgb, decoded.Width, decoded.Height, padToSquare);
    }

    /// <summary>
    /// Decodes and preprocesses an encoded image into CHW float32 <c>[3, OutputHeight, OutputWidth]</c>.
    /// </summary>
    /// <param name="padToSquare">LLaVA-1.5's <c>expand2square</c>: pad the shorter side symmetrically with <see cref="PadColor"/> before resizing.</param>
    /// <exception cref="ImageDecodeException">Empty, undecodable, truncated, zero-size or too large image.</exception>
    public float[] Preprocess(ReadOnlySpan<byte> encodedImage, bool padToSquare = false) =>
        Preprocess(encodedImage, padToSquare, null);

    /// <summary>Preprocesses already decoded interleaved RGB bytes (HWC, 3 bytes a pixel).</summary>
    public float[] PreprocessRgb(byte[] rgb, int width, int height, bool padToSquare = false)
    {
        ArgumentNullException.ThrowIfNull(rgb);
        if (width <= 0 || height <= 0) throw new ImageDecodeException($"The image has a zero size ({width}x{height}).");
        if (rgb.LongLength != 3L * width * height) throw new ArgumentException($"Expected {3L * width * height} RGB bytes, got {rgb.Length}.", nameof(rgb));
        return PreprocessPixels(rgb, width, height, padToSquare);
    }

    /// <summary>
    /// <see cref="PreprocessRgb"/> of pixels anywhere (a native decode buffer). Stages as large as the image (the
    /// padded square) are native too and freed at once; the resized and cropped stages are small.
    /// </summary>
    internal float[] PreprocessPixels(ReadOnlyMemory<byte> rgb, int width, int height, bool padToSquare)
    {
        if (width <= 0 || height <= 0) throw new ImageDecodeException($"The image has a zero size ({width}x{height}).");
        var c = Config;
        // Every stage's size is checked against MaxPixels before any of its buffers exists.
        var plan = ImageSizePlan.Create(width, height, padToSquare, c, MaxPixels);
        NativePixels? padded = null;
        try
        {
            if (plan.PaddedSide > 0)
            {
                padded = ExpandToSquare(rgb.Span, width, height, PadColor);
                rgb = padded.Memory;
                width = height = Math.Max(width, height);
            }
            if (c.DoResize)
            {
                rgb = PilResampler.ResizePixels(rgb, width, height, plan.ResizedWidth, plan.ResizedHeight, c.Resample);
                (width, height) = (plan.ResizedWidth, plan.ResizedHeight);
            }
            if (c.DoCenterCrop && CenterCrop(rgb.Span, width, height, c.CropSize.Height!.Value, c.CropSize.Width!.Value) is { } cropped)
                (rgb, width, height) = (cropped, c.CropSize.Width!.Value, c.CropSize.Height!.Value);
            return ToChwFloat(rgb.Span, width, height);
        }
        finally
        {
            ((IDisposable?)padded)?.Dispose();
        }
    }

    // transformers.image_transforms.get_resize_output_image_size(default_to_square=False) / fixed size.
    internal static (int H, int W) ResizeOutputSize(int height, int width, ClipPreprocessorConfig c)
    {
        var (h, w) = ImageSizePlan.ResizeOutputSizeLong(height, width, c);
        return (checked((int)h), checked((int)w));
    }

    // LLaVA: expand2square(pil_img, background_color): paste at ((W-w)//2, 0) or (0, (H-h)//2).
    internal static NativePixels ExpandToSquare(ReadOnlySpan<byte> rgb, int w, int h, (byte R, byte G, byte B) bg)
    {
        int n = Math.Max(w, h);
        var square = new NativePixels(checked(n * n * 3));
        var dst = square.GetSpan();
        for (int i = 0; i < dst.Length; i += 3) { dst[i] = bg.R; dst[i + 1] = bg.G; dst[i + 2] = bg.B; }
        int ox = (n - w) / 2, oy = (n - h) / 2;
        for (int y = 0; y < h; y++)
            rgb.Slice(y * w * 3, w * 3).CopyTo(dst[(((y + oy) * n + ox) * 3)..]);
        return square;
    }

    // transformers.image_transforms.center_crop, including its zero padding when the image is smaller.
    /// <returns>The crop, or null when the image is already the crop's size.</returns>
    internal static byte[]? CenterCrop(ReadOnlySpan<byte> rgb, int w, int h, int cropH, int cropW)
    {
        if (w == cropW && h == cropH) return null;
        int top = FloorDiv(h - cropH, 2), left = FloorDiv(w - cropW, 2);
        int newH = Math.Max(cropH, h), newW = Math.Max(cropW, w);
        int topPad = (newH - h + 1) / 2, leftPad = (newW - w + 1) / 2; // ceil(x / 2)
        top += topPad; left += leftPad;
        // Output window [max(0,top), min(newH, top+cropH)) of the zero-padded image; with the values
        // above it always has exactly cropH x cropW pixels.
        var dst = new byte[cropW * cropH * 3];
        for (int y = 0; y < cropH; y++)
        {
            int py = y + top - topPad; // row in the original image
            if ((uint)py >= (uint)h) continue;
            for (int x = 0; x < cropW; x++)
            {
                int px = x + left - leftPad;
                if ((uint)px >= (uint)w) continue;
                int s = (py * w + px) * 3, d = (y * cropW + x) * 3;
                dst[d] = rgb[s]; dst[d + 1] = rgb[s + 1]; dst[d + 2] = rgb[s + 2];
            }
        }
        return dst;
    }

    private readonly float[][] _lut;

    /// <summary>Byte value → normalised float per channel; every entry must be finite and of a sane size.</summary>
    private float[][] BuildLut()
    {
        var c = Config;
        var lut = new float[3][];
        for (int ch = 0; ch < 3; ch++)
        {
            lut[ch] = new float[256];
            for (int v = 0; v < 256; v++)
            {
                float x = c.DoRescale ? (float)(v * c.RescaleFactor) : v;
                if (c.DoNormalize) x = (x - _mean[ch]) / _std[ch];
                lut[ch][v] = x;
            }
        }
        PreprocessorConfigChecks.CheckPixelValues(lut);
        return lut;
    }

    private static int FloorDiv(int a, int b) => (int)Math.Floor((double)a / b);

    private float[] ToChwFloat(ReadOnlySpan<byte> rgb, int w, int h)
    {
        var c = Config;
        int plane = w * h;
        var result = new float[3 * plane];
        // numpy: image.astype(float64) * scale -> float32; then (x - mean) / std in float32.
        var lut = _lut;
        for (int i = 0; i < plane; i++)
        {
            result[i] = lut[0][rgb[i * 3]];
            result[plane + i] = lut[1][rgb[i * 3 + 1]];
            result[2 * plane + i] = lut[2][rgb[i * 3 + 2]];
        }
        return result;
    }

    /// <summary>Decoded interleaved RGB pixels in a native buffer (<see cref="NativePixels"/>); dispose to free them.</summary>
    internal readonly record struct DecodedPixels(NativePixels Owner, int Width, int Height) : IDisposable
    {
        public ReadOnlyMemory<byte> Rgb => Owner.Memory[..(Width * Height * 3)];

        public void Dispose() => ((IDisposable)Owner).Dispose();
    }

    /// <summary>
    /// Decodes an encoded image with SkiaSharp to interleaved RGB bytes (in native memory), refusing sizes over
    /// <paramref name="maxPixels"/> from the header before any pixel is decoded.
    /// </summary>
    internal static unsafe DecodedPixels DecodePixels(ReadOnlySpan<byte> encoded, long maxPixels, string? path, Action<int, int>? checkStages = null)
    {
        if (encoded.IsEmpty) throw new ImageDecodeException("The image data is empty (0 bytes).", path);
        fixed (byte* src = encoded)
        {
            // The codec reads the caller's bytes in place (pinned for the duration), not a native copy of them.
            using var data = SKData.Create((IntPtr)src, encoded.Length);
            return DecodePixels(data, encoded.Length, maxPixels, path, checkStages);
        }
    }

    /// <summary>
    /// <see cref="DecodePixels(ReadOnlySpan{byte}, long, string?, Action{int, int}?)"/> copied to a managed array, for
    /// callers that keep byte[] pipelines (one RGB array; the RGBA frame stays native). Prefer DecodePixels: a managed
    /// array of a large image is memory the GC keeps after the request.
    /// </summary>
    internal static (byte[] Rgb, int Width, int Height) DecodeRgb(ReadOnlySpan<byte> encoded, long maxPixels, string? path, Action<int, int>? checkStages = null)
    {
        using var decoded = DecodePixels(encoded, maxPixels, path, checkStages);
        return (decoded.Rgb.ToArray(), decoded.Width, decoded.Height);
    }

    private static unsafe DecodedPixels DecodePixels(SKData data, int length, long maxPixels, string? path, Action<int, int>? checkStages)
    {
        using var codec = OpenCodec(SKCodec.Create(data), length, Math.Min(maxPixels, ImageSizePlan.MaxBufferPixels), path);
        var info = codec.Info;
        int w = info.Width, h = info.Height;
        checkStages?.Invoke(w, h); // pad, resize and crop sizes, from the header, before decoding

        var alpha = info.AlphaType == SKAlphaType.Opaque ? SKAlphaType.Opaque : SKAlphaType.Unpremul;
        var dstInfo = new SKImageInfo(w, h, SKColorType.Rgba8888, alpha); // no colour space: no ICC conversion, like PIL
        // Native, not a managed array: see NativePixels. RGBA is decoded, then packed to RGB in the same buffer.
        var pixels = new NativePixels(checked(w * h * 4));
        try
        {
            SKCodecResult r;
            using (var pin = pixels.Pin()) r = codec.GetPixels(dstInfo, (IntPtr)pin.Pointer);
            if (r != SKCodecResult.Success)
            {
                string why = r switch
                {
                    SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput => "is truncated or corrupt",
                    SKCodecResult.InvalidConversion => "cannot be converted to RGB",
                    _ => "could not be decoded",
                };
                throw new ImageDecodeException($"The {codec.EncodedFormat} image ({w}x{h}) {why} (SkiaSharp: {r}).", path);
            }
            var p = pixels.GetSpan();
            for (int i = 0, j = 0; i < p.Length; i += 4, j += 3) // forward: each write lands at or before its read
            {
                p[j] = p[i]; p[j + 1] = p[i + 1]; p[j + 2] = p[i + 2];
            }
            return new DecodedPixels(pixels, w, h);
        }
        catch
        {
            ((IDisposable)pixels).Dispose();
            throw;
        }
    }

    /// <summary>The width and height an encoded image's header declares, checked as <see cref="DecodePixels(ReadOnlySpan{byte}, long, string?, Action{int, int}?)"/> checks them; no pixel is decoded.</summary>
    internal static (int Width, int Height) ReadSize(ReadOnlySpan<byte> encoded, long maxPixels, string? path)
    {
        if (encoded.IsEmpty) throw new ImageDecodeException("The image data is empty (0 bytes).", path);
        using var data = SKData.CreateCopy(encoded);
        using var codec = OpenCodec(SKCodec.Create(data), encoded.Length, maxPixels, path);
        return (codec.Info.Width, codec.Info.Height);
    }

    /// <summary>An image file's declared width and height, reading only as much of the file as its header needs.</summary>
    internal static (int Width, int Height) ReadSizeFile(string path, long maxPixels, long maxBytes)
    {
        Stream file;
        try { file = InputFile.OpenRead(path, maxBytes, "Image file", "ModelOptions.FileLimits.ImageBytes"); }
        catch (InputFileException ex) { throw new ImageDecodeException(ex.Message, null, ex); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ImageDecodeException($"The image file cannot be read: {ex.Message}", path, ex);
        }
        long length = file.Length;
        if (length == 0) { file.Dispose(); throw new ImageDecodeException("The image data is empty (0 bytes).", path); }
        using var stream = new SKManagedStream(file, disposeManagedStream: true);
        using var codec = OpenCodec(SKCodec.Create(stream), length, maxPixels, path);
        return (codec.Info.Width, codec.Info.Height);
    }

    /// <summary>Refuses a codec SkiaSharp could not create, a zero size, or more declared pixels than <paramref name="maxPixels"/>.</summary>
    private static SKCodec OpenCodec(SKCodec? codec, long encodedLength, long maxPixels, string? path)
    {
        if (codec is null)
            throw new ImageDecodeException($"The image data ({encodedLength} bytes) is not in a format SkiaSharp can decode (PNG, JPEG, WebP, GIF, BMP, ICO, WBMP, HEIF where available) or its header is corrupt.", path);
        var info = codec.Info;
        int w = info.Width, h = info.Height;
        string? why = w <= 0 || h <= 0 ? $"The {codec.EncodedFormat} image has a zero size ({w}x{h})."
            : (long)w * h > maxPixels ? $"The {codec.EncodedFormat} image declares {w}x{h} = {(long)w * h:N0} pixels, more than the limit of {maxPixels:N0} (MaxPixels)."
            : null;
        if (why is null) return codec;
        codec.Dispose();
        throw new ImageDecodeException(why, path);
    }
}
