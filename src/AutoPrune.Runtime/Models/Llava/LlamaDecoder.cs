using System.Numerics.Tensors;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>The token sequence flowing through the decoder during prefill.</summary>
internal sealed class SequenceState
{
    private float[]? _hidden;
    private Func<float[]>? _hiddenSource;

    /// <summary>
    /// Hidden states [Length, Hidden]. On a GPU backend they live on the device; the first read after a layer copies
    /// them to the host (only policies that need them, e.g. token merging, pay for that).
    /// </summary>
    public float[] Hidden
    {
        get => _hidden ??= _hiddenSource?.Invoke() ?? throw new InvalidOperationException("The sequence has no hidden states.");
        set { _hidden = value; _hiddenSource = null; }
    }

    /// <summary>Marks the host copy stale: the next read of <see cref="Hidden"/> calls <paramref name="download"/>.</summary>
    public void HiddenOnDevice(Func<float[]> download) { _hidden = null; _hiddenSource = download; }

    public required int Length;
    /// <summary>RoPE position id of each row.</summary>
    public required int[] Positions;
    /// <summary>
    /// For each row: the original visual token index (&gt;= 0: 0..V-1 within its image, offset by the earlier images'
    /// counts; for LLaVA-NeXT an index into the image's <see cref="AnyResTokenMap.Patches"/>), <see cref="TextRow"/>,
    /// <see cref="MergedRow"/>, <see cref="NewlineRow"/> or <see cref="ClsToken"/>.
    /// </summary>
    public required int[] VisualIndex;

    /// <summary><see cref="VisualIndex"/> of a text token.</summary>
    public const int TextRow = -1;
    /// <summary><see cref="VisualIndex"/> of a token merged from several visual tokens (recycling, VisionZip's contextual tokens).</summary>
    public const int MergedRow = -2;
    /// <summary><see cref="VisualIndex"/> of a LLaVA-NeXT <c>image_newline</c> token: part of the image's run, but no patch.</summary>
    public const int NewlineRow = -3;
    /// <summary><see cref="VisualIndex"/> of the vision tower's [CLS] token (kept by <c>vision_feature_select_strategy: "full"</c>): a visual token with no patch of its own.</summary>
    public const int ClsToken = -4;

    /// <summary>
    /// Applies a prune to the row bookkeeping (positions, visual indices, length); the caller moves the hidden rows.
    /// Merged rows take the previous row's position (only renumbering policies merge).
    /// </summary>
    public void ApplyRows(PruneAction action)
    {
        int n = action.NewRows.Length;
        var pos = new int[n];
        var vis = new int[n];
        for (int i = 0; i < n; i++)
        {
            int r = action.NewRows[i];
            if (r >= 0) { pos[i] = Positions[r]; vis[i] = VisualIndex[r]; }
            else { pos[i] = i > 0 ? pos[i - 1] : 0; vis[i] = -2; }
        }
        if (action.RenumberPositions)
            for (int i = 0; i < n; i++) pos[i] = i;
        Positions = pos;
        VisualIndex = vis;
        Length = n;
    }
}

/// <summary>What a prefill hook (a pruning policy) may do after a layer: keep some rows and add merged ones.</summary>
internal sealed record PruneAction(
    /// <summary>New sequence, in order: a value i >= 0 takes current row i; a value -j-1 takes <see cref="ExtraRows"/> row j.</summary>
    int[] NewRows,
    /// <summary>Merged token hidden states [count, Hidden], or null.</summary>
    float[]? ExtraRows,
    /// <summary>Renumber positions 0..n-1 (PDrop, AutoPrune) instead of keeping the original ones (FastV, AdaptPrune).</summary>
    bool RenumberPositions);

/// <summary>Gives a hook what a layer computed, so it can ask for just the signals it needs (from any backend).</summary>
internal abstract class LayerView
{
    protected LayerView(int layer, SequenceState state, int heads, int kvHeads, int headDim, int layers)
    {
        Layer = layer; State = state; Heads = heads; KvHeads = kvHeads; HeadDim = headDim; Layers = layers;
    }
    public int Layer { get; }
    public SequenceState State { get; }
    public int Heads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public int Layers { get; }

    /// <summary>This layer's attention probabilities for the given query rows: [heads, rows, n].</summary>
    public abstract float[] AttentionRows(ReadOnlySpan<int> rows);

    /// <summary>The next layer's queries and keys (with its input norm and, optionally, RoPE) on the current output.</summary>
    public abstract (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true);
}

/// <summary>The CPU decoder's view: the layer's queries and keys are host arrays.</summary>
internal sealed class CpuLayerView : LayerView
{
    private readonly LlamaDecoder _decoder;
    internal CpuLayerView(LlamaDecoder decoder, int layer, SequenceState state, float[] queries, float[] keys)
        : base(layer, state, decoder.Heads, decoder.KvHeads, decoder.HeadDim, decoder.Layers)
    {
        _decoder = decoder; Queries = queries; Keys = keys;
    }
    /// <summary>The layer's queries and keys after RoPE, [n, heads*hd] and [n, kvHeads*hd].</summary>
    public float[] Queries { get; }
    public float[] Keys { get; }

