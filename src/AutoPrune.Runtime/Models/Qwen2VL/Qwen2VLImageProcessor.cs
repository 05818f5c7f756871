using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// <c>preprocessor_config.json</c> of Qwen2.5-VL (<c>Qwen2VLImageProcessor</c>); initialisers are its defaults. The pixel
/// bounds come from <c>min_pixels</c> / <c>max_pixels</c> when present (they win, as in transformers), else from
/// <c>size {shortest_edge, longest_edge}</c>.
/// </summary>
internal sealed class Qwen2VLPreprocessorConfig
{
    [JsonPropertyName("image_processor_type")] public string? ImageProcessorType { get; set; }
    [JsonPropertyName("do_resize")] public bool DoResize { get; set; } = true;
    [JsonPropertyName("resample")] public int Resample { get; set; } = 3;
    [JsonPropertyName("do_rescale")] public bool DoRescale { get; set; } = true;
    [JsonPropertyName("rescale_factor")] public double RescaleFactor { get; set; } = 1.0 / 255.0;
    [JsonPropertyName("do_normalize")] public bool DoNormalize { get; set; } = true;

    /// <summary>Read as double and rounded to float once, as numpy's <c>np.array(mean, dtype=float32)</c> does.</summary>
    [JsonPropertyName("image_mean")] public double[] ImageMean { get; set; } = [0.48145466, 0.4578275, 0.40821073];
    [JsonPropertyName("image_std")] public double[] ImageStd { get; set; } = [0.26862954, 0.26130258, 0.27577711];
    [JsonPropertyName("do_convert_rgb")] public bool DoConvertRgb { get; set; } = true;
    [JsonPropertyName("min_pixels")] public long? MinPixels { get; set; }
    [JsonPropertyName("max_pixels")] public long? MaxPixels { get; set; }
    [JsonPropertyName("size")] public SizeSpec? Size { get; set; }
    [JsonPropertyName("patch_size")] public int PatchSize { get; set; } = 14;
    [JsonPropertyName("temporal_patch_size")] public int TemporalPatchSize { get; set; } = 2;
    [JsonPropertyName("merge_size")] public int MergeSize { get; set; } = 2;

    /// <summary><c>size</c>: the pixel bounds, as <c>shortest_edge</c> (min pixels) and <c>longest_edge</c> (max pixels).</summary>
    internal sealed class SizeSpec
    {
        [JsonPropertyName("shortest_edge")] public long? ShortestEdge { get; set; }
        [JsonPropertyName("longest_edge")] public long? LongestEdge { get; set; }
        [JsonExtensionData] public Dictionary<string, JsonElement>? Other { get; set; }
    }

    /// <summary>Fewest pixels of a resized image: min_pixels, else size.shortest_edge, else 56·56.</summary>
    [JsonIgnore] public long ResolvedMinPixels => MinPixels ?? Size?.ShortestEdge ?? 56 * 56;

    /// <summary>Most pixels of a resized image: max_pixels, else size.longest_edge, else 28·28·1280.</summary>
    [JsonIgnore] public long ResolvedMaxPixels => MaxPixels ?? Size?.LongestEdge ?? 28 * 28 * 1280;

    /// <summary>Resized sides are multiples of this: patch_size · merge_size (28).</summary>
    [JsonIgnore] public int Factor => PatchSize * MergeSize;

    /// <summary>Largest max_pixels accepted (Qwen2.5-VL's own is 12,845,056, i.e. 16,384 merged tokens).</summary>
    public const long MaxPixelsLimit = 1L << 26;

