using AutoPrune.Compute;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;

namespace AutoPrune.Models.Llava;

/// <summary>
/// Where one visual patch token of a LLaVA-NeXT image came from.
/// </summary>
/// <param name="View">0 for the base view (the whole image at tile size), 1.. for the tiles, row-major.</param>
/// <param name="Row">Patch row inside its view (0..Grid-1).</param>
/// <param name="Col">Patch column inside its view.</param>
/// <param name="GridRow">Row in the unpadded, stitched tile grid (0..FeatureRows-1); for the base view, <paramref name="Row"/>.</param>
/// <param name="GridCol">Column in the unpadded tile grid; for the base view, <paramref name="Col"/>.</param>
/// <param name="Left">The patch's area in the original image, in its pixels (x from the left, y from the top), clipped to the image.</param>
internal readonly record struct PatchOrigin(int View, int Row, int Col, int GridRow, int GridCol, float Left, float Top, float Right, float Bottom);

/// <summary>
/// The bookkeeping of one LLaVA-NeXT image's tokens, for pruning policies and explanations: every visual patch with
/// its view, position and area in the original image; the image's tokens in prompt order, where each unpadded row of
/// the tile grid ends in an <c>image_newline</c> token (<see cref="SequenceState.NewlineRow"/>, not a patch); and each
/// view's vision-tower output, whose <see cref="VisionFeatures.ClsAttention"/> is that view's own [CLS] attention.
/// </summary>
internal sealed class AnyResTokenMap
{
    private AnyResTokenMap(AnyResLayout layout, PatchOrigin[] patches, int[] sequence, IReadOnlyList<VisionFeatures> views)
    {
        Layout = layout; Patches = patches; Sequence = sequence; Views = views;
    }

    public AnyResLayout Layout { get; }

    /// <summary>The visual patches, indexed by visual index: the base view's Grid² row-major, then the unpadded tile grid row-major.</summary>
    public IReadOnlyList<PatchOrigin> Patches { get; }

    /// <summary>
    /// The image's tokens in prompt order (<see cref="AnyResLayout.TokenCount"/> of them): a visual index (&gt;= 0, into
    /// <see cref="Patches"/>) or <see cref="SequenceState.NewlineRow"/> for an <c>image_newline</c> token.
    /// </summary>
    public IReadOnlyList<int> Sequence { get; }

    /// <summary>Per view (0 = base): the vision tower's output, [CLS] attention [Heads, Grid²] and patch keys included.</summary>
    public IReadOnlyList<VisionFeatures> Views { get; }

    private Pruning.VisualTokenMap? _map;

    /// <summary>Each patch's centre and size in the original image (the geometry pruning policies use).</summary>
    public Pruning.VisualGeometry Geometry => Map.Geometry;

    /// <summary>The image's visual tokens as pruning sees them (views, places, the run with its image_newline rows).</summary>
    public Pruning.VisualTokenMap Map => _map ??= Pruning.VisualTokenMap.FromTokens(Layout.ImageWidth, Layout.ImageHeight,
        [.. Enumerable.Repeat((Layout.Grid, Layout.Grid), Layout.Views)],
        Patches.Select(p => new Pruning.VisualToken(p.View, p.Row, p.Col, p.Left, p.Top, p.Right, p.Bottom)).ToArray(),
        [.. Sequence], AnyResGeometry.Create(this));

    /// <summary>The patches' areas as a report carries them (for explanations).</summary>
    public Pruning.ImagePatchMap ToReport() => Map.ToReport()!;

    /// <summary>Per patch: the mean over heads of its own view's [CLS] attention (at the vision tower's feature layer).</summary>
    public float[] ClsAttentionMean()
    {
        int g = Layout.Grid;
        var result = new float[Patches.Count];
        for (int i = 0; i < result.Length; i++)
        {
            var o = Patches[i];
            var view = Views[o.View];
            var cls = view.ClsAttention ?? throw new NotSupportedException("The method needs the vision tower's [CLS] attention, but this model's feature layer is the embedding layer.");
            float sum = 0;
            for (int h = 0; h < view.Heads; h++) sum += cls[h * view.Patches + o.Row * g + o.Col];
            result[i] = sum / view.Heads;
        }
        return result;
    }