    public override float[] AttentionRows(ReadOnlySpan<int> rows)
        => Attention.Rows(Queries, Keys, State.Length, State.Length, Heads, KvHeads, HeadDim, rows, causal: true);

    public override (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true)
        => _decoder.QueryKeys(Layer + 1, State.Hidden, State.Length, State.Positions, rope);
}

internal interface IPrefillHook
{
    /// <summary>Called after decoder layer <c>view.Layer</c> ran on all tokens that entered it.</summary>
    PruneAction? AfterLayer(LayerView view);
}

/// <summary>Llama decoder (prefix <c>language_model.model</c>) with RMSNorm, RoPE, GQA and SwiGLU.</summary>
internal sealed class LlamaDecoder
{
    private sealed class Layer
    {
        public required NormWeights InputNorm, PostNorm;
        public required Linear Q, K, V, O, Gate, Up, Down;
    }

    private readonly LlamaTextConfig _cfg;
    private readonly Layer[] _layers;
    private readonly float[] _embed; // [vocab, hidden]
    private readonly NormWeights _norm;
    private readonly Linear _lmHead;
    private readonly float[] _invFreq;

    public int Hidden => _cfg.HiddenSize;
    public int Heads => _cfg.NumAttentionHeads;
    public int KvHeads => _cfg.NumKeyValueHeads;
    public int HeadDim { get; }
    public int Layers => _layers.Length;
    public int Vocab => _cfg.VocabSize;
    public int Intermediate => _cfg.IntermediateSize;

    public LlamaDecoder(ITensorSource store, LlamaTextConfig cfg, bool tieEmbeddings, Action<double>? progress = null)
    {
        _cfg = cfg;
        HeadDim = cfg.HeadDim;
        int h = cfg.HiddenSize, qd = cfg.NumAttentionHeads * HeadDim, kvd = cfg.NumKeyValueHeads * HeadDim;
        float eps = (float)cfg.RmsNormEps;
        const string p = "language_model.model";
        _embed = store.ReadFloat32($"{p}.embed_tokens.weight", cfg.VocabSize, h);
        _layers = new Layer[cfg.NumHiddenLayers];
        for (int i = 0; i < _layers.Length; i++)
        {
            string lp = $"{p}.layers.{i}";
            _layers[i] = new Layer
            {
                InputNorm = NormWeights.LoadRmsNorm(store, lp + ".input_layernorm", h, eps),
                PostNorm = NormWeights.LoadRmsNorm(store, lp + ".post_attention_layernorm", h, eps),
                Q = Linear.Load(store, lp + ".self_attn.q_proj", h, qd, cfg.AttentionBias),
                K = Linear.Load(store, lp + ".self_attn.k_proj", h, kvd, cfg.AttentionBias),
                V = Linear.Load(store, lp + ".self_attn.v_proj", h, kvd, cfg.AttentionBias),
                O = Linear.Load(store, lp + ".self_attn.o_proj", qd, h, cfg.AttentionBias),
                Gate = Linear.Load(store, lp + ".mlp.gate_proj", h, cfg.IntermediateSize, cfg.MlpBias),
                Up = Linear.Load(store, lp + ".mlp.up_proj", h, cfg.IntermediateSize, cfg.MlpBias),
                Down = Linear.Load(store, lp + ".mlp.down_proj", cfg.IntermediateSize, h, cfg.MlpBias),
            };
            progress?.Invoke((i + 1.0) / _layers.Length);
        }
        _norm = NormWeights.LoadRmsNorm(store, $"{p}.norm", h, eps);
        _lmHead = tieEmbeddings && !store.Contains("language_model.lm_head.weight")
            ? new Linear(_embed, null, h, cfg.VocabSize)
            : Linear.Load(store, "language_model.lm_head", h, cfg.VocabSize, false);
        _invFreq = CpuOps.RopeInvFreq(HeadDim, cfg.RopeTheta);
    }

    /// <summary>Copies the embedding of each token id into <paramref name="dst"/> ([ids, hidden]).</summary>
    public void Embed(ReadOnlySpan<int> ids, Span<float> dst)
    {
        int h = Hidden;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if ((uint)id >= (uint)Vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary (size {Vocab}).");
            _embed.AsSpan(id * h, h).CopyTo(dst.Slice(i * h, h));
        }
    }

    internal (float[] Q, float[] K) QueryKeys(int layer, float[] hidden, int n, int[] positions, bool rope)
    {
        var L = _layers[layer];
        var xn = new float[n * Hidden];
        CpuOps.RmsNorm(hidden, xn, n, Hidden, L.InputNorm.Weight, L.InputNorm.Eps);
        var q = L.Q.Forward(xn, n);
        var k = L.K.Forward(xn, n);
        if (rope)
        {
            CpuOps.ApplyRope(q, n, Heads, HeadDim, positions, _invFreq);
            CpuOps.ApplyRope(k, n, KvHeads, HeadDim, positions, _invFreq);
        }
        return (q, k);
    }

