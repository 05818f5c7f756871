using System.Numerics.Tensors;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

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

    /// <summary>The decoder's linear layers and the LM head (their weights as the checkpoint stores them).</summary>
    internal IEnumerable<Linear> Linears => _layers.SelectMany(l => new[] { l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down }).Append(_lmHead);
    private readonly WeightData _embed; // [vocab, hidden], as stored
    private readonly NormWeights _norm;
    private readonly Linear _lmHead;
    private readonly float[] _invFreq;
    private readonly bool _md; // compute as the CUDA code path does (CpuPrecision.MatchDevice)

    public int Hidden => _cfg.HiddenSize;
    public int Heads => _cfg.NumAttentionHeads;
    public int KvHeads => _cfg.NumKeyValueHeads;
    public int HeadDim { get; }
    public int Layers => _layers.Length;
    public int Vocab => _cfg.VocabSize;
    public int Intermediate => _cfg.IntermediateSize;

    /// <summary>Where requests' KV caches and the prefill's working rows come from and go back to (freed with the model).</summary>
    internal HostMemoryPool Memory { get; } = new();

    public LlamaDecoder(ITensorSource store, LlamaTextConfig cfg, bool tieEmbeddings, Action<double>? progress = null, bool matchDevice = false)
    {
        _cfg = cfg;
        _md = matchDevice;
        HeadDim = cfg.HeadDim;
        int h = cfg.HiddenSize, qd = cfg.NumAttentionHeads * HeadDim, kvd = cfg.NumKeyValueHeads * HeadDim;
        float eps = (float)cfg.RmsNormEps;
        const string p = "language_model.model";
        _embed = store.ReadWeight($"{p}.embed_tokens.weight", cfg.VocabSize, h);
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
            _embed.CopyTo(id * h, dst.Slice(i * h, h));
        }
    }

    internal (float[] Q, float[] K) QueryKeys(int layer, float[] hidden, int n, int[] positions, bool rope)
    {
        var L = _layers[layer];
        var xn = new float[n * Hidden];
        NormInto(hidden, xn, n, L.InputNorm);
        var q = L.Q.Forward(xn, n, _md);
        var k = L.K.Forward(xn, n, _md);
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
        int h = Hidden, qd = Heads * HeadDim, kvd = KvHeads * HeadDim, n0 = state.Length;
        // One set of working buffers for the whole prompt, reused by every layer (a prune only shortens the rows in use):
        // a 7B prompt would otherwise leave gigabytes of per-layer garbage on the large-object heap.
        // q and k stay managed arrays: a pruning hook's layer view may hold on to them.
        var q = new float[n0 * qd];
        var k = new float[n0 * kvd];
        using var xnBuf = Memory.Rent((long)n0 * h);
        using var vBuf = Memory.Rent((long)n0 * kvd);
        using var attBuf = Memory.Rent((long)n0 * qd);
        using var gateBuf = Memory.Rent((long)n0 * Intermediate);
        using var upBuf = Memory.Rent((long)n0 * Intermediate);
        for (int li = 0; li < _layers.Length; li++)
        {
            ct.ThrowIfCancellationRequested();
            var L = _layers[li];
            int n = state.Length;
            if (n > n0) throw new InvalidOperationException($"A prune lengthened the sequence from {n0} to {n} rows.");
            onLayer?.Invoke(li, n);
            var x = state.Hidden;
            Span<float> xn = xnBuf.Span, v = vBuf.Span, att = attBuf.Span;
            NormInto(x, xn, n, L.InputNorm);
            L.Q.Forward(xn, n, q, matchDevice: _md);
            L.K.Forward(xn, n, k, matchDevice: _md);
            L.V.Forward(xn, n, v, matchDevice: _md);
            CpuOps.ApplyRope(q, n, Heads, HeadDim, state.Positions, _invFreq);
            CpuOps.ApplyRope(k, n, KvHeads, HeadDim, state.Positions, _invFreq);
            // The device keeps fp32 q and k for the policies and fp16 ones for attention and the cache.
            var (qa, ka) = _md ? (DeviceNumerics.HalfCopy(q.AsSpan(0, n * qd)), DeviceNumerics.HalfCopy(k.AsSpan(0, n * kvd))) : (q, k);
            if (_md) DeviceNumerics.RoundToHalf(v[..(n * kvd)]);
            cache.Init(li, ka, v, n, kvd, state.Positions[n - 1] + 1);
            Attention.MultiHead(qa.AsSpan(0, n * qd), ka.AsSpan(0, n * kvd), v[..(n * kvd)], att[..(n * qd)], n, n, Heads, KvHeads, HeadDim, causal: true, _md);
            L.O.Forward(att[..(n * qd)], n, x, accumulate: true, _md);
            NormInto(x, xn, n, L.PostNorm);
            Mlp(L, xn, n, gateBuf.Span, upBuf.Span, x);

            if (hook is not null && li < _layers.Length - 1)
            {
                // The view's arrays hold exactly the layer's rows (copies only once a prune has shortened the sequence).
                var action = hook.AfterLayer(new CpuLayerView(this, li, state, n == n0 ? q : q[..(n * qd)], n == n0 ? k : k[..(n * kvd)]));
                if (action is not null) Apply(state, action);
            }
        }
        return Logits(state.Hidden.AsSpan((state.Length - 1) * h, h));
    }

    /// <summary>RMSNorm of n rows into xn (the GEMM input: fp16 on the device).</summary>
    private void NormInto(ReadOnlySpan<float> x, Span<float> xn, int n, NormWeights norm)
    {
        CpuOps.RmsNorm(x, xn, n, Hidden, norm.Weight, norm.Eps, _md);
        if (_md) DeviceNumerics.RoundToHalf(xn.Slice(0, n * Hidden));
    }

    /// <summary>x += down(silu(gate(xn)) · up(xn)) over n rows; on the device gate, up and their product are fp16.</summary>
    private void Mlp(Layer L, ReadOnlySpan<float> xn, int n, Span<float> gate, Span<float> up, Span<float> x)
    {
        int len = n * Intermediate;
        L.Gate.Forward(xn, n, gate, matchDevice: _md);
        L.Up.Forward(xn, n, up, matchDevice: _md);
        if (_md) { DeviceNumerics.RoundToHalf(gate[..len]); DeviceNumerics.RoundToHalf(up[..len]); }
        CpuOps.SiluMul(gate[..len], up[..len]);
        if (_md) DeviceNumerics.RoundToHalf(gate[..len]);
        L.Down.Forward(gate[..len], n, x, accumulate: true, _md);
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
            NormInto(x, xn, 1, L.InputNorm);
            L.Q.Forward(xn, 1, q, matchDevice: _md);
            L.K.Forward(xn, 1, k, matchDevice: _md);
            L.V.Forward(xn, 1, v, matchDevice: _md);
            pos[0] = c.NextPosition;
            CpuOps.ApplyRope(q, 1, Heads, HeadDim, pos, _invFreq);
            CpuOps.ApplyRope(k, 1, KvHeads, HeadDim, pos, _invFreq);
            if (_md) { DeviceNumerics.RoundToHalf(q); DeviceNumerics.RoundToHalf(k); DeviceNumerics.RoundToHalf(v); }
            cache.Append(li, k, v);
            Attention.MultiHead(q, c.Keys.Slice(0, c.Count * kvd), c.Values.Slice(0, c.Count * kvd), att, 1, c.Count, Heads, KvHeads, HeadDim, causal: false, _md);
            L.O.Forward(att, 1, x, accumulate: true, _md);
            NormInto(x, xn, 1, L.PostNorm);
            Mlp(L, xn, 1, gate, up, x);
        }
        return Logits(x);
    }

    /// <summary>The final RMSNorm of some rows of <paramref name="hidden"/> ([n, Hidden]): [rows, Hidden].</summary>
    internal float[] FinalNormRows(ReadOnlySpan<float> hidden, ReadOnlySpan<int> rows) => FinalNormRows(hidden, rows, Hidden, _norm);

    internal static float[] FinalNormRows(ReadOnlySpan<float> hidden, ReadOnlySpan<int> rows, int h, NormWeights norm)
    {
        var result = new float[rows.Length * h];
        for (int i = 0; i < rows.Length; i++)
            CpuOps.RmsNorm(hidden.Slice(rows[i] * h, h), result.AsSpan(i * h, h), 1, h, norm.Weight, norm.Eps);
        return result;
    }

    private float[] Logits(ReadOnlySpan<float> lastHidden)
    {
        var xn = new float[Hidden];
        NormInto(lastHidden, xn, 1, _norm);
        return _lmHead.Forward(xn, 1, _md);
    }
}
