using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>
/// One image's visual tokens as pruning sees them, for every model family: the views it was cut into (each an h×w grid,
/// not necessarily square), each visual token's view and cell and its place in the original image, the image's run of
/// rows in prompt order (visual tokens, separator rows such as LLaVA-NeXT's <c>image_newline</c>, an optional [CLS]
/// token), and how many vision patches per side one token merges (Qwen2.5-VL's 2×2 PatchMerger: 2). LLaVA-1.5 is the
/// one-view square case (<see cref="SquareGrid"/>), where the grid-index selections and the device kernels apply.
/// </summary>
internal sealed class VisualTokenMap
{
    private VisualTokenMap(int imageWidth, int imageHeight, IReadOnlyList<(int Rows, int Cols)> views, VisualToken[] tokens, int[] sequence,
        int merge, int? squareGrid, VisualGeometry geometry)
    {
        ImageWidth = imageWidth; ImageHeight = imageHeight; Views = views; Tokens = tokens; Sequence = sequence; Merge = merge;
        SquareGrid = squareGrid; Geometry = geometry;
        Newlines = sequence.Count(s => s == SequenceState.NewlineRow);
        HasCls = sequence.Length > 0 && sequence[0] == SequenceState.ClsToken;
    }

    /// <summary>The original image's size in pixels (for a square grid: the grid itself, one unit per token).</summary>
    public int ImageWidth { get; }
    public int ImageHeight { get; }

    /// <summary>Each view's grid of tokens: rows × columns.</summary>
    public IReadOnlyList<(int Rows, int Cols)> Views { get; }

    /// <summary>The visual tokens by visual index (the indices of <see cref="SequenceState.VisualIndex"/> and the report).</summary>
    public IReadOnlyList<VisualToken> Tokens { get; }

    /// <summary>The image's rows in prompt order: a visual index (≥ 0), <see cref="SequenceState.NewlineRow"/> or <see cref="SequenceState.ClsToken"/>.</summary>
    public IReadOnlyList<int> Sequence { get; }

    /// <summary>Vision patches per side merged into one token (1: none).</summary>
    public int Merge { get; }

    /// <summary>The side of LLaVA-1.5's single square grid, where token v sits at (v / g, v % g); null for any other layout.</summary>
    public int? SquareGrid { get; }

    /// <summary>Each token's centre and cell size in the original image (what distances and priors use).</summary>
    public VisualGeometry Geometry { get; }

    /// <summary>Separator rows in the run (never pruned, not visual tokens).</summary>
    public int Newlines { get; }

    /// <summary>The run starts with the vision tower's [CLS] token (always kept).</summary>
    public bool HasCls { get; }

    public int Count => Tokens.Count;