    /// <summary>
    /// Runs the prompt through every layer, filling <paramref name="cache"/>; a hook may shrink the
    /// sequence between layers. Returns the logits at the last prompt position.
    /// </summary>
    public float[] Prefill(SequenceState state, KvCache cache, IPrefillHook? hook, CancellationToken ct, Action<int, int>? onLayer = null)
    {
        int h = Hidden, qd = Heads * HeadDim, kvd = KvHeads * HeadDim;
        for (int li = 0; li < _layers.Length; li++)
        {
            ct.ThrowIfCancellationRequested();
            var L = _layers[li];
            int n = state.Length;
            onLayer?.Invoke(li, n);
            var x = state.Hidden;
            var xn = new float[n * h];
            CpuOps.RmsNorm(x, xn, n, h, L.InputNorm.Weight, L.InputNorm.Eps);
            var q = new float[n * qd];
            var k = new float[n * kvd];
            var v = new float[n * kvd];
            L.Q.Forward(xn, n, q);
            L.K.Forward(xn, n, k);
            L.V.Forward(xn, n, v);
            CpuOps.ApplyRope(q, n, Heads, HeadDim, state.Positions, _invFreq);
            CpuOps.ApplyRope(k, n, KvHeads, HeadDim, state.Positions, _invFreq);
            cache.Init(li, k, v, n, kvd, state.Positions[n - 1] + 1);
            var att = new float[n * qd];
            Attention.MultiHead(q, k, v, att, n, n, Heads, KvHeads, HeadDim, causal: true);
            L.O.Forward(att, n, x, accumulate: true);
            CpuOps.RmsNorm(x, xn, n, h, L.PostNorm.Weight, L.PostNorm.Eps);
            var gate = new float[n * Intermediate];
            var up = new float[n * Intermediate];
            L.Gate.Forward(xn, n, gate);
            L.Up.Forward(xn, n, up);
            CpuOps.SiluMul(gate, up);
            L.Down.Forward(gate, n, x, accumulate: true);

            if (hook is not null && li < _layers.Length - 1)
            {
                var action = hook.AfterLayer(new CpuLayerView(this, li, state, q, k));
                if (action is not null) Apply(state, action);
            }
        }
        return Logits(state.Hidden.AsSpan((state.Length - 1) * h, h));
    }

    private void Apply(SequenceState state, PruneAction action)
    {
        int h = Hidden, n = action.NewRows.Length;
        var hidden = new float[n * h];
        var old = state.Hidden;
        for (int i = 0; i < n; i++)
        {
            int r = action.NewRows[i];
            var src = r >= 0 ? old.AsSpan(r * h, h) : action.ExtraRows!.AsSpan((-r - 1) * h, h);
            src.CopyTo(hidden.AsSpan(i * h, h));
        }
        state.ApplyRows(action);
        state.Hidden = hidden;
    }

    /// <summary>Runs one new token through every layer against the cache; returns its logits.</summary>
    public float[] DecodeStep(int tokenId, KvCache cache)
    {
        int h = Hidden, qd = Heads * HeadDim, kvd = KvHeads * HeadDim;
        var x = new float[h];
        Embed([tokenId], x);
        var xn = new float[h];
        var q = new float[qd];
        var k = new float[kvd];
        var v = new float[kvd];
        var att = new float[qd];
        var gate = new float[Intermediate];
        var up = new float[Intermediate];
        Span<int> pos = stackalloc int[1];
        for (int li = 0; li < _layers.Length; li++)
        {
            var L = _layers[li];
            var c = cache[li];
            CpuOps.RmsNorm(x, xn, 1, h, L.InputNorm.Weight, L.InputNorm.Eps);
            L.Q.Forward(xn, 1, q);
            L.K.Forward(xn, 1, k);
            L.V.Forward(xn, 1, v);
            pos[0] = c.NextPosition;
            CpuOps.ApplyRope(q, 1, Heads, HeadDim, pos, _invFreq);
            CpuOps.ApplyRope(k, 1, KvHeads, HeadDim, pos, _invFreq);
            cache.Append(li, k, v);
            Attention.MultiHead(q, c.Keys.AsSpan(0, c.Count * kvd), c.Values.AsSpan(0, c.Count * kvd), att, 1, c.Count, Heads, KvHeads, HeadDim, causal: false);
            L.O.Forward(att, 1, x, accumulate: true);
            CpuOps.RmsNorm(x, xn, 1, h, L.PostNorm.Weight, L.PostNorm.Eps);
            L.Gate.Forward(xn, 1, gate);
            L.Up.Forward(xn, 1, up);
            CpuOps.SiluMul(gate, up);
            L.Down.Forward(gate, 1, x, accumulate: true);
        }
        return Logits(x);
    }

    private float[] Logits(ReadOnlySpan<float> lastHidden)
    {
        var xn = new float[Hidden];
        CpuOps.RmsNorm(lastHidden, xn, 1, Hidden, _norm.Weight, _norm.Eps);
        return _lmHead.Forward(xn, 1);
    }
}
