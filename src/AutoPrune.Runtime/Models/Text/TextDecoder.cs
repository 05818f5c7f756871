using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;

namespace AutoPrune.Models.Text;

/// <summary>What a family says about its text decoder: sizes, tensor names and options of the Llama-style architecture.</summary>
/// <param name="Prefix">The decoder's tensor prefix (<c>language_model.model</c>): <c>{Prefix}.layers.N.self_attn.q_proj</c>, <c>{Prefix}.embed_tokens</c>, <c>{Prefix}.norm</c>.</param>
/// <param name="LmHead">The LM head's tensor prefix (<c>language_model.lm_head</c>).</param>
/// <param name="QkvBias">q, k and v projections have biases (Qwen2; Llama with <c>attention_bias</c>).</param>
/// <param name="OutputBias">The attention output projection has a bias (Llama with <c>attention_bias</c>; not Qwen2).</param>
/// <param name="RopeSections">M-RoPE: rotary frequencies per position component (Qwen2-VL's <c>mrope_section</c>); null for 1-D positions.</param>
internal sealed record TextDecoderSpec(
    string Prefix, string LmHead, int Layers, int Hidden, int Heads, int KvHeads, int HeadDim, int Intermediate, int Vocab,
    float RmsNormEps, double RopeTheta, int MaxPositions, bool QkvBias, bool OutputBias, bool MlpBias, bool TieEmbeddings,
    int[]? RopeSections = null)
{
    public HeadLayout Layout => new(Heads, KvHeads, HeadDim);
}

/// <summary>
/// The Llama-style text decoder (Llama, Mistral, Qwen2): RMSNorm, RoPE (or M-RoPE) on q and k, grouped-query attention,
/// SwiGLU, a final norm and the LM head, written once over a <see cref="Backend"/>'s ops. Its weights are the backend's
/// (q|k|v and gate|up stacked); a request's state is the backend's <see cref="DecoderSession"/>. The prefill runs a
/// pruning hook between layers; the decode step is a fixed sequence of launches (a CUDA graph on a GPU).
/// </summary>
internal sealed class TextDecoder : IDecoderWeights
{
    private sealed class Layer
    {
        public required NormWeight InNorm, PostNorm;
        public required LinearWeight Qkv, O, GateUp, Down;
    }

    private readonly Backend _b;
    private readonly Layer[] _layers;

    public TextDecoderSpec Spec { get; }
    public EmbeddingTable Embedding { get; }
    public NormWeight FinalNorm { get; }
    public LinearWeight LmHead { get; }
    public RotaryTable Rope { get; }
    public HeadLayout Layout => Spec.Layout;
    public int Hidden => Spec.Hidden;
    public int Layers => _layers.Length;
    public int Vocab => Spec.Vocab;
    public int Intermediate => Spec.Intermediate;
    public DecoderShape Shape { get; }

    /// <summary>The decoder's linear layers, for inspection (weights as the backend holds them).</summary>
    internal IEnumerable<LinearWeight> Linears => _layers.SelectMany(l => new[] { l.Qkv, l.O, l.GateUp, l.Down }).Append(LmHead);

    public TextDecoder(Backend backend, ITensorSource source, TextDecoderSpec spec, Action<double>? progress = null)
    {
        _b = backend;
        Spec = spec;
        int h = spec.Hidden, qd = spec.Heads * spec.HeadDim, kvd = spec.KvHeads * spec.HeadDim;
        string p = spec.Prefix;
        Embedding = backend.LoadEmbedding(source, $"{p}.embed_tokens.weight", spec.Vocab, h);
        _layers = new Layer[spec.Layers];
        for (int i = 0; i < _layers.Length; i++)
        {
            string lp = $"{p}.layers.{i}";
            _layers[i] = new Layer
            {
                InNorm = backend.LoadNorm(source, lp + ".input_layernorm", h, spec.RmsNormEps, NormKind.RmsNorm),
                PostNorm = backend.LoadNorm(source, lp + ".post_attention_layernorm", h, spec.RmsNormEps, NormKind.RmsNorm),
                Qkv = backend.LoadLinear(source, [(lp + ".self_attn.q_proj", qd), (lp + ".self_attn.k_proj", kvd), (lp + ".self_attn.v_proj", kvd)], h, spec.QkvBias),
                O = backend.LoadLinear(source, lp + ".self_attn.o_proj", qd, h, spec.OutputBias),
                GateUp = backend.LoadLinear(source, [(lp + ".mlp.gate_proj", spec.Intermediate), (lp + ".mlp.up_proj", spec.Intermediate)], h, spec.MlpBias),
                Down = backend.LoadLinear(source, lp + ".mlp.down_proj", spec.Intermediate, h, spec.MlpBias),
            };
            progress?.Invoke((i + 1.0) / _layers.Length);
        }
        FinalNorm = backend.LoadNorm(source, $"{p}.norm", h, spec.RmsNormEps, NormKind.RmsNorm);
        LmHead = spec.TieEmbeddings && !source.Contains(spec.LmHead + ".weight")
            ? backend.TiedLinear(Embedding)
            : backend.LoadLinear(source, spec.LmHead, h, spec.Vocab, false);
        Rope = backend.Rotary(Compute.Cpu.CpuOps.RopeInvFreq(spec.HeadDim, spec.RopeTheta), Math.Max(1, spec.MaxPositions), spec.RopeSections);
        Shape = new DecoderShape(spec.Layers, h, spec.Layout, spec.Intermediate, spec.Vocab, Math.Max(1, spec.MaxPositions));
    }

