using AutoPrune.Compute;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>The result of a prefill: the last position's logits and what decoding continues from.</summary>
/// <param name="RopeDelta">rope_deltas: a decode step at cache position c has position c + RopeDelta.</param>
internal sealed record Qwen2VLPrefill(float[] LastLogits, PositionIds Positions, int RopeDelta);

/// <summary>
/// A Qwen2.5-VL checkpoint on the CPU (fp32 compute on the stored fp16/bf16/fp32 weights): the vision tower, the splice of
/// its merged tokens into the prompt's <c>&lt;|image_pad|&gt;</c> rows, M-RoPE positions from
/// <see cref="Qwen2VLRopeIndex"/>, the Qwen2 decoder with a KV cache, and greedy decoding. Loads both key layouts
/// (<see cref="Qwen2VLTensorNames"/>), one file or sharded, tied or untied LM head; every tensor of the checkpoint must be
/// used (as transformers' strict loading). Not thread-safe per sequence; the weights are shared read-only.
/// <para>
/// Not the engine's forward: that is <see cref="Qwen2VLModel"/>, written once over the backend ops. This standalone fp32
/// forward (its own layers, no backend) stays as the independent reference the backend model is tested against, and as
/// the baseline of the benchmark that checks the seam is not slower.
/// </para>
/// </summary>
internal sealed class Qwen2VLCpuModel : IDisposable
{
    private readonly SafeTensorStore _store;

    private Qwen2VLCpuModel(Qwen2VLConfig config, SafeTensorStore store, Qwen2VLVisionTower vision, Qwen2Decoder decoder)
    {
        Config = config; _store = store; Vision = vision; Decoder = decoder;
    }

    public Qwen2VLConfig Config { get; }
    public Qwen2VLVisionTower Vision { get; }
    public Qwen2Decoder Decoder { get; }

    /// <summary>Loads config.json and the weights of a checkpoint folder.</summary>
    /// <exception cref="ModelLoadException">A file or tensor missing, of the wrong shape, or left over, named.</exception>
    public static Qwen2VLCpuModel Load(string folder, InputFileLimits? limits = null)
    {
        var config = Qwen2VLConfig.Load(folder, limits);
        var store = SafeTensorStore.Open(folder, limits, Qwen2VLTensorNames.ToCanonical);
        try
        {
            var vision = new Qwen2VLVisionTower(store, config.Vision);
            var decoder = new Qwen2Decoder(store, config.Text);
            var unused = store.UnusedTensors().Where(n => !(config.Text.TieWordEmbeddings && n == Qwen2VLTensorNames.LmHead)).ToList();
            if (unused.Count > 0)
                throw new ModelLoadException(
                    $"The checkpoint at '{store.Folder}' has {unused.Count} tensor(s) a Qwen2.5-VL model does not have: {string.Join(", ", unused.Take(10))}{(unused.Count > 10 ? ", ..." : "")} " +
                    "(names shown in the current transformers layout; config.json may not describe these weights).", store.Folder, unused[0]);
            return new Qwen2VLCpuModel(config, store, vision, decoder);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>The vision tower's merged tokens for <paramref name="images"/>, in prompt order ([Σ merged, hidden]).</summary>
    public float[] EncodeImages(IReadOnlyList<Qwen2VLImage> images, CancellationToken ct = default) => Vision.Forward(images, ct);

    /// <summary>A KV cache for a prompt of <paramref name="promptTokens"/> and up to <paramref name="newTokens"/> generated tokens.</summary>
    public Qwen2KvCache CreateCache(int promptTokens, int newTokens)
        => new(Decoder.Layers, Config.Text.KvDim, checked(promptTokens + Math.Max(0, newTokens)));

    /// <summary>
    /// Runs the prompt: token embeddings, the images' merged tokens in place of the <c>&lt;|image_pad|&gt;</c> rows (in
    /// order), M-RoPE positions, every decoder layer (filling <paramref name="cache"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The image tokens of the prompt and the images disagree.</exception>
    public Qwen2VLPrefill Prefill(int[] inputIds, IReadOnlyList<Qwen2VLImage> images, Qwen2KvCache cache, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        ArgumentNullException.ThrowIfNull(images);
        if (inputIds.Length == 0) throw new ArgumentException("The prompt has no tokens.", nameof(inputIds));
        if (cache.Length != 0) throw new ArgumentException("Prefill needs an empty KV cache.", nameof(cache));
        var (positions, delta) = Qwen2VLRopeIndex.Compute(inputIds, images.Select(i => i.Grid).ToArray(), Qwen2VLRopeIndex.TokenIds.Of(Config), Config.Vision.SpatialMergeSize);
        var x = Decoder.Embed(inputIds);
        if (images.Count > 0)
        {
            var visual = EncodeImages(images, ct);
            int h = Decoder.Hidden, row = 0, rows = visual.Length / h;
            for (int i = 0; i < inputIds.Length; i++)
            {
                if (inputIds[i] != Config.ImageTokenId) continue;
                if (row == rows) throw new ArgumentException($"The prompt has more image tokens than the images' {rows} merged tokens.", nameof(inputIds));
                visual.AsSpan(row++ * h, h).CopyTo(x.AsSpan(i * h, h));
            }
            if (row != rows) throw new ArgumentException($"The prompt has {row} image tokens but the images give {rows} merged tokens.", nameof(inputIds));
        }
        Decoder.Forward(x, inputIds.Length, positions, cache, ct);
        return new Qwen2VLPrefill(Decoder.Logits(x, inputIds.Length - 1), positions, delta);
    }

    /// <summary>One decode step: <paramref name="token"/> at the cache's next position (position = that + rope delta); its logits.</summary>
    public float[] DecodeStep(int token, int ropeDelta, Qwen2KvCache cache, CancellationToken ct = default)
    {
        int pos = Qwen2VLRopeIndex.DecodePosition(cache.Length, ropeDelta);
        var x = Decoder.Embed([token]);
        Decoder.Forward(x, 1, PositionIds.Sequential(1, Qwen2VLRopeIndex.Components, pos), cache, ct);
        return Decoder.Logits(x, 0);
    }

    /// <summary>
    /// Greedy decoding with the KV cache: the argmax of the prefill's logits, then of each step's (first index on ties,
    /// as torch.argmax), <paramref name="maxNewTokens"/> tokens, no stop token (the caller stops at EOS if it wants).
    /// </summary>
    public (int[] Ids, Qwen2VLPrefill Prefill) GenerateGreedy(int[] inputIds, IReadOnlyList<Qwen2VLImage> images, int maxNewTokens, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxNewTokens, 1);
        var cache = CreateCache(inputIds.Length, maxNewTokens - 1);
        var prefill = Prefill(inputIds, images, cache, ct);
        var ids = new int[maxNewTokens];
        var logits = prefill.LastLogits;
        for (int s = 0; s < maxNewTokens; s++)
        {
            ids[s] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
            if (s + 1 < maxNewTokens) logits = DecodeStep(ids[s], prefill.RopeDelta, cache, ct);
        }
        return (ids, prefill);
    }

    public void Dispose() => _store.Dispose();
}
