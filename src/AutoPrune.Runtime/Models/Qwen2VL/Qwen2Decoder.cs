using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>The keys and values of every decoder layer for one sequence, [tokens, kv_heads·head_dim] per layer.</summary>
internal sealed class Qwen2KvCache
{
    private readonly float[][] _k, _v;

    public Qwen2KvCache(int layers, int kvDim, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        KvDim = kvDim;
        Capacity = capacity;
        _k = new float[layers][];
        _v = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            _k[l] = new float[checked(capacity * kvDim)];
            _v[l] = new float[checked(capacity * kvDim)];
        }
    }

    public int KvDim { get; }
    public int Capacity { get; }

    /// <summary>Tokens stored (the next token's cache position).</summary>
    public int Length { get; internal set; }

    public Span<float> Keys(int layer, int tokens) => _k[layer].AsSpan(0, tokens * KvDim);
    public Span<float> Values(int layer, int tokens) => _v[layer].AsSpan(0, tokens * KvDim);
}

/// <summary>
/// The Qwen2 decoder of Qwen2.5-VL on the CPU (prefix <c>model.language_model</c>), fp32 compute on the stored weights:
/// <see cref="Layer"/> × layers of x += o(attn(mrope(q(n)), mrope(k(n)), v(n))), x += down(silu(gate(n')) · up(n')) with
/// RMSNorm n, n'; q/k/v with bias, o without; grouped-query attention; M-RoPE, each rotary frequency i rotated by position
/// component c(i) where <c>mrope_section</c> (t, h, w) splits the head_dim / 2 frequencies into three chunks; then the
/// final RMSNorm and the LM head (tied to the embeddings when tie_word_embeddings).
/// </summary>
internal sealed class Qwen2Decoder
{
    private sealed class LayerWeights
    {
        public required QwenNorm InputNorm, PostNorm;
        public required QwenLinear Q, K, V, O, Gate, Up, Down;
    }

    private readonly Qwen2VLTextConfig _cfg;
    private readonly WeightData _embed;
    private readonly LayerWeights[] _layers;
    private readonly QwenNorm _norm;
    private readonly QwenLinear _lmHead;
    private readonly float[] _invFreq;
    private readonly int[] _componentOf; // rotary frequency -> position component

    public Qwen2Decoder(ITensorSource store, Qwen2VLTextConfig cfg)
    {
        _cfg = cfg;
        int h = cfg.HiddenSize, qd = cfg.NumAttentionHeads * cfg.HeadDim, kvd = cfg.KvDim, inter = cfg.IntermediateSize;
        const string p = Qwen2VLTensorNames.Language;
        _embed = store.ReadWeight(p + "embed_tokens.weight", cfg.VocabSize, h);
        _layers = new LayerWeights[cfg.NumHiddenLayers];
        for (int i = 0; i < _layers.Length; i++)
        {
            string l = $"{p}layers.{i}.";
            _layers[i] = new LayerWeights
            {
                InputNorm = QwenNorm.Load(store, l + "input_layernorm.weight", h, cfg.RmsNormEps),
                PostNorm = QwenNorm.Load(store, l + "post_attention_layernorm.weight", h, cfg.RmsNormEps),
                Q = QwenLinear.Load(store, l + "self_attn.q_proj", h, qd, bias: true),
                K = QwenLinear.Load(store, l + "self_attn.k_proj", h, kvd, bias: true),
                V = QwenLinear.Load(store, l + "self_attn.v_proj", h, kvd, bias: true),
                O = QwenLinear.Load(store, l + "self_attn.o_proj", qd, h, bias: false),
                Gate = QwenLinear.Load(store, l + "mlp.gate_proj", h, inter, bias: false),
                Up = QwenLinear.Load(store, l + "mlp.up_proj", h, inter, bias: false),
                Down = QwenLinear.Load(store, l + "mlp.down_proj", inter, h, bias: false),
            };
        }
        _norm = QwenNorm.Load(store, p + "norm.weight", h, cfg.RmsNormEps);
        // Tied: transformers points lm_head at the embeddings (a stored lm_head.weight is overwritten by the tie).
        _lmHead = cfg.TieWordEmbeddings
            ? new QwenLinear(_embed, null, h, cfg.VocabSize)
            : QwenLinear.Load(store, "lm_head", h, cfg.VocabSize, bias: false);
        _invFreq = QwenRope.InverseFrequencies(cfg.HeadDim, cfg.RopeTheta);
        _componentOf = new int[cfg.HeadDim / 2];
        for (int i = 0, c = 0, end = cfg.MropeSection[0]; i < _componentOf.Length; i++)
        {
            while (i >= end) end += cfg.MropeSection[++c];
            _componentOf[i] = c;
        }
    }