    public NormWeight InputNorm(int layer) => _layers[layer].InNorm;
    public LinearWeight Qkv(int layer) => _layers[layer].Qkv;

    /// <summary>One request's state on the backend, with room for <paramref name="extraCapacity"/> generated tokens.</summary>
    public DecoderSession StartSession(int extraCapacity) => _b.StartSession(this, Shape, extraCapacity);

    /// <summary>
    /// Runs the prompt through every layer, filling the session's KV cache; <paramref name="hook"/> (a pruning session) may
    /// shrink the sequence between layers. Returns the logits at the last prompt position.
    /// </summary>
    public float[] Prefill(DecoderSession s, SequenceState state, IPrefillHook? hook, CancellationToken ct)
    {
        using var scope = _b.Enter();
        s.BeginPrefill(state);
        try
        {
            for (int li = 0; li < _layers.Length; li++)
            {
                ct.ThrowIfCancellationRequested();
                int n = state.Length;
                var cache = s.NewCache(li, n);
                bool last = li == _layers.Length - 1;
                bool signals = hook is not null && !last && hook.ReadsAttention(li);
                PrefillLayer(s, li, n, cache, signals);
                if (hook is null || last) continue;
                try
                {
                    if (s.AfterLayer(hook, li, state) is { } action) s.Apply(state, action, li + 1);
                }
                finally { s.EndLayer(); }
            }
            return s.FinishPrefill(state, (row, logits) => Logits(s.Work, row, logits));
        }
        catch
        {
            s.PrefillFailed();
            throw;
        }
    }

    /// <summary>
    /// One layer on the prompt's <paramref name="n"/> rows: attention (keys and values into the cache) and the SwiGLU MLP,
    /// both added to the residual in place; fp32 queries and keys kept for the hook when <paramref name="signals"/>.
    /// </summary>
    private void PrefillLayer(DecoderSession s, int li, int n, KvLayer cache, bool signals)
    {
        var L = _layers[li];
        var w = s.Work;
        int qd = Layout.QDim;
        var x = s.Hidden(n);
        var xn = s.InputNorm(li, n);
        var qkv = s.Qkv(li, n, xn);
        var (q32, k32) = signals ? s.Signals(li, n) : (null, null);
        var q = w.Get("q", (long)n * qd, TensorKind.Half);
        _b.SplitHeads(qkv, n, Layout, Rope, s.Positions(n), q32, k32, q, null, null, cache);
        var att = w.Get("att", (long)n * qd, TensorKind.Half);
        _b.Attention(q, cache.Keys, cache.Values, att, AttentionShape.Create(n, n, Layout.Heads, Layout.KvHeads, Layout.HeadDim, causal: false), 0, w);
        _b.Linear(L.O, att, n, x, accumulate: true);
        Mlp(L, x, n, w, "");
        s.LayerComputed(li, signals);
    }