    /// <summary>The map of an image with this layout whose views gave <paramref name="views"/>.</summary>
    public static AnyResTokenMap Create(AnyResLayout layout, IReadOnlyList<VisionFeatures> views)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(views);
        if (views.Count != layout.Views)
            throw new ArgumentException($"The layout has {layout.Views} views but {views.Count} vision outputs were given.", nameof(views));
        int g = layout.Grid;
        foreach (var v in views)
            if (v.Tokens != g * g)
                throw new ArgumentException($"A view has {v.Tokens} patch features; LLaVA-NeXT needs {g * g} (a {g}x{g} grid without [CLS]).", nameof(views));
        var patches = new PatchOrigin[layout.Patches];
        var sequence = new int[layout.TokenCount];
        int n = 0, s = 0;
        float w = layout.ImageWidth, h = layout.ImageHeight;
        for (int r = 0; r < g; r++)
            for (int c = 0; c < g; c++)
            {
                patches[n] = new PatchOrigin(0, r, c, r, c, c * w / g, r * h / g, (c + 1) * w / g, (r + 1) * h / g);
                sequence[s++] = n++;
            }
        // Tile patches: canvas pixels -> original pixels through the resize offset and scale.
        float sx = w / layout.ResizedWidth, sy = h / layout.ResizedHeight, p = layout.TileSize / (float)g;
        float X(float canvas) => Math.Clamp((canvas - layout.PadLeft) * sx, 0, w);
        float Y(float canvas) => Math.Clamp((canvas - layout.PadTop) * sy, 0, h);
        for (int gr = 0; gr < layout.FeatureRows; gr++)
        {
            int row = layout.FeatureRowStart + gr;
            for (int gc = 0; gc < layout.FeatureCols; gc++)
            {
                int col = layout.FeatureColStart + gc;
                int view = 1 + row / g * layout.TileCols + col / g;
                patches[n] = new PatchOrigin(view, row % g, col % g, gr, gc, X(col * p), Y(row * p), X((col + 1) * p), Y((row + 1) * p));
                sequence[s++] = n++;
            }
            sequence[s++] = SequenceState.NewlineRow;
        }
        return new AnyResTokenMap(layout, patches, sequence, views);
    }
}

/// <summary>
/// Where each patch of a LLaVA-NeXT image lies in the original image, for the policies that use geometry: its centre in
/// original pixels and the size of its own patch there (a base-view patch is a Grid-th of the image; a tile patch is
/// smaller, by the tiling's scale).
/// </summary>
internal static class AnyResGeometry
{
    public static Pruning.VisualGeometry Create(AnyResTokenMap map)
    {
        var l = map.Layout;
        int n = map.Patches.Count, g = l.Grid;
        float w = l.ImageWidth, h = l.ImageHeight;
        float sx = w / l.ResizedWidth, sy = h / l.ResizedHeight, p = l.TileSize / (float)g;
        var x = new float[n]; var y = new float[n]; var cw = new float[n]; var ch = new float[n];
        for (int i = 0; i < n; i++)
        {
            var o = map.Patches[i];
            if (o.View == 0)
            {
                x[i] = (o.Col + 0.5f) * w / g; y[i] = (o.Row + 0.5f) * h / g; cw[i] = w / g; ch[i] = h / g;
            }
            else
            {
                x[i] = ((l.FeatureColStart + o.GridCol + 0.5f) * p - l.PadLeft) * sx;
                y[i] = ((l.FeatureRowStart + o.GridRow + 0.5f) * p - l.PadTop) * sy;
                cw[i] = p * sx; ch[i] = p * sy;
            }
        }
        return new Pruning.VisualGeometry(x, y, cw, ch, l.ImageWidth, l.ImageHeight);
    }
}

/// <summary>
/// Turns a LLaVA-NeXT image's per-view vision features into its prompt tokens, the same way on every backend (the
/// backend only runs the tower and the projector): the base view's patches, then the tile grid stitched, unpadded and
/// projected, with the learned <c>image_newline</c> vector after each of its rows. The projector is row-wise, so the
/// padding rows are dropped before projecting rather than after.
/// </summary>
internal sealed class AnyResAssembler
{
    /// <summary>The checkpoint tensor (canonical name) holding the newline vector, [text hidden].</summary>
    public const string ImageNewlineTensor = "image_newline";

    private readonly float[] _newline;

    /// <summary>Reads <c>image_newline</c>; a checkpoint without it fails naming the tensor and file.</summary>
    public AnyResAssembler(ITensorSource store, int textHidden)
    {
        ArgumentNullException.ThrowIfNull(store);
        _newline = store.ReadFloat32(ImageNewlineTensor, textHidden);
    }

