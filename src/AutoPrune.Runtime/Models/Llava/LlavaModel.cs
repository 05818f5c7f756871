using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;
using AutoPrune.Models.Text;

namespace AutoPrune.Models.Llava;

/// <summary>The 2-layer MLP projector (<c>multi_modal_projector.linear_1/2</c>), written once over a backend.</summary>
internal sealed class MultiModalProjector
{
    private readonly Backend _b;
    private readonly LinearWeight _l1, _l2;
    private readonly ActivationFunction _act;

    public MultiModalProjector(Backend backend, ITensorSource store, int visionHidden, int textHidden, ActivationFunction act, bool bias)
    {
        _b = backend;
        _l1 = backend.LoadLinear(store, "multi_modal_projector.linear_1", visionHidden, textHidden, bias);
        _l2 = backend.LoadLinear(store, "multi_modal_projector.linear_2", textHidden, textHidden, bias);
        _act = act;
    }

    public int In => _l1.In;
    public int Out => _l2.Out;
    internal IEnumerable<LinearWeight> Linears => [_l1, _l2];

    /// <summary>Projects Float rows of vision features [rows, In] into a new Float tensor [rows, Out] the caller owns.</summary>
    public Tensor Forward(Tensor features, int rows)
    {
        int vh = In, th = Out;
        using var xH = _b.Allocate((long)rows * vh, TensorKind.Half);
        using var h1 = _b.Allocate((long)rows * th, TensorKind.Float);
        using var h1H = _b.Allocate((long)rows * th, TensorKind.Half);
        var y = _b.Allocate((long)rows * th, TensorKind.Float);
        try
        {
            _b.ToHalf(features.First((long)rows * vh), xH);
            _b.Linear(_l1, xH, rows, h1);
            _b.Activation(_act, h1);
            _b.ToHalf(h1, h1H);
            _b.Linear(_l2, h1H, rows, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }
}

/// <summary>
/// LLaVA (1.5 and NeXT): the CLIP tower, the projector and the Llama-style decoder, loaded from a Hugging Face folder onto
/// one <see cref="Compute.Backend"/> and written once over its ops. On the CPU the linear layers' weights stay in the
/// checkpoint's type, mapped from its files (kept open until the model is disposed); a GPU uploads them.
/// </summary>
internal sealed class LlavaModel : ILlavaBackend
{
    private readonly IDisposable? _mapping;
    private readonly bool _ownsBackend;

    public Backend Backend { get; }
    public LlavaConfig Config { get; }
    public ClipVisionTower Vision { get; }
    public MultiModalProjector Projector { get; }
    public TextDecoder Decoder { get; }

    /// <summary>The model on the CPU backend (fp32, or the GPU code path's arithmetic with <see cref="CpuPrecision.MatchDevice"/>).</summary>
    public LlavaModel(ITensorSource store, LlavaConfig config, Action<double>? progress = null, CpuPrecision precision = CpuPrecision.Fp32)
        : this(new CpuBackend(precision), store, config, progress, ownsBackend: true)
    {
    }

    /// <summary>The model on <paramref name="backend"/> (owned, and disposed with the model, when <paramref name="ownsBackend"/>).</summary>
    public LlavaModel(Backend backend, ITensorSource store, LlavaConfig config, Action<double>? progress = null, bool ownsBackend = true)
    {
        Backend = backend;
        Config = config;
        _ownsBackend = ownsBackend;
        _mapping = (store as SafeTensorStore)?.Retain();
        try
        {
            bool dropCls = config.VisionFeatureSelectStrategy == "default";
            Vision = new ClipVisionTower(backend, store, config.VisionConfig, config.ResolvedFeatureLayerIndex, dropCls);
            Projector = new MultiModalProjector(backend, store, config.VisionConfig.HiddenSize, config.TextConfig.HiddenSize,
                config.ProjectorActivation, config.MultimodalProjectorBias);
            progress?.Invoke(0.1);
            Decoder = new TextDecoder(backend, store, DecoderSpec(config), f => progress?.Invoke(0.1 + 0.85 * f));
            backend.Prepare(config.TextConfig.HeadDim, config.VisionConfig.HiddenSize / config.VisionConfig.NumAttentionHeads);
            progress?.Invoke(1.0);
        }
        catch
        {
            Vision?.Dispose();
            if (ownsBackend) backend.Dispose();
            _mapping?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The model on the CPU backend, or on <paramref name="gpu"/> (which it then owns: disposed with the model, or at once
    /// when the model cannot start).
    /// </summary>
    public static LlavaModel Create(ITensorSource store, LlavaConfig config, Compute.Cuda.CudaDevice? gpu, bool cudaGraphs = false,
        CpuPrecision precision = CpuPrecision.Fp32, Action<double>? progress = null)
    {
        if (gpu is null) return new LlavaModel(store, config, progress, precision);
        Compute.Cuda.CudaBackend backend;
        try { backend = new Compute.Cuda.CudaBackend(gpu, cudaGraphs); }
        catch { gpu.Dispose(); throw; }
        return new LlavaModel(backend, store, config, progress);
    }

    /// <summary>LLaVA's text model as the shared decoder sees it (tensor names, sizes, biases).</summary>
    internal static TextDecoderSpec DecoderSpec(LlavaConfig config)
    {
        var t = config.TextConfig;
        return new TextDecoderSpec("language_model.model", "language_model.lm_head", t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads,
            t.NumKeyValueHeads, t.HeadDim, t.IntermediateSize, t.VocabSize, (float)t.RmsNormEps, t.RopeTheta, t.MaxPositionEmbeddings,
            QkvBias: t.AttentionBias, OutputBias: t.AttentionBias, MlpBias: t.MlpBias, TieEmbeddings: config.TieWordEmbeddings || t.TieWordEmbeddings);
    }

    /// <summary>
    /// Tensors of <paramref name="store"/> nothing read, except those LLaVA never needs: the tower's post_layernorm and
    /// its layers past the feature layer.
    /// </summary>
    internal static IReadOnlyList<string> UnexpectedTensors(ITensorSource store, LlavaConfig config)
        => store.UnusedTensors()
            .Where(n => !n.StartsWith("vision_tower.vision_model.post_layernorm", StringComparison.Ordinal)
                     && !IsLaterVisionLayer(n, config.ResolvedFeatureLayerIndex))
            .ToList();

    private static bool IsLaterVisionLayer(string name, int featureLayer)
    {
        const string p = "vision_tower.vision_model.encoder.layers.";
        if (!name.StartsWith(p, StringComparison.Ordinal)) return false;
        var rest = name.AsSpan(p.Length);
        int dot = rest.IndexOf('.');
        return dot > 0 && int.TryParse(rest[..dot], out int idx) && idx >= featureLayer;
    }

    public string Device => Backend.Device;
    public Diagnostics.DeviceCounterSet? Counters => Backend.Counters;
    public int Grid => Vision.Grid;
    public int DecoderLayers => Decoder.Layers;

    /// <summary>Every signal, except the vision tower's attention and keys when its feature layer is the embedding layer.</summary>
    public Pruning.PruningSignals Signals => Config.ResolvedFeatureLayerIndex > 0 ? Pruning.PruningSignals.All
        : Pruning.PruningSignals.All & ~(Pruning.PruningSignals.VisionAttention | Pruning.PruningSignals.VisionKeys);
    public int Hidden => Decoder.Hidden;

    /// <summary>Number of visual tokens one image contributes.</summary>
    public int TokensPerImage => Vision.OutputTokens;

    public VisionFeatures VisionForward(ReadOnlySpan<float> pixels, CancellationToken ct = default) => Vision.Forward(pixels, ct);

    public VisionFeatures[] VisionForwardViews(ReadOnlySpan<float> pixels, int views, CancellationToken ct = default) => Vision.Forward(pixels, views, ct);

    /// <summary>Host features in, host rows out (an upload and a download on a GPU; the request path uses <see cref="ProjectImage"/>).</summary>
    public float[] Project(ReadOnlySpan<float> features, int rows)
    {
        int vh = Projector.In;
        if (features.Length != rows * vh)
            throw new ArgumentException($"Projector input has {features.Length} values; expected {rows} rows of {vh}.", nameof(features));
        using var scope = Backend.Enter();
        using var x = Backend.Allocate(Math.Max(1, features.Length), TensorKind.Float);
        Backend.Upload(features, x);
        using var y = Projector.Forward(x, rows);
        return Backend.Download(y).AsSpan(0, rows * Hidden).ToArray();
    }

    /// <summary>Projects Float vision features [rows, visionHidden] where the backend computes into rows it keeps there (owned by the caller).</summary>
    public Tensor Project(Tensor features, int rows)
    {
        using var scope = Backend.Enter();
        return Projector.Forward(features, rows);
    }

    /// <summary>The image's decoder rows, projected and kept where the backend computes.</summary>
    public ImageRows ProjectImage(VisionFeatures vision)
    {
        if (vision.FeaturesTensor is not { } features) return ImageRows.OnHost(Project(vision.Features, vision.Tokens), Hidden);
        using var scope = Backend.Enter();
        return ImageRows.OnBackend(Backend, Projector.Forward(features, vision.Tokens), null, vision.Tokens, Hidden);
    }

    public void Embed(ReadOnlySpan<int> ids, Span<float> dst) => Decoder.Embed(ids, dst);

    public IGeneration StartGeneration(int extraCapacity) => new DecoderGeneration(Decoder, Decoder.StartSession(extraCapacity));

    /// <summary>
    /// The prefill sequence, built where the backend computes: only the token ids (and image rows the host holds) go
    /// there; the embedding rows come from the backend's table and the image rows from the projector's output.
    /// <paramref name="visualIndices"/> names each image row's patch (default 0..n-1); <paramref name="given"/> each row's
    /// RoPE position when they are not 0..n-1 (a selection before the LLM that keeps the original positions).
    /// </summary>
    public SequenceState BuildSequence(ReadOnlySpan<int> ids, IReadOnlyList<ImageRows> images, IReadOnlyList<int[]>? visualIndices = null, PositionIds? given = null)
    {
        int n = ids.Length, h = Hidden;
        if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(ids));
        int cls = Config.DropClsToken ? 0 : 1;
        bool backendVisual = images.Any(i => i.Visual is not null);
        IReadOnlyList<int[]?>? known = backendVisual
            ? images.Select((img, i) => img.Visual is null ? visualIndices?[i] ?? DefaultVisual(i, img.Rows) : null).ToList()
            : (IReadOnlyList<int[]?>?)visualIndices;
        var (source, vis) = SequenceBuilder.Map(this, ids, images.Select(i => i.Rows).ToArray(), known);
        int imageRows = images.Sum(i => i.Rows);
        int firstImageRow = Array.FindIndex(source, s => s < 0);
        bool backendPositions = given is null && images.Count == 1 && images[0].OriginalPositions && images[0].Visual is not null && firstImageRow >= 0;
        if (given is not null && given.Count != n) throw new ArgumentException($"{given.Count} positions for a prompt of {n} rows.", nameof(given));
        var positions = given?.Validate();
        using var scope = Backend.Enter();
        Tensor? joined = null, imageVisual = null;
        BuiltSequence built;
        try
        {
            // The images' rows end to end (one image where the backend keeps it: used where it is).
            Tensor? rows = images.Count == 1 && images[0].Tensor is { } only ? only : null;
            if (rows is null && imageRows > 0)
            {
                rows = joined = Backend.Allocate((long)imageRows * h, TensorKind.Float);
                long at = 0;
                foreach (var img in images)
                {
                    var dst = joined.Slice(at, (long)img.Rows * h);
                    if (img.Tensor is { } t) Backend.Copy(t.First((long)img.Rows * h), dst);
                    else Backend.Upload(img.ToHost().AsSpan(0, img.Rows * h), dst);
                    at += (long)img.Rows * h;
                }
            }
            // Each image row's visual index, unless it is simply the row number (one image of patches only): from the
            // backend (VisionZip chose the rows there) or the host.
            if (backendVisual || visualIndices is not null || images.Count != 1 || cls != 0)
            {
                imageVisual = Backend.Allocate(Math.Max(1, imageRows), TensorKind.Int);
                int at = 0;
                for (int i = 0; i < images.Count; i++)
                {
                    var dst = imageVisual.Slice(at, images[i].Rows);
                    if (images[i].Visual is { } v) Backend.Copy(v.First(images[i].Rows), dst);
                    else Backend.Upload(visualIndices?[i] ?? DefaultVisual(i, images[i].Rows), dst);
                    at += images[i].Rows;
                }
            }
            built = Backend.BuildSequence(Decoder.Embedding, rows, source, vis, imageVisual, positions,
                backendPositions ? new OriginalPositionRun(firstImageRow, imageRows, TokensPerImage, cls) : null);
        }
        finally
        {
            joined?.Dispose();
            imageVisual?.Dispose();
        }
        var hostPositions = positions ?? PositionIds.Sequential(n);
        // With positions computed by the backend the host knows the last one when text follows the image (it always does
        // in a prompt); else the full run's end bounds it.
        int textAfter = n - firstImageRow - imageRows;
        int lastPosition = !backendPositions ? hostPositions.MaxAt(n - 1)
            : textAfter > 0 ? firstImageRow + TokensPerImage + textAfter - 1 : firstImageRow + TokensPerImage - 1;
        built = new BuiltSequence(built.Hidden, built.Positions, built.Visual, n) { LastPosition = lastPosition };
        var state = new SequenceState { Length = n, Positions = hostPositions, VisualIndex = vis ?? new int[n], Built = built };
        if (vis is null)
        {
            // Only the backend knows which patches the rows are (VisionZip chose them there): the report reads them back at the end.
            int prefix = firstImageRow;
            int run = 0;
            for (int i = prefix; i >= 0 && i < n && source[i] < 0; i++) run++;
            state.AppliedOnDevice(n, run, () => (backendPositions ? PositionIds.OneComponent(Backend.DownloadInts(built.Positions)) : hostPositions,
                Backend.DownloadInts(built.Visual)), newVersion: false);
        }
        state.HiddenOnDevice(() => Backend.Download(built.Hidden));
        return state;

        // Image i's rows by default: its [CLS] first with the "full" strategy, then its patches after the earlier images'.
        int[] DefaultVisual(int image, int count)
        {
            int patches = TokensPerImage - cls;
            var r = new int[count];
            for (int j = 0; j < count; j++) r[j] = j < cls ? SequenceState.ClsToken : image * patches + j - cls;
            return r;
        }
    }

    /// <summary>Unmaps the checkpoint's files and frees the backend (the model must not be used afterwards).</summary>
    public void Dispose()
    {
        Vision.Dispose();
        if (_ownsBackend) Backend.Dispose();
        _mapping?.Dispose();
    }
}

/// <summary>Builds prefill sequences for any backend.</summary>
internal static class SequenceBuilder
{
    /// <summary>Positions given for a prompt: one per row, non-negative and increasing.</summary>
    public static int[] CheckedPositions(int[] positions, int rows)
    {
        if (positions.Length != rows) throw new ArgumentException($"{positions.Length} positions for a prompt of {rows} rows.", nameof(positions));
        for (int i = 0; i < rows; i++)
            if (positions[i] < 0 || (i > 0 && positions[i] < positions[i - 1]))
                throw new ArgumentException($"Position {positions[i]} of row {i} is negative or below the row before it.", nameof(positions));
        return positions;
    }

    /// <summary>
    /// Where each prompt row comes from: source[i] &gt;= 0 is the token id to embed, source[i] = -r - 1 takes row r of the
    /// images' rows laid end to end; and each row's visual index (-1 for text; null when <paramref name="imageRows"/>'s
    /// visual indices are given by <paramref name="visualIndices"/> = null for an image whose indices only the device knows).
    /// Checks that the image-token runs match the images' row counts.
    /// </summary>
    public static (int[] Source, int[]? Visual) Map(ILlavaBackend model, ReadOnlySpan<int> ids, IReadOnlyList<int> imageRows, IReadOnlyList<int[]?>? visualIndices = null)
    {
        int n = ids.Length, imageToken = model.Config.ImageTokenIndex;
        int per = imageRows.Count > 0 ? imageRows[0] : model.TokensPerImage;
        // "full": each image's tokens start with the vision tower's [CLS]; the patches follow in grid order.
        int cls = model.Config.DropClsToken ? 0 : 1, patches = model.TokensPerImage - cls;
        var source = new int[n];
        var vis = new int[n];
        bool visKnown = true;
        int image = 0, inImage = 0, rowBase = 0;
        for (int i = 0; i < n; i++)
        {
            if (ids[i] == imageToken)
            {
                if (image >= imageRows.Count)
                    throw new ArgumentException($"The prompt has more <image> tokens than the {imageRows.Count} image(s) given supply ({per} tokens each).");
                source[i] = -(rowBase + inImage) - 1;
                if (visualIndices is null) vis[i] = inImage < cls ? SequenceState.ClsToken : image * patches + inImage - cls;
                else if (visualIndices[image] is { } v) vis[i] = v[inImage];
                else visKnown = false;
                if (++inImage == per)
                {
                    rowBase += per;
                    inImage = 0;
                    image++;
                    if (image < imageRows.Count) per = imageRows[image];
                }
            }
            else
            {
                if (inImage != 0)
                    throw new ArgumentException($"Image {image} has only {inImage} of its {per} <image> tokens in the prompt.");
                if ((uint)ids[i] >= (uint)model.Config.TextConfig.VocabSize)
                    throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {ids[i]} is outside the vocabulary (size {model.Config.TextConfig.VocabSize}).");
                source[i] = ids[i];
                vis[i] = -1;
            }
        }
        if (inImage != 0 || image != imageRows.Count)
            throw new ArgumentException($"The prompt holds {image} image(s)' worth of <image> tokens but {imageRows.Count} image(s) were given.");
        return (source, visKnown ? vis : null);
    }
}
