namespace AutoPrune.Loading.Images;

/// <summary>
/// How LLaVA-NeXT ("anyres") lays out one image of a given size: the tiling resolution chosen among the pinpoints,
/// the aspect-preserving resize and centred padding onto that canvas, the tile grid, and which rows or columns of the
/// stitched patch grid survive the unpadding. Sizes are in pixels; <c>Grid</c> is patches per tile side.
/// </summary>
/// <param name="ImageWidth">Width of the original image.</param>
/// <param name="ImageHeight">Height of the original image.</param>
/// <param name="CanvasWidth">Width of the chosen pinpoint (the padded canvas the tiles are cut from).</param>
/// <param name="CanvasHeight">Height of the chosen pinpoint.</param>
/// <param name="ResizedWidth">Width of the image resized onto the canvas (aspect preserved).</param>
/// <param name="ResizedHeight">Height of the resized image.</param>
/// <param name="PadLeft">Columns of padding left of the resized image (the rest, and any odd one, go right).</param>
/// <param name="PadTop">Rows of padding above the resized image.</param>
/// <param name="TileSize">Side of a tile and of the base view (the vision tower's image size).</param>
/// <param name="TileRows">Tiles down the canvas.</param>
/// <param name="TileCols">Tiles across the canvas.</param>
/// <param name="Grid">Patches per tile side (tile size / patch size).</param>
/// <param name="FeatureRowStart">First row of the stitched (TileRows·Grid) × (TileCols·Grid) patch grid that survives unpadding.</param>
/// <param name="FeatureRows">Rows that survive.</param>
/// <param name="FeatureColStart">First column that survives.</param>
/// <param name="FeatureCols">Columns that survive.</param>
internal sealed record AnyResLayout(
    int ImageWidth, int ImageHeight,
    int CanvasWidth, int CanvasHeight,
    int ResizedWidth, int ResizedHeight, int PadLeft, int PadTop,
    int TileSize, int TileRows, int TileCols, int Grid,
    int FeatureRowStart, int FeatureRows, int FeatureColStart, int FeatureCols)
{
    /// <summary>Views the vision tower sees: the base view (the whole image at tile size) and then the tiles, row-major.</summary>
    public int Views => 1 + TileRows * TileCols;

    /// <summary>Patch tokens of the base view (Grid²).</summary>
    public int BaseTokens => Grid * Grid;

    /// <summary>Patch tokens kept from the tiles after unpadding.</summary>
    public int TilePatchTokens => FeatureRows * FeatureCols;

    /// <summary>Visual patches in all: base view plus unpadded tiles (the image_newline rows not counted).</summary>
    public int Patches => BaseTokens + TilePatchTokens;

    /// <summary>Image tokens in the prompt: the base view, then each unpadded row of the tile grid followed by one image_newline token.</summary>
    public int TokenCount => BaseTokens + FeatureRows * (FeatureCols + 1);

    /// <summary>Visual patches of each view: the base view's Grid², then each tile's patches that survive the unpadding (row-major; 0 for a tile of padding only).</summary>
    public int[] ViewPatches()
    {
        var counts = new int[Views];
        counts[0] = BaseTokens;
        for (int tr = 0; tr < TileRows; tr++)
            for (int tc = 0; tc < TileCols; tc++)
            {
                int rows = Math.Min((tr + 1) * Grid, FeatureRowStart + FeatureRows) - Math.Max(tr * Grid, FeatureRowStart);
                int cols = Math.Min((tc + 1) * Grid, FeatureColStart + FeatureCols) - Math.Max(tc * Grid, FeatureColStart);
                counts[1 + tr * TileCols + tc] = Math.Max(0, rows) * Math.Max(0, cols);
            }
        return counts;
    }
}

