using AutoPrune.Models.Llava;

namespace AutoPrune.Loading.Images;

/// <summary>One image preprocessed for LLaVA-NeXT: its views as CHW float32 and how they were cut.</summary>
/// <param name="Pixels">[Views, 3, TileSize, TileSize]: the base view, then the tiles row-major.</param>
internal sealed record AnyResPixels(float[] Pixels, AnyResLayout Layout)
{
    /// <summary>Floats in one view.</summary>
    public int ViewLength => Pixels.Length / Layout.Views;

    public ReadOnlySpan<float> View(int i) => Pixels.AsSpan(i * ViewLength, ViewLength);
}

/// <summary>
/// LLaVA-NeXT image preprocessing, as Hugging Face's <c>LlavaNextImageProcessor</c> (transformers 5, torchvision
/// backend) does it:
/// <list type="number">
/// <item>choose the tiling resolution among the pinpoints for the image's size (<see cref="AnyResGrid"/>);</item>
/// <item>resize the image into it keeping the aspect ratio and pad the rest with zeros, centred (an odd pixel of
/// padding goes right or down);</item>
/// <item>cut the canvas into tile-size squares, row-major;</item>
/// <item>put before them the base view: the whole image resized to tile size × tile size (not cropped);</item>
/// <item>give every view the CLIP steps of <c>preprocessor_config.json</c> (resize of the shortest edge and centre crop,
/// both no-ops at tile size; rescale; normalise) through <see cref="ImagePreprocessor"/>.</item>
/// </list>
/// Both resizes are torch's antialiased uint8 interpolation with the checkpoint's filter
/// (<see cref="PilResampler.ResizeTorchAntialias"/>, bit-exact), which is what that processor runs; Pillow's resize
/// (the older "slow" processor) differs by one level in some pixels. Decoding, the pixel limit and the
/// alpha/ICC/EXIF behaviour are <see cref="ImagePreprocessor"/>'s.
/// </summary>
internal sealed class AnyResImageProcessor
{
    private readonly ImagePreprocessor _clip;

    public AnyResImageProcessor(ImagePreprocessor clip, AnyResGrid grid)
    {
        ArgumentNullException.ThrowIfNull(clip);
        ArgumentNullException.ThrowIfNull(grid);
        if (clip.OutputHeight != grid.TileSize || clip.OutputWidth != grid.TileSize)
            throw new ArgumentException($"The processor's output is {clip.OutputHeight}x{clip.OutputWidth} but the tiles are {grid.TileSize}x{grid.TileSize}.", nameof(clip));
        _clip = clip;
        Grid = grid;
    }

    public AnyResGrid Grid { get; }

    /// <summary>Largest declared image accepted (see <see cref="ImagePreprocessor.MaxPixels"/>).</summary>
    public long MaxPixels { get => _clip.MaxPixels; set => _clip.MaxPixels = value; }

    /// <summary>Largest image file read (see <see cref="ImagePreprocessor.MaxFileBytes"/>).</summary>
    public long MaxFileBytes { get => _clip.MaxFileBytes; set => _clip.MaxFileBytes = value; }

    /// <summary>
    /// Loads a LLaVA-NeXT checkpoint's processor: <c>preprocessor_config.json</c> (CLIP settings and, if present,
    /// <c>image_grid_pinpoints</c>, which must equal config.json's) and the config's pinpoints, tile and patch size.
    /// </summary>
    /// <exception cref="ModelLoadException">Unusable or inconsistent settings, named with their file and field.</exception>
    public static AnyResImageProcessor Load(string folder, LlavaConfig config, ImagePreprocessor? clip = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        clip ??= ImagePreprocessor.Load(folder);
        string path = Path.Combine(folder, "preprocessor_config.json");
        var grid = new AnyResGrid(config.GridPinpoints, config.VisionConfig.ImageSize, config.VisionConfig.PatchSize);
        if (clip.Config.ImageGridPinpoints is { } own)
        {
            var mine = own.Select(p => p is { Length: 2 } ? (p[0], p[1]) : (-1, -1)).ToArray();
            if (!mine.SequenceEqual(grid.Pinpoints))
                throw new ModelLoadException(
                    $"preprocessor_config.json: image_grid_pinpoints = {Show(own)} differs from config.json's {Show(grid.Pinpoints.Select(p => new[] { p.Height, p.Width }))}; the processor and the model must tile alike.",
                    path);
        }
        int tile = grid.TileSize;
        if (clip.OutputHeight != tile || clip.OutputWidth != tile)
            throw new ModelLoadException(
                $"preprocessor_config.json: crop_size = {clip.Config.CropSize} but LLaVA-NeXT tiles are vision_config.image_size = {tile} px square.", path);
        if (clip.Config.Resample is not (2 or 3))
            throw new ModelLoadException(
                $"preprocessor_config.json: resample = {clip.Config.Resample} is not supported for LLaVA-NeXT; expected 3 (bicubic, as every LLaVA-NeXT checkpoint) or 2 (bilinear).", path);
        if (clip.Config.DoResize && clip.Config.Size?.ShortestEdge is int s && s != tile)
            throw new ModelLoadException(
                $"preprocessor_config.json: size.shortest_edge = {s} but LLaVA-NeXT views are vision_config.image_size = {tile} px (the base view is resized to it).", path);
        return new AnyResImageProcessor(clip, grid);
    }