    /// <exception cref="ModelLoadException">A field out of range, or disagreeing with the vision tower, named with the file.</exception>
    internal void Validate(string path, Qwen2VLVisionConfig? vision)
    {
        ModelLoadException Bad(string what) => new($"Preprocessor config '{path}': {what}", path);
        if (ImageMean is not { Length: 3 } || ImageStd is not { Length: 3 })
            throw Bad("image_mean and image_std must have 3 values (RGB).");
        for (int i = 0; i < 3; i++)
        {
            if (!double.IsFinite(ImageMean[i])) throw Bad(FormattableString.Invariant($"image_mean[{i}] = {ImageMean[i]} is not a finite number."));
            if (!(double.IsFinite(ImageStd[i]) && ImageStd[i] > 0)) throw Bad(FormattableString.Invariant($"image_std[{i}] = {ImageStd[i]} must be a positive finite number."));
        }
        if (!(double.IsFinite(RescaleFactor) && RescaleFactor > 0)) throw Bad(FormattableString.Invariant($"rescale_factor = {RescaleFactor} must be a positive finite number (1/255)."));
        if (Resample is < 0 or > 5) throw Bad($"resample = {Resample} is not a PIL filter (0..5; 3 is BICUBIC).");
        if (PatchSize is < 1 or > 1024) throw Bad($"patch_size = {PatchSize} is out of range 1..1024.");
        if (MergeSize is < 1 or > 16) throw Bad($"merge_size = {MergeSize} is out of range 1..16.");
        if (TemporalPatchSize is < 1 or > 16) throw Bad($"temporal_patch_size = {TemporalPatchSize} is out of range 1..16.");
        if (Size?.Other is { Count: > 0 } other && MinPixels is null && MaxPixels is null && (Size.ShortestEdge is null || Size.LongestEdge is null))
            throw Bad($"size has {string.Join(", ", other.Keys.Select(k => $"'{k}'"))}; a Qwen2-VL processor's size is {{\"shortest_edge\": min pixels, \"longest_edge\": max pixels}}.");
        long min = ResolvedMinPixels, max = ResolvedMaxPixels;
        string minField = MinPixels is not null ? "min_pixels" : "size.shortest_edge", maxField = MaxPixels is not null ? "max_pixels" : "size.longest_edge";
        if (min < 1) throw Bad($"{minField} = {min} must be positive.");
        if (max < (long)Factor * Factor || max > MaxPixelsLimit)
            throw Bad($"{maxField} = {max:N0} is out of range; expected {(long)Factor * Factor:N0} (one {Factor}x{Factor} block) to {MaxPixelsLimit:N0}.");
        if (min > max) throw Bad($"{minField} = {min:N0} is more than {maxField} = {max:N0}.");
        if (vision is null) return;
        foreach (var (field, mine, theirs, visionField) in new[]
        {
            ("patch_size", PatchSize, vision.PatchSize, "patch_size"), ("merge_size", MergeSize, vision.SpatialMergeSize, "spatial_merge_size"),
            ("temporal_patch_size", TemporalPatchSize, vision.TemporalPatchSize, "temporal_patch_size"),
        })
            if (mine != theirs)
                throw Bad($"{field} = {mine}, but config.json has vision_config.{visionField} = {theirs}; the patches must be what the vision tower embeds.");
        if (vision.InChannels != 3)
            throw Bad($"the processor makes RGB patches (3 channels), but config.json has vision_config.in_channels = {vision.InChannels}.");
    }
}

/// <summary>One preprocessed image: its patches and their grid.</summary>
/// <param name="PixelValues">[GridT·GridH·GridW, channels·temporal_patch·patch²] float32, rows in the processor's merge order.</param>
internal sealed record Qwen2VLImage(float[] PixelValues, int GridT, int GridH, int GridW, int ResizedWidth, int ResizedHeight, int Width, int Height, int MergeSize)
{
    /// <summary>Patches (rows of <see cref="PixelValues"/>).</summary>
    public int Patches => GridT * GridH * GridW;

    /// <summary>Tokens the image gives the language model: patches / merge².</summary>
    public int MergedTokens => Patches / (MergeSize * MergeSize);

    /// <summary>The grid as <c>image_grid_thw</c> writes it.</summary>
    public (int T, int H, int W) Grid => (GridT, GridH, GridW);
}

