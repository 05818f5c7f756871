using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>The 2-layer MLP projector (<c>multi_modal_projector.linear_1/2</c>).</summary>
internal sealed class MultiModalProjector
{
    private readonly Linear _l1, _l2;
    private readonly ActivationFunction _act;
    private readonly bool _matchDevice;

    public MultiModalProjector(ITensorSource store, int visionHidden, int textHidden, ActivationFunction act, bool bias, bool matchDevice = false)
    {
        _matchDevice = matchDevice;
        _l1 = Linear.Load(store, "multi_modal_projector.linear_1", visionHidden, textHidden, bias);
        _l2 = Linear.Load(store, "multi_modal_projector.linear_2", textHidden, textHidden, bias);
        _act = act;
    }

    internal IEnumerable<Linear> Linears => [_l1, _l2];

    public float[] Forward(ReadOnlySpan<float> x, int rows)
    {
        bool md = _matchDevice;
        var h = _l1.Forward(md ? DeviceNumerics.HalfCopy(x) : x, rows, md);
        CpuOps.Activation(_act, h, md);
        if (md) DeviceNumerics.RoundToHalf(h);
        return _l2.Forward(h, rows, md);
    }
}

/// <summary>
/// LLaVA: CLIP tower + projector + Llama decoder, loaded from a Hugging Face folder. The linear layers' weights stay in
/// the checkpoint's type (fp16/bf16: 2 bytes per weight), mapped from its files, which the model keeps open until it
/// is disposed.
/// </summary>
internal sealed class LlavaModel : ILlavaBackend
{
    private readonly IDisposable? _mapping;

    public LlavaConfig Config { get; }
    public ClipVisionTower Vision { get; }
    public MultiModalProjector Projector { get; }
    public LlamaDecoder Decoder { get; }

    /// <param name="precision">fp32 activations (the default), or the CUDA code path's arithmetic (<see cref="CpuPrecision.MatchDevice"/>).</param>
    public LlavaModel(ITensorSource store, LlavaConfig config, Action<double>? progress = null, CpuPrecision precision = CpuPrecision.Fp32)
    {
        Config = config;
        bool md = precision == CpuPrecision.MatchDevice;
        _mapping = (store as SafeTensorStore)?.Retain();
        bool dropCls = config.VisionFeatureSelectStrategy == "default";
        Vision = new ClipVisionTower(store, config.VisionConfig, config.ResolvedFeatureLayerIndex, dropCls, md);
        Projector = new MultiModalProjector(store, config.VisionConfig.HiddenSize, config.TextConfig.HiddenSize,
            config.ProjectorActivation, config.MultimodalProjectorBias, md);
        progress?.Invoke(0.1);
        Decoder = new LlamaDecoder(store, config.TextConfig, config.TieWordEmbeddings || config.TextConfig.TieWordEmbeddings,
            f => progress?.Invoke(0.1 + 0.9 * f), md);
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

    public string Device => "cpu";
    public int Grid => Vision.Grid;
    public int DecoderLayers => Decoder.Layers;
    public int Hidden => Decoder.Hidden;
    public VisionFeatures VisionForward(ReadOnlySpan<float> pixels, CancellationToken ct = default) => Vision.Forward(pixels, ct);
    public float[] Project(ReadOnlySpan<float> features, int rows) => Projector.Forward(features, rows);
    public void Embed(ReadOnlySpan<int> ids, Span<float> dst) => Decoder.Embed(ids, dst);
    public IGeneration StartGeneration(int extraCapacity) => new CpuGeneration(Decoder, extraCapacity);
    /// <summary>Unmaps the checkpoint's files (the model must not be used afterwards).</summary>
    public void Dispose()
    {
        Decoder.Memory.Dispose();
        _mapping?.Dispose();
    }

    private static bool IsLaterVisionLayer(string name, int featureLayer)
    {
        const string p = "vision_tower.vision_model.encoder.layers.";
        if (!name.StartsWith(p, StringComparison.Ordinal)) return false;
        var rest = name.AsSpan(p.Length);
        int dot = rest.IndexOf('.');
        return dot > 0 && int.TryParse(rest[..dot], out int idx) && idx >= featureLayer;
    }

    /// <summary>Number of visual tokens one image contributes.</summary>
    public int TokensPerImage => Vision.OutputTokens;

    /// <summary>Projected visual tokens [TokensPerImage, textHidden] for a vision output.</summary>
    public ImageRows ProjectImage(VisionFeatures f) => ImageRows.OnHost(Projector.Forward(f.Features, f.Tokens), Hidden);

    /// <summary>Builds the prefill sequence (see <see cref="SequenceBuilder.Build"/>).</summary>
    public SequenceState BuildSequence(ReadOnlySpan<int> ids, IReadOnlyList<ImageRows> images, IReadOnlyList<int[]>? visualIndices = null, int[]? positions = null)
    {
        var state = SequenceBuilder.Build(this, ids, images.Select(i => i.ToHost()).ToList(), visualIndices);
        if (positions is not null) state.Positions = SequenceBuilder.CheckedPositions(positions, ids.Length);
        return state;
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
    /// Builds the prefill sequence: token embeddings with each image's projected tokens spliced in at its
    /// placeholder run. Each image's run is as long as its projected rows (VisionZip gives fewer);
    /// <paramref name="visualIndices"/> names each row's original patch (-2 for a merged token), default 0..n-1.
    /// </summary>
    public static SequenceState Build(ILlavaBackend model, ReadOnlySpan<int> ids, IReadOnlyList<float[]> projectedImages, IReadOnlyList<int[]>? visualIndices = null)
    {
        int h = model.Hidden, n = ids.Length;
        var (source, vis) = Map(model, ids, projectedImages.Select(p => p.Length / h).ToArray(), visualIndices);
        var rowsOf = new List<(int Image, int Row)>();
        for (int i = 0; i < projectedImages.Count; i++)
            for (int r = 0; r < projectedImages[i].Length / h; r++) rowsOf.Add((i, r));
        var hidden = new float[n * h];
        for (int i = 0; i < n; i++)
        {
            if (source[i] >= 0) model.Embed(ids.Slice(i, 1), hidden.AsSpan(i * h, h));
            else
            {
                var (image, row) = rowsOf[-source[i] - 1];
                projectedImages[image].AsSpan(row * h, h).CopyTo(hidden.AsSpan(i * h, h));
            }
        }
        var pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = i;
        return new SequenceState { Hidden = hidden, Length = n, Positions = pos, VisualIndex = vis! };
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