    private static string Show(IEnumerable<int[]> pinpoints) => "[" + string.Join(", ", pinpoints.Select(p => "[" + string.Join(", ", p) + "]")) + "]";

    /// <summary>Reads only the image's header: its width and height (and refuses it as <see cref="ImagePreprocessor"/> would).</summary>
    public (int Width, int Height) ReadSize(ReadOnlySpan<byte> encoded, string? path = null) => ImagePreprocessor.ReadSize(encoded, MaxPixels, path);

    /// <summary>The layout of an image of this size.</summary>
    public AnyResLayout Plan(int width, int height) => Grid.Plan(width, height);

    /// <summary>Decodes and preprocesses an encoded image.</summary>
    public AnyResPixels Preprocess(ReadOnlySpan<byte> encoded, string? path = null)
    {
        using var decoded = ImagePreprocessor.DecodePixels(encoded, MaxPixels, path);
        return PreprocessPixels(decoded.Rgb, decoded.Width, decoded.Height);
    }

    /// <summary>Preprocesses decoded interleaved RGB bytes (HWC).</summary>
    public AnyResPixels PreprocessRgb(byte[] rgb, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(rgb);
        if (rgb.Length != checked(width * height * 3)) throw new ArgumentException($"Expected {width * height * 3} RGB bytes, got {rgb.Length}.", nameof(rgb));
        return PreprocessPixels(rgb, width, height);
    }

    /// <summary><see cref="PreprocessRgb"/> of pixels anywhere (a native decode buffer); every stage it makes is image-tile sized.</summary>
    internal AnyResPixels PreprocessPixels(ReadOnlyMemory<byte> rgb, int width, int height)
    {
        var layout = Grid.Plan(width, height);
        int t = layout.TileSize, resample = _clip.Config.Resample;
        int viewLength = 3 * t * t;
        // The resampler's horizontal pass runs first: its buffer is (new width) x (original height).
        long pass = (long)Math.Max(t, layout.ResizedWidth) * height;
        if (pass > MaxPixels)
            throw new ImageDecodeException($"The {width}x{height} image's aspect ratio is too extreme: resizing it to {layout.ResizedWidth}x{layout.ResizedHeight} needs {pass:N0} pixels, more than the limit of {MaxPixels:N0} (MaxPixels).");
        var pixels = new float[checked(layout.Views * viewLength)];

        // Base view: the whole image squeezed to tile size.
        var baseView = PilResampler.ResizePixelsTorchAntialias(rgb, width, height, t, t, resample);
        _clip.PreprocessRgb(baseView, t, t).CopyTo(pixels.AsSpan(0, viewLength));

        // Tiles: resize into the canvas keeping the aspect ratio, pad with zeros (centred), cut row-major.
        var resized = PilResampler.ResizePixelsTorchAntialias(rgb, width, height, layout.ResizedWidth, layout.ResizedHeight, resample);
        int cw = layout.CanvasWidth;
        var canvas = new byte[checked(cw * layout.CanvasHeight * 3)];
        for (int y = 0; y < layout.ResizedHeight; y++)
            Buffer.BlockCopy(resized, y * layout.ResizedWidth * 3, canvas, ((y + layout.PadTop) * cw + layout.PadLeft) * 3, layout.ResizedWidth * 3);
        var tile = new byte[t * t * 3];
        for (int ty = 0; ty < layout.TileRows; ty++)
            for (int tx = 0; tx < layout.TileCols; tx++)
            {
                for (int y = 0; y < t; y++)
                    Buffer.BlockCopy(canvas, ((ty * t + y) * cw + tx * t) * 3, tile, y * t * 3, t * 3);
                int view = 1 + ty * layout.TileCols + tx;
                _clip.PreprocessRgb(tile, t, t).CopyTo(pixels.AsSpan(view * viewLength, viewLength));
            }
        return new AnyResPixels(pixels, layout);
    }
}