/// <summary>
/// Qwen2.5-VL's image preprocessing, exactly as transformers' (slow, PIL) <c>Qwen2VLImageProcessor</c>: RGB;
/// <see cref="SmartResize"/> to multiples of 28 within the pixel bounds; Pillow's resampler on uint8
/// (<see cref="PilResampler"/>); rescale as <c>(float)(byte · rescale_factor)</c> in double, then <c>(x - mean) / std</c> in
/// float32; the frame repeated to <c>temporal_patch_size</c> copies; the patches reshaped
/// <c>(t, tp, C, gh/m, m, p, gw/m, m, p)</c> and transposed <c>(0, 3, 6, 4, 7, 2, 1, 5, 8)</c>, so that the m² patches
/// of each merged token are consecutive rows. (The fast torchvision processor resizes differently; these are not its values.)
/// </summary>
internal sealed class Qwen2VLImageProcessor
{
    public const string FileName = "preprocessor_config.json";

    /// <summary>transformers refuses images whose longer side is more than this many times the shorter.</summary>
    public const double MaxAspectRatio = 200;

    private readonly float[][] _lut;

    public Qwen2VLImageProcessor(Qwen2VLPreprocessorConfig config, string? path = null, Qwen2VLVisionConfig? vision = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate(path ?? FileName, vision);
        Config = config;
        _lut = BuildLut(config);
    }

    public Qwen2VLPreprocessorConfig Config { get; }

    /// <summary>Images whose header declares more pixels than this are refused before decoding (decompression bombs).</summary>
    public long MaxPixels { get; set; } = ImagePreprocessor.DefaultMaxPixels;

    /// <summary>Largest image file read by <see cref="PreprocessFile"/>.</summary>
    public long MaxFileBytes { get; set; } = new InputFileLimits().ImageBytes;

    /// <summary>Reads <c>preprocessor_config.json</c> (defaults when absent) and checks it against the vision tower.</summary>
    public static Qwen2VLImageProcessor Load(string folder, Qwen2VLVisionConfig? vision = null, InputFileLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        limits ??= new InputFileLimits();
        string path = Path.Combine(folder, FileName);
        var config = new Qwen2VLPreprocessorConfig();
        if (File.Exists(path))
        {
            try
            {
                config = JsonSerializer.Deserialize<Qwen2VLPreprocessorConfig>(ModelFiles.ReadBytes(path, limits.ConfigBytes, "ModelOptions.FileLimits.ConfigBytes"))
                         ?? throw new JsonException("the file holds null");
            }
            catch (JsonException ex)
            {
                throw new ModelLoadException($"Preprocessor config '{path}' is not valid ({(ex.Path is { Length: > 1 } p ? "at '" + p + "'" : "")}): {ex.Message}", path, null, ex);
            }
        }
        return new Qwen2VLImageProcessor(config, path, vision) { MaxFileBytes = limits.ImageBytes };
    }