    public Qwen2VLTextConfig Config => _cfg;
    public int Layers => _layers.Length;
    public int Hidden => _cfg.HiddenSize;

    /// <summary>Token embeddings ([ids, hidden]).</summary>
    public float[] Embed(ReadOnlySpan<int> ids)
    {
        int h = Hidden;
        var dst = new float[ids.Length * h];
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if ((uint)id >= (uint)_cfg.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is outside the vocabulary (size {_cfg.VocabSize}).");
            _embed.CopyTo(id * h, dst.AsSpan(i * h, h));
        }
        return dst;
    }

    /// <summary>cos and sin tables [n, head_dim / 2]: frequency i turned by position component <c>c(i)</c> of each token.</summary>
    public (float[] Cos, float[] Sin) RotaryTables(PositionIds positions)
    {
        if (positions.Components != Qwen2VLRopeIndex.Components)
            throw new ArgumentException($"M-RoPE needs {Qwen2VLRopeIndex.Components}-component positions, not {positions.Components}.", nameof(positions));
        int n = positions.Count, half = _invFreq.Length;
        var cos = new float[n * half];
        var sin = new float[n * half];
        for (int t = 0; t < n; t++)
        {
            for (int i = 0; i < half; i++)
            {
                float a = positions[_componentOf[i], t] * _invFreq[i];
                cos[t * half + i] = MathF.Cos(a);
                sin[t * half + i] = MathF.Sin(a);
            }
        }
        return (cos, sin);
    }

    /// <summary>
    /// Runs <paramref name="n"/> new tokens (embeddings <paramref name="x"/>, [n, hidden], updated in place) through every
    /// layer, appending their keys and values to <paramref name="cache"/>; they attend causally to the cached tokens and to
    /// each other.
    /// </summary>
    public void Forward(float[] x, int n, PositionIds positions, Qwen2KvCache cache, CancellationToken ct = default)
    {
        if (positions.Count != n) throw new ArgumentException($"{positions.Count} positions for {n} tokens.", nameof(positions));
        if (cache.Length + n > cache.Capacity)
            throw new InvalidOperationException($"The KV cache holds {cache.Capacity} tokens; {cache.Length} are stored and {n} more do not fit.");
        var (cos, sin) = RotaryTables(positions);
        for (int l = 0; l < _layers.Length; l++)
        {
            ct.ThrowIfCancellationRequested();
            Layer(l, x, n, cos, sin, cache);
        }
        cache.Length += n;
    }

    /// <summary>One decoder layer on x ([n, hidden]) in place; its keys/values go to the cache after the stored ones.</summary>
    public void Layer(int index, float[] x, int n, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, Qwen2KvCache cache)
    {
        var w = _layers[index];
        int h = Hidden, heads = _cfg.NumAttentionHeads, kvHeads = _cfg.NumKeyValueHeads, hd = _cfg.HeadDim, kvd = _cfg.KvDim;
        int past = cache.Length, total = past + n;
        var xn = new float[n * h];
        w.InputNorm.Forward(x, xn, n);
        var q = w.Q.Forward(xn, n);
        var keys = cache.Keys(index, total);
        var values = cache.Values(index, total);
        w.K.Forward(xn, n, keys.Slice(past * kvd, n * kvd));
        w.V.Forward(xn, n, values.Slice(past * kvd, n * kvd));
        QwenRope.Apply(q, n, heads, hd, cos, sin);
        QwenRope.Apply(keys.Slice(past * kvd, n * kvd), n, kvHeads, hd, cos, sin);
        var att = new float[n * heads * hd];
        Attention.MultiHead(q, keys, values, att, n, total, heads, kvHeads, hd, causal: true);
        var o = w.O.Forward(att, n);
        QwenMath.AddInPlace(x, o);

        w.PostNorm.Forward(x, xn, n);
        var gate = w.Gate.Forward(xn, n);
        var up = w.Up.Forward(xn, n);
        CpuOps.SiluMul(gate, up);
        var down = w.Down.Forward(gate, n);
        QwenMath.AddInPlace(x, down);
    }

    /// <summary>Final RMSNorm and LM head of row <paramref name="row"/> of x: the logits over the vocabulary.</summary>
    public float[] Logits(ReadOnlySpan<float> x, int row)
    {
        int h = Hidden;
        var xn = new float[h];
        _norm.Forward(x.Slice(row * h, h), xn, 1);
        return _lmHead.Forward(xn, 1);
    }
}