    /// <summary>x += down(silu(gate) · up)(RMSNorm(x)) over n rows; gate|up in the activation precision unless it has a bias.</summary>
    private void Mlp(Layer L, Tensor x, int n, Workspace w, string prefix)
    {
        int h = Hidden, inter = Intermediate;
        var xn = w.Get(prefix + "xn", (long)n * h, TensorKind.Half);
        _b.Norm(L.PostNorm, x, xn, n);
        var gateUp = L.GateUp.HasBias ? w.Get(prefix + "gateUp32", (long)n * 2 * inter, TensorKind.Float) : w.Get(prefix + "gateUp", (long)n * 2 * inter, TensorKind.Half);
        _b.Linear(L.GateUp, xn, n, gateUp);
        var act = w.Get(prefix + "act", (long)n * inter, TensorKind.Half);
        _b.SiluMul(gateUp, act, n, inter);
        _b.Linear(L.Down, act, n, x, accumulate: true);
    }

    /// <summary>The final norm and the LM head on one hidden row into <paramref name="logits"/> (Float [vocab]).</summary>
    private void Logits(Workspace w, Tensor row, Tensor logits)
    {
        var xn = w.Get("d.xn", Hidden, TensorKind.Half);
        _b.Norm(FinalNorm, row, xn, 1);
        _b.Linear(LmHead, xn, 1, logits);
    }

    /// <summary>Runs one generated token through every layer; its logits.</summary>
    public float[] Step(DecoderSession s, int tokenId)
    {
        using var scope = _b.Enter();
        return s.Step(tokenId, s.Work.Get("logits", Vocab, TensorKind.Float), () => DecodeLaunches(s));
    }

    /// <summary>Runs one generated token through every layer; the greedy next id (the first largest logit).</summary>
    public int StepGreedy(DecoderSession s, int tokenId)
    {
        using var scope = _b.Enter();
        return s.StepGreedy(tokenId, () => DecodeLaunches(s));
    }

    /// <summary>
    /// The decode step: the token's embedding, every layer (its RoPE, cache append and attention in one op), the logits and
    /// the greedy next token written over the token, and the caches advanced. Nothing here waits or reads the host, and
    /// every buffer is the session's own ("d." names), so on a GPU it can be replayed as a graph.
    /// </summary>
    private void DecodeLaunches(DecoderSession s)
    {
        var w = s.Work;
        int h = Hidden, qd = Layout.QDim;
        var x = w.Get("d.x", h, TensorKind.Float);
        var xn = w.Get("d.xn", h, TensorKind.Half);
        var qkv = w.Get("d.qkv", Layout.Width, TensorKind.Float);
        var q = w.Get("d.q", qd, TensorKind.Half);
        var att = w.Get("d.att", qd, TensorKind.Half);
        var logits = w.Get("logits", Vocab, TensorKind.Float);
        _b.Embed(Embedding, s.Token, 1, x);
        for (int li = 0; li < _layers.Length; li++)
        {
            var L = _layers[li];
            _b.Norm(L.InNorm, x, xn, 1);
            _b.Linear(L.Qkv, xn, 1, qkv);
            _b.DecodeAttention(qkv, Layout, Rope, s.Cache(li), q, att, w);
            _b.Linear(L.O, att, 1, x, accumulate: true);
            Mlp(L, x, 1, w, "d.");
        }
        Logits(w, x, logits);
        _b.ArgMax(logits, 1, Vocab, s.Token);
        s.AdvanceDecode();
    }

    /// <summary>Copies the embedding of each token id into <paramref name="destination"/> ([ids, Hidden], on the host).</summary>
    public void Embed(ReadOnlySpan<int> ids, Span<float> destination)
    {
        using var scope = _b.Enter();
        using var idt = _b.Allocate(ids.Length, TensorKind.Int);
        _b.Upload(ids, idt);
        using var rows = _b.Allocate((long)ids.Length * Hidden, TensorKind.Float);
        _b.Embed(Embedding, idt, ids.Length, rows);
        _b.Download(rows).AsSpan(0, ids.Length * Hidden).CopyTo(destination);
    }
}

/// <summary>One request's decoding: the shared decoder over its backend session.</summary>
internal sealed class DecoderGeneration(TextDecoder decoder, DecoderSession session) : IGeneration
{
    public DecoderSession Session => session;
    public float[] Prefill(SequenceState state, IPrefillHook? hook, CancellationToken ct) => decoder.Prefill(session, state, hook, ct);
    public float[] Step(int tokenId) => decoder.Step(session, tokenId);
    public int StepGreedy(int tokenId) => decoder.StepGreedy(session, tokenId);
    public int[] CachedTokensPerLayer() => session.CachedTokensPerLayer();
    public void Dispose() => session.Dispose();
}