    /// <summary>
    /// transformers' <c>smart_resize</c>: each side rounded (half to even, as Python's <c>round</c>) to a multiple of
    /// <paramref name="factor"/>; if that has more than <paramref name="maxPixels"/> pixels both sides shrink by
    /// sqrt(h·w / max) and are floored to multiples (at least one factor), if fewer than <paramref name="minPixels"/> they grow
    /// by sqrt(min / (h·w)) and are ceiled.
    /// </summary>
    /// <exception cref="ArgumentException">The aspect ratio is more than 200, or a side is not positive.</exception>
    public static (int Height, int Width) SmartResize(int height, int width, int factor, long minPixels, long maxPixels)
    {
        if (height <= 0 || width <= 0) throw new ArgumentException($"The image has a zero size ({width}x{height}).");
        double ratio = (double)Math.Max(height, width) / Math.Min(height, width);
        if (ratio > MaxAspectRatio)
            throw new ArgumentException(FormattableString.Invariant($"The image is {width}x{height}: its aspect ratio {ratio:0.#} is more than {MaxAspectRatio} (the Qwen2-VL processor's limit)."));
        long hBar = (long)Math.Round((double)height / factor, MidpointRounding.ToEven) * factor;
        long wBar = (long)Math.Round((double)width / factor, MidpointRounding.ToEven) * factor;
        if (hBar * wBar > maxPixels)
        {
            double beta = Math.Sqrt((double)height * width / maxPixels);
            hBar = Math.Max(factor, (long)Math.Floor(height / beta / factor) * factor);
            wBar = Math.Max(factor, (long)Math.Floor(width / beta / factor) * factor);
        }
        else if (hBar * wBar < minPixels)
        {
            double beta = Math.Sqrt((double)minPixels / ((double)height * width));
            hBar = (long)Math.Ceiling(height * beta / factor) * factor;
            wBar = (long)Math.Ceiling(width * beta / factor) * factor;
        }
        return (checked((int)hBar), checked((int)wBar));
    }

    /// <summary>The resized size of a <paramref name="width"/> x <paramref name="height"/> image (or the size itself without do_resize).</summary>
    public (int Height, int Width) ResizedSize(int width, int height)
    {
        if (!Config.DoResize)
        {
            if (height % Config.Factor != 0 || width % Config.Factor != 0)
                throw new ArgumentException($"do_resize is false, so the image's sides must be multiples of {Config.Factor}, but it is {width}x{height}.");
            return (height, width);
        }
        return SmartResize(height, width, Config.Factor, Config.ResolvedMinPixels, Config.ResolvedMaxPixels);
    }

    /// <summary>Checks every stage's size against <see cref="MaxPixels"/> before any buffer of that stage exists.</summary>
    private (int H, int W) Plan(int width, int height, string? path)
    {
        long limit = Math.Min(MaxPixels, ImageSizePlan.MaxBufferPixels);
        if ((long)width * height > limit)
            throw new ImageDecodeException($"The image is {width}x{height} = {(long)width * height:N0} pixels, more than the limit of {limit:N0} (MaxPixels).", path);
        (int rh, int rw) = Wrap(() => ResizedSize(width, height), path);
        long intermediate = Math.Max((long)rw * rh, (long)rw * height); // the horizontal pass runs first
        if (intermediate > limit)
            throw new ImageDecodeException($"Resizing the {width}x{height} image to {rw}x{rh} needs {intermediate:N0} pixels, more than the limit of {limit:N0} (MaxPixels).", path);
        return (rh, rw);
    }

    private static T Wrap<T>(Func<T> f, string? path)
    {
        try { return f(); }
        catch (ArgumentException ex) { throw new ImageDecodeException(ex.Message, path); }
    }

    /// <summary>Preprocesses an image file; errors name it.</summary>
    /// <exception cref="ImageDecodeException">Missing, undecodable, too large, or of an aspect ratio over 200.</exception>
    public Qwen2VLImage PreprocessFile(string path) => Preprocess(ImagePreprocessor.ReadFile(path, MaxFileBytes), path);

    /// <summary>Decodes (SkiaSharp) and preprocesses encoded image bytes; <paramref name="path"/> names the image in errors.</summary>
    public Qwen2VLImage Preprocess(ReadOnlySpan<byte> encoded, string? path = null)
    {
        var (rgb, w, h) = ImagePreprocessor.DecodeRgb(encoded, MaxPixels, path, (w, h) => Plan(w, h, path));
        return PreprocessRgb(rgb, w, h, path);
    }

    /// <summary>Preprocesses decoded interleaved RGB bytes (HWC, 3 bytes a pixel).</summary>
    public Qwen2VLImage PreprocessRgb(byte[] rgb, int width, int height, string? path = null)
    {
        var (resized, rw, rh) = Resize(rgb, width, height, path);
        // One frame, repeated to temporal_patch_size copies: grid_t = 1.
        return new Qwen2VLImage(Patchify(resized, rw, rh), 1, rh / Config.PatchSize, rw / Config.PatchSize,
            rw, rh, width, height, Config.MergeSize);
    }