    public int Hidden => _newline.Length;

    /// <summary>Runs every view of a preprocessed image through the backend's vision tower (one batch on a GPU).</summary>
    public static VisionFeatures[] Encode(ILlavaBackend model, AnyResPixels pixels, CancellationToken ct = default)
        => model.VisionForwardViews(pixels.Pixels, pixels.Layout.Views, ct); // a GPU runs the views as one batch

    /// <summary>The image's projected tokens [TokenCount, Hidden] in prompt order, and their map.</summary>
    public (float[] Tokens, AnyResTokenMap Map) Assemble(ILlavaBackend model, AnyResLayout layout, IReadOnlyList<VisionFeatures> views)
    {
        var map = AnyResTokenMap.Create(layout, views);
        int vh = views[0].Hidden, g = layout.Grid, h = Hidden;
        if (model.Hidden != h) throw new ArgumentException($"image_newline has {h} values but the decoder's hidden size is {model.Hidden}.", nameof(model));
        int patches = map.Patches.Count;
        var gathered = new float[(long)patches * vh];
        for (int i = 0; i < patches; i++)
        {
            var o = map.Patches[i];
            views[o.View].Features.AsSpan((o.Row * g + o.Col) * vh, vh).CopyTo(gathered.AsSpan(i * vh, vh));
        }
        var projected = model.Project(gathered, patches);
        var tokens = new float[(long)layout.TokenCount * h];
        for (int t = 0; t < map.Sequence.Count; t++)
        {
            int code = map.Sequence[t];
            var src = code >= 0 ? projected.AsSpan(code * h, h) : _newline;
            src.CopyTo(tokens.AsSpan(t * h, h));
        }
        return (tokens, map);
    }
}

/// <summary>
/// What the vision tower made of one image (cached per image): one view for LLaVA-1.5; for LLaVA-NeXT the base view
/// and the tiles, with the layout they were cut by.
/// </summary>
internal sealed record EncodedImage(IReadOnlyList<VisionFeatures> Views, AnyResLayout? Layout)
{
    /// <summary>One more holder of the views' device buffers (a GPU backend's; nothing on the CPU).</summary>
    public void Retain()
    {
        foreach (var v in Views) v.Device?.Retain();
    }

    /// <summary>A holder is done with the views' device buffers; the last returns them to the pool.</summary>
    public void Release()
    {
        foreach (var v in Views) v.Device?.Release();
    }
}

/// <summary>
/// A loaded LLaVA-NeXT model's image path: preprocessing and token counts on the host, the tower per view on the
/// backend, the assembly into prompt tokens on the host again.
/// </summary>
internal sealed class AnyResPipeline(AnyResImageProcessor images, AnyResAssembler assembler)
{
    public AnyResImageProcessor Images { get; } = images;

    /// <summary>The most image tokens one image can take.</summary>
    public int MaxTokenCount => Images.Grid.MaxTokenCount;

    /// <summary>The image's token count, from its header alone (no pixel is decoded).</summary>
    public int TokenCount(ImageInput image) => Layout(image).TokenCount;

    /// <summary>The image's layout (views, tiles, unpadding), from its header alone.</summary>
    public AnyResLayout Layout(ImageInput image)
    {
        var (w, h) = image.Path is not null
            ? ImagePreprocessor.ReadSizeFile(image.Path, Images.MaxPixels, Images.MaxFileBytes)
            : Images.ReadSize(image.Bytes.Span);
        return Images.Plan(w, h);
    }

    /// <summary>
    /// Preprocesses an image from its encoded bytes (timed into <paramref name="preprocessMs"/>) and runs every view through
    /// the tower; <paramref name="ct"/> is checked between views and tower layers.
    /// </summary>
    public EncodedImage Encode(ILlavaBackend model, ReadOnlySpan<byte> encoded, string? path, ref double preprocessMs, CancellationToken ct = default)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var pixels = Images.Preprocess(encoded, path);
        preprocessMs += sw.Elapsed.TotalMilliseconds;
        return new EncodedImage(AnyResAssembler.Encode(model, pixels, ct), pixels.Layout);
    }

    /// <summary>The image's prompt tokens [TokenCount, Hidden] and their map.</summary>
    public (float[] Tokens, AnyResTokenMap Map) Assemble(ILlavaBackend model, EncodedImage image)
        => assembler.Assemble(model, image.Layout ?? throw new ArgumentException("The image was not encoded for LLaVA-NeXT.", nameof(image)), image.Views);
}