/// <summary>
/// LLaVA-NeXT's anyres geometry for one checkpoint: pinpoints, tile size and patch size, and what follows from an
/// image's size, as Hugging Face transformers computes it (<c>select_best_resolution</c>, <c>get_patch_output_size</c>,
/// the processor's padding and the model's <c>unpad_image</c>; same float arithmetic, same integer rounding).
/// </summary>
internal sealed class AnyResGrid
{
    public AnyResGrid(IReadOnlyList<(int Height, int Width)> pinpoints, int tileSize, int patchSize)
    {
        ArgumentNullException.ThrowIfNull(pinpoints);
        if (pinpoints.Count == 0) throw new ArgumentException("At least one pinpoint is needed.", nameof(pinpoints));
        if (tileSize <= 0 || patchSize <= 0 || tileSize % patchSize != 0)
            throw new ArgumentException($"The tile size {tileSize} must be a positive multiple of the patch size {patchSize}.", nameof(tileSize));
        foreach (var (h, w) in pinpoints)
            if (h <= 0 || w <= 0 || h % tileSize != 0 || w % tileSize != 0)
                throw new ArgumentException($"Pinpoint [{h}, {w}] is not a positive multiple of the tile size {tileSize}.", nameof(pinpoints));
        Pinpoints = pinpoints.ToArray();
        TileSize = tileSize;
        PatchSize = patchSize;
    }

    public IReadOnlyList<(int Height, int Width)> Pinpoints { get; }
    public int TileSize { get; }
    public int PatchSize { get; }
    public int Grid => TileSize / PatchSize;

    /// <summary>The most image tokens any image can take (a pinpoint whose grid needs no unpadding).</summary>
    public int MaxTokenCount => Pinpoints.Max(p => Grid * Grid + p.Height / PatchSize * (p.Width / PatchSize + 1));

    /// <summary>
    /// The pinpoint that keeps the most of the image's pixels once the image is fitted into it with its aspect ratio
    /// (never counting more than the image has); among equals, the one that wastes the least area; among those, the first.
    /// </summary>
    public (int Height, int Width) SelectBestResolution(int height, int width)
    {
        (int, int) best = Pinpoints[0];
        long bestEffective = -1;
        long leastWasted = long.MaxValue;
        foreach (var (h, w) in Pinpoints)
        {
            double scale = Math.Min((double)w / width, (double)h / height);
            long fittedW = (long)(width * scale), fittedH = (long)(height * scale);
            long effective = Math.Min(fittedW * fittedH, (long)width * height);
            long wasted = (long)w * h - effective;
            if (effective > bestEffective || (effective == bestEffective && wasted < leastWasted))
            {
                bestEffective = effective;
                leastWasted = wasted;
                best = (h, w);
            }
        }
        return best;
    }

    /// <summary>The size an image of <paramref name="height"/> × <paramref name="width"/> is resized to inside a canvas: the side that limits fills it, the other is scaled and rounded up.</summary>
    internal static (int Height, int Width) FitInside(int height, int width, int canvasHeight, int canvasWidth)
    {
        double scaleW = (double)canvasWidth / width, scaleH = (double)canvasHeight / height;
        return scaleW < scaleH
            ? (Math.Min((int)Math.Ceiling(height * scaleW), canvasHeight), canvasWidth)
            : (canvasHeight, Math.Min((int)Math.Ceiling(width * scaleH), canvasWidth));
    }

    /// <summary>The full layout of an image of this size.</summary>
    public AnyResLayout Plan(int width, int height)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"The image has a zero size ({width}x{height}).");
        var (ch, cw) = SelectBestResolution(height, width);
        var (rh, rw) = FitInside(height, width, ch, cw);
        int tileRows = ch / TileSize, tileCols = cw / TileSize, g = Grid;
        // Unpadding of the stitched patch grid (from the original size alone, like the model does it).
        int curH = tileRows * g, curW = tileCols * g;
        int rowStart = 0, rows = curH, colStart = 0, cols = curW;
        double originalAspect = (double)width / height, currentAspect = (double)curW / curH;
        if (originalAspect > currentAspect)
        {
            int newH = (int)Math.Round(height * ((double)curW / width), 7, MidpointRounding.ToEven);
            int pad = (curH - newH) / 2;
            rowStart = pad; rows = curH - 2 * pad;
        }
        else
        {
            int newW = (int)Math.Round(width * ((double)curH / height), 7, MidpointRounding.ToEven);
            int pad = (curW - newW) / 2;
            colStart = pad; cols = curW - 2 * pad;
        }
        return new AnyResLayout(width, height, cw, ch, rw, rh, (cw - rw) / 2, (ch - rh) / 2,
            TileSize, tileRows, tileCols, g, rowStart, rows, colStart, cols);
    }
}