    /// <summary>
    /// LLaVA-1.5: one g×g grid of patches (row-major), after a [CLS] row with the "full" strategy; geometry in grid units
    /// (token v's centre at (v % g + 0.5, v / g + 0.5), cells of 1).
    /// </summary>
    public static VisualTokenMap Square(int g, bool cls)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(g, 1);
        var tokens = new VisualToken[g * g];
        var x = new float[g * g]; var y = new float[g * g]; var w = new float[g * g]; var h = new float[g * g];
        for (int r = 0; r < g; r++)
            for (int c = 0; c < g; c++)
            {
                int v = r * g + c;
                tokens[v] = new VisualToken(0, r, c, c, r, c + 1, r + 1);
                x[v] = c + 0.5f; y[v] = r + 0.5f; w[v] = 1; h[v] = 1;
            }
        int[] sequence = [.. (cls ? new[] { SequenceState.ClsToken } : []), .. Enumerable.Range(0, g * g)];
        return new VisualTokenMap(g, g, [(g, g)], tokens, sequence, 1, g, new VisualGeometry(x, y, w, h, g, g));
    }

    /// <summary>
    /// One view of <paramref name="rows"/> × <paramref name="cols"/> tokens (row-major), each merging
    /// <paramref name="merge"/>² patches of a <paramref name="resizedWidth"/> × <paramref name="resizedHeight"/> resize of
    /// a <paramref name="imageWidth"/> × <paramref name="imageHeight"/> image (Qwen2.5-VL): geometry in original pixels.
    /// </summary>
    public static VisualTokenMap Grid(int rows, int cols, int merge, int imageWidth, int imageHeight, int resizedWidth, int resizedHeight)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(cols, 1);
        int n = rows * cols;
        float cw = (float)imageWidth / cols, ch = (float)imageHeight / rows;
        _ = resizedWidth; _ = resizedHeight; // the resize keeps the image's frame: a token's cell is its share of the original
        var tokens = new VisualToken[n];
        var x = new float[n]; var y = new float[n]; var w = new float[n]; var h = new float[n];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                int v = r * cols + c;
                tokens[v] = new VisualToken(0, r, c, c * cw, r * ch, (c + 1) * cw, (r + 1) * ch);
                x[v] = (c + 0.5f) * cw; y[v] = (r + 0.5f) * ch; w[v] = cw; h[v] = ch;
            }
        return new VisualTokenMap(imageWidth, imageHeight, [(rows, cols)], tokens, Enumerable.Range(0, n).ToArray(), merge, null,
            new VisualGeometry(x, y, w, h, imageWidth, imageHeight));
    }

    /// <summary>Several views with tokens placed by the caller (LLaVA-NeXT's base view and tiles).</summary>
    public static VisualTokenMap FromTokens(int imageWidth, int imageHeight, IReadOnlyList<(int Rows, int Cols)> views, VisualToken[] tokens, int[] sequence,
        VisualGeometry geometry)
        => new(imageWidth, imageHeight, views, tokens, sequence, 1, null, geometry);

    /// <summary>The tokens' areas as a report carries them (for explanations); null for LLaVA-1.5's square grid, whose report indexes the grid.</summary>
    public ImagePatchMap? ToReport()
        => SquareGrid is not null ? null
            : new(ImageWidth, ImageHeight, Views.Count, Tokens.Select(t => new PatchArea(t.View, t.Left, t.Top, t.Right, t.Bottom)).ToArray());
}

/// <summary>One visual token: its view, its cell there, and its area in the original image (pixels, clipped to the image).</summary>
internal readonly record struct VisualToken(int View, int Row, int Col, float Left, float Top, float Right, float Bottom);

/// <summary>
/// Where each visual token lies in the original image, for the selections that use geometry: its centre and the size of
/// its own cell there. Distances between tokens are measured in the size of the token they are measured from, so
/// "5 tokens" means 5 of that token's cells.
/// </summary>
internal sealed class VisualGeometry(float[] x, float[] y, float[] w, float[] h, int width, int height)
{
    /// <summary>Centre of each token, from the left.</summary>
    public float[] X { get; } = x;
    /// <summary>Centre of each token, from the top.</summary>
    public float[] Y { get; } = y;
    /// <summary>Width of each token's cell.</summary>
    public float[] W { get; } = w;
    /// <summary>Height of each token's cell.</summary>
    public float[] H { get; } = h;
    public int Width { get; } = width;
    public int Height { get; } = height;

    /// <summary>
    /// AdaptPrune's positional prior over the image: G = exp(-(u² + v²) / (8 f²)) with u, v the token's centre relative to
    /// the image's centre in half-widths and half-heights, normalised to max 1 over <paramref name="tokens"/>. On LLaVA-1.5's
    /// square grid this is the spec's exp(-(x² + y²) / (2 σ²)) with σ = f·g.
    /// </summary>
    public float[] PositionalPrior(ReadOnlySpan<int> tokens, double sigmaFactor)
    {
        var prior = new double[tokens.Length];
        double max = 0, twoS = 8 * sigmaFactor * sigmaFactor;
        for (int i = 0; i < tokens.Length; i++)
        {
            int v = tokens[i];
            if (v < 0) continue;
            double u = (X[v] - Width / 2.0) / (Width / 2.0), t = (Y[v] - Height / 2.0) / (Height / 2.0);
            prior[i] = Math.Exp(-(u * u + t * t) / twoS);
            max = Math.Max(max, prior[i]);
        }
        var result = new float[tokens.Length];
        for (int i = 0; i < result.Length; i++) result[i] = max > 0 ? (float)(prior[i] / max) : 0f;
        return result;
    }
}