    /// <summary>The resized uint8 RGB image (what PIL's <c>resize((w, h), resample)</c> returns).</summary>
    public (byte[] Rgb, int Width, int Height) Resize(byte[] rgb, int width, int height, string? path = null)
    {
        ArgumentNullException.ThrowIfNull(rgb);
        if (width <= 0 || height <= 0) throw new ImageDecodeException($"The image has a zero size ({width}x{height}).", path);
        if (rgb.LongLength != 3L * width * height) throw new ArgumentException($"Expected {3L * width * height} RGB bytes, got {rgb.Length}.", nameof(rgb));
        var (rh, rw) = Plan(width, height, path);
        return (PilResampler.Resize(rgb, width, height, rw, rh, Config.Resample), rw, rh);
    }

    /// <summary>
    /// Rescales, normalises, repeats the frame to temporal_patch_size copies and cuts a resized image into patch rows:
    /// row ((bh·(gw/m) + bw)·m + mh)·m + mw holds patch (bh·m + mh, bw·m + mw), its values ordered (channel, frame, y, x).
    /// </summary>
    public float[] Patchify(byte[] rgb, int width, int height)
    {
        int p = Config.PatchSize, m = Config.MergeSize, tp = Config.TemporalPatchSize;
        if (width % (p * m) != 0 || height % (p * m) != 0)
            throw new ArgumentException($"The image is {width}x{height}; both sides must be multiples of patch_size * merge_size = {p * m}.");
        int gh = height / p, gw = width / p, rowLen = 3 * tp * p * p;
        var result = new float[checked((long)gh * gw * rowLen) is long n && n <= Array.MaxLength ? (int)n : throw new ArgumentException("The image has too many patches.")];
        var lut = _lut;
        int row = 0;
        for (int bh = 0; bh < gh / m; bh++)
            for (int bw = 0; bw < gw / m; bw++)
                for (int mh = 0; mh < m; mh++)
                    for (int mw = 0; mw < m; mw++, row++)
                    {
                        int y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
                        var dst = result.AsSpan(row * rowLen, rowLen);
                        for (int c = 0; c < 3; c++)
                        {
                            var table = lut[c];
                            int cBase = c * tp * p * p;
                            for (int y = 0; y < p; y++)
                            {
                                int src = ((y0 + y) * width + x0) * 3 + c;
                                int d = cBase + y * p;
                                for (int x = 0; x < p; x++) dst[d + x] = table[rgb[src + 3 * x]];
                            }
                            // The frame is repeated: every temporal copy of the patch holds the same values.
                            for (int t = 1; t < tp; t++)
                                dst.Slice(cBase, p * p).CopyTo(dst.Slice(cBase + t * p * p, p * p));
                        }
                    }
        return result;
    }

    /// <summary>Byte value → normalised float per channel: numpy's <c>(float32)(v · scale)</c> then float32 <c>(x - mean) / std</c>.</summary>
    private static float[][] BuildLut(Qwen2VLPreprocessorConfig c)
    {
        var lut = new float[3][];
        for (int ch = 0; ch < 3; ch++)
        {
            float mean = (float)c.ImageMean[ch], std = (float)c.ImageStd[ch];
            lut[ch] = new float[256];
            for (int v = 0; v < 256; v++)
            {
                float x = c.DoRescale ? (float)(v * c.RescaleFactor) : v;
                if (c.DoNormalize) x = (x - mean) / std;
                lut[ch][v] = x;
            }
        }
        try { PreprocessorConfigChecks.CheckPixelValues(lut); }
        catch (ArgumentException ex) { throw new ModelLoadException($"Preprocessor config: {ex.Message}", FileName, null, ex); }
        return lut;
    }
}
