using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using AutoPrune.Models.Text;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL on one <see cref="Compute.Backend"/>, written once over its ops: the vision tower and PatchMerger
/// (<see cref="Qwen2VLVisionEncoder"/>), and the Qwen2 decoder as the shared <see cref="TextDecoder"/> (q/k/v biases, no
/// o or MLP bias, GQA, M-RoPE by <c>mrope_section</c>, tied or untied LM head). Images become merged tokens kept on the
/// backend; a prompt's sequence is the token embeddings with those tokens spliced in at the <c>&lt;|image_pad|&gt;</c>
/// rows, positioned by <see cref="Qwen2VLRopeIndex"/> (3 components); decoding continues at the last prompt row's
/// largest position + 1 (rope_deltas), which the backends' sessions set. On the CPU the weights stay in the checkpoint's
/// type, mapped from its files (kept open until the model is disposed); a GPU uploads them as fp16.
/// </summary>
internal sealed class Qwen2VLModel : IDisposable
{
    private readonly IDisposable? _mapping;
    private readonly bool _ownsBackend;

    public Backend Backend { get; }
    public Qwen2VLConfig Config { get; }
    public Qwen2VLVisionEncoder Vision { get; }
    public TextDecoder Decoder { get; }

    /// <summary>The model on <paramref name="backend"/> (disposed with the model when <paramref name="ownsBackend"/>).</summary>
    /// <param name="source">Weights by canonical name (<see cref="Qwen2VLTensorNames"/>): a checkpoint or generated ones.</param>
    public Qwen2VLModel(Backend backend, ITensorSource source, Qwen2VLConfig config, Action<double>? progress = null, bool ownsBackend = true)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(config);
        Backend = backend;
        Config = config;
        _ownsBackend = ownsBackend;
        _mapping = (source as SafeTensorStore)?.Retain();
        try
        {
            Vision = new Qwen2VLVisionEncoder(backend, source, config.Vision);
            progress?.Invoke(0.15);
            // Tied: transformers points lm_head at the embeddings, so a stored lm_head.weight is ignored (and not read).
            var decoderSource = config.Text.TieWordEmbeddings ? new WithoutTensor(source, Qwen2VLTensorNames.LmHead) : source;
            Decoder = new TextDecoder(backend, decoderSource, DecoderSpec(config), f => progress?.Invoke(0.15 + 0.8 * f));
            backend.Prepare(config.Text.HeadDim, config.Vision.HeadDim);
            progress?.Invoke(1.0);
        }
        catch
        {
            if (ownsBackend) backend.Dispose();
            _mapping?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads config.json and the weights of a checkpoint folder (either key layout, one file or sharded) onto
    /// <paramref name="backend"/> (the fp32 CPU backend when null; the model owns it); every tensor must be used.
    /// </summary>
    /// <exception cref="ModelLoadException">A file or tensor missing, of the wrong shape, or left over, named.</exception>
    public static Qwen2VLModel Load(string folder, Backend? backend = null, InputFileLimits? limits = null, Action<double>? progress = null)
    {
        var config = Qwen2VLConfig.Load(folder, limits);
        backend ??= new CpuBackend();
        SafeTensorStore store;
        try { store = SafeTensorStore.Open(folder, limits, Qwen2VLTensorNames.ToCanonical); }
        catch { backend.Dispose(); throw; }
        using (store)
        {
            var model = new Qwen2VLModel(backend, store, config, progress);
            var unused = store.UnusedTensors().Where(n => !(config.Text.TieWordEmbeddings && n == Qwen2VLTensorNames.LmHead)).ToList();
            if (unused.Count == 0) return model;
            model.Dispose();
            throw new ModelLoadException(
                $"The checkpoint at '{store.Folder}' has {unused.Count} tensor(s) a Qwen2.5-VL model does not have: {string.Join(", ", unused.Take(10))}{(unused.Count > 10 ? ", ..." : "")} " +
                "(names shown in the current transformers layout; config.json may not describe these weights).", store.Folder, unused[0]);
        }
    }

    /// <summary>Qwen2.5-VL's language model as the shared decoder sees it: canonical names, q/k/v biases only, M-RoPE sections.</summary>
    internal static TextDecoderSpec DecoderSpec(Qwen2VLConfig config)
    {
        var t = config.Text;
        return new TextDecoderSpec(Qwen2VLTensorNames.Language.TrimEnd('.'), Qwen2VLTensorNames.LmHead[..^".weight".Length],
            t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.IntermediateSize, t.VocabSize,
            (float)t.RmsNormEps, t.RopeTheta, t.MaxPositionEmbeddings, QkvBias: true, OutputBias: false, MlpBias: false,
            TieEmbeddings: t.TieWordEmbeddings, RopeSections: t.MropeSection);
    }

    public string Device => Backend.Device;
    public Diagnostics.DeviceCounterSet? Counters => Backend.Counters;
    public int Hidden => Decoder.Hidden;
    public int DecoderLayers => Decoder.Layers;

    /// <summary>The images' merged tokens (prompt order), kept on the backend; with <paramref name="receivedAttention"/> also the attention each receives in the last full-attention block.</summary>
    public Qwen2VLImageTokens EncodeImages(IReadOnlyList<Qwen2VLImage> images, bool receivedAttention = false, CancellationToken ct = default)
        => Vision.Encode(images, receivedAttention, ct);

    /// <summary>
    /// The prompt's sequence, built where the backend computes: the token embeddings with the images' merged tokens at the
    /// <c>&lt;|image_pad|&gt;</c> rows (in order), each image row's visual index (its merged token, counted across the
    /// images), and the M-RoPE positions [3, n] of <see cref="Qwen2VLRopeIndex"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The image tokens of the prompt and the images disagree, or an id is outside the vocabulary.</exception>
    public SequenceState BuildSequence(ReadOnlySpan<int> ids, Qwen2VLImageTokens? images)
    {
        int n = ids.Length, imageToken = Config.ImageTokenId, vocab = Config.Text.VocabSize;
        if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(ids));
        if (images is not null && images.Hidden != Hidden)
            throw new ArgumentException($"The image tokens are {images.Hidden} wide; the decoder's rows are {Hidden}.", nameof(images));
        var (positions, _) = Qwen2VLRopeIndex.Compute(ids, images?.Grids ?? [], Qwen2VLRopeIndex.TokenIds.Of(Config), Config.Vision.SpatialMergeSize);
        var source = new int[n];
        var visual = new int[n];
        int row = 0, available = images?.Count ?? 0;
        for (int i = 0; i < n; i++)
        {
            int id = ids[i];
            if (id == imageToken)
            {
                if (row == available)
                    throw new ArgumentException($"The prompt has more image tokens than the images' {available} merged tokens.", nameof(ids));
                visual[i] = row;
                source[i] = -(row++) - 1;
            }
            else
            {
                if ((uint)id >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} (position {i}) is outside the vocabulary (size {vocab}).");
                source[i] = id;
                visual[i] = SequenceState.TextRow;
            }
        }
        if (row != available)
            throw new ArgumentException($"The prompt has {row} image tokens but the images give {available} merged tokens.", nameof(ids));
        using var scope = Backend.Enter();
        var built = Backend.BuildSequence(Decoder.Embedding, images?.Tokens, source, visual, null, positions);
        var state = new SequenceState { Length = n, Positions = positions, VisualIndex = visual, Built = built };
        state.HiddenOnDevice(() => Backend.Download(built.Hidden));
        return state;
    }

    /// <summary>One request's decoding (a KV cache with room for <paramref name="extraCapacity"/> generated tokens per layer).</summary>
    public IGeneration StartGeneration(int extraCapacity) => new DecoderGeneration(Decoder, Decoder.StartSession(extraCapacity));

    /// <summary>Unmaps the checkpoint's files and frees the backend (the model must not be used afterwards).</summary>
    public void Dispose()
    {
        if (_ownsBackend) Backend.Dispose();
        _mapping?.Dispose();
    }

    /// <summary>A tensor source that does not hold one name (a tied LM head's stored copy).</summary>
    private sealed class WithoutTensor(ITensorSource inner, string hidden) : ITensorSource
    {
        public bool Contains(string name) => name != hidden && inner.Contains(name);
        public float[] ReadFloat32(string name, params long[] expectedShape) => inner.ReadFloat32(name, expectedShape);
        public Half[] ReadFloat16(string name, params long[] expectedShape) => inner.ReadFloat16(name, expectedShape);
        public WeightData ReadWeight(string name, params long[] expectedShape) => inner.ReadWeight(name, expectedShape);
        public IReadOnlyList<string> UnusedTensors() => inner.UnusedTensors();
    }
}
