

namespace AutoPrune.Compute;

/// <summary>
/// What a backend's per-request state needs of the decoder it serves: the layers' attention weights (a pruning policy's
/// signals recompute the next layer's queries and keys), the final norm and the RoPE tables.
/// </summary>
internal interface IDecoderWeights
{
    HeadLayout Layout { get; }
    RotaryTable Rope { get; }
    int Hidden { get; }
    int Layers { get; }
    NormWeight InputNorm(int layer);
    LinearWeight Qkv(int layer);
    NormWeight FinalNorm { get; }
}

/// <summary>
/// One request's decoder state on a backend: the prompt's sequence (hidden states, positions, visual indices), the
/// per-layer KV cache (each layer holds exactly the tokens that entered it, so a layer after a prune holds fewer), the
/// working buffers, the pruning hook's signals and prunes, and the decode state (on a GPU replayed as a CUDA graph).
/// The decoder's forward itself is the model's (<see cref="Models.Text.TextDecoder"/>); it calls these in order:
/// <see cref="BeginPrefill"/>, per layer <see cref="NewCache"/> … <see cref="LayerComputed"/> and, between layers,
/// <see cref="AfterLayer"/> / <see cref="Apply"/> / <see cref="EndLayer"/>, then <see cref="FinishPrefill"/>; then
/// <see cref="Step"/> or <see cref="StepGreedy"/> per generated token.
/// </summary>
internal abstract class DecoderSession : IDisposable
{
    protected DecoderSession(Backend backend, IDecoderWeights weights, DecoderShape shape, int extraCapacity)
    {
        Backend = backend;
        Weights = weights;
        Shape = shape;
        ExtraCapacity = Math.Max(0, extraCapacity);
        Work = backend.CreateWorkspace();
    }

    public Backend Backend { get; }
    public IDecoderWeights Weights { get; }
    public DecoderShape Shape { get; }

    /// <summary>Tokens each layer's cache takes beyond its prompt rows.</summary>
    public int ExtraCapacity { get; }

    /// <summary>This request's working buffers (names starting "d." are the decode step's, which never move).</summary>
    public Workspace Work { get; }

    // ---------------------------------------------------------------- prefill

    /// <summary>Takes over the prompt's sequence (built by the model's <c>SequenceBuilder</c>), checking its positions.</summary>
    public abstract void BeginPrefill(SequenceState state);

    /// <summary>The current sequence's hidden states, Float [rows, Hidden].</summary>
    public abstract Tensor Hidden(int rows);

    /// <summary>The current sequence's positions, Int [components, rows].</summary>
    public abstract Tensor Positions(int rows);

    /// <summary>Layer <paramref name="layer"/>'s cache for the <paramref name="rows"/> tokens entering it, with room for the generated ones.</summary>
    public abstract KvLayer NewCache(int layer, int rows);

    /// <summary>Layer <paramref name="layer"/>'s cache.</summary>
    public abstract KvLayer Cache(int layer);

    /// <summary>The fp32 query and key buffers of layer <paramref name="layer"/> a pruning hook reads (kept until the next layer).</summary>
    public abstract (Tensor Q, Tensor K) Signals(int layer, int rows);

    /// <summary>Layer <paramref name="layer"/>'s input norm of the current rows (Half): computed here, unless the last prune's gather already did.</summary>
    public virtual Tensor InputNorm(int layer, int rows)
    {
        var xn = Work.Get("xn", (long)rows * Shape.Hidden, TensorKind.Half);
        Backend.Norm(Weights.InputNorm(layer), Hidden(rows), xn, rows);
        return xn;
    }

    /// <summary>Layer <paramref name="layer"/>'s q|k|v projection of the current rows (Float): computed here, unless a policy already did on these rows.</summary>
    public virtual Tensor Qkv(int layer, int rows, Tensor inputNorm)
    {
        var qkv = Work.Get("qkv", (long)rows * Shape.Heads.Width, TensorKind.Float);
        Backend.Linear(Weights.Qkv(layer), inputNorm, rows, qkv);
        return qkv;
    }

    /// <summary>The layer has run on the current rows (their hidden states changed).</summary>
    public abstract void LayerComputed(int layer, bool signalsKept);

    /// <summary>Shows layer <paramref name="layer"/>'s signals to the hook and returns what it decides.</summary>
    public abstract PruneAction? AfterLayer(IPrefillHook hook, int layer, SequenceState state);

    /// <summary>Keeps and merges rows as <paramref name="action"/> says; <paramref name="nextLayer"/> runs on them next.</summary>
    public abstract void Apply(SequenceState state, PruneAction action, int nextLayer);

    /// <summary>The hook is done with the layer: its scratch goes back.</summary>
    public abstract void EndLayer();

    /// <summary>
    /// The prefill's end: the logits of the last position (computed by <paramref name="logitsOfRow"/>: one hidden row
    /// in, Float [vocab] out), the greedy next token and what the pruning report needs, in one readback on a GPU.
    /// </summary>
    public abstract float[] FinishPrefill(SequenceState state, Action<Tensor, Tensor> logitsOfRow);

    /// <summary>The prefill failed or was cancelled part-way.</summary>
    public virtual void PrefillFailed() { }

    // ---------------------------------------------------------------- decode

    /// <summary>The token the decode step embeds and then overwrites with the greedy next one: Int [1].</summary>
    public abstract Tensor Token { get; }

    /// <summary>Runs one decode step's <paramref name="launches"/> for <paramref name="tokenId"/>; its logits.</summary>
    public abstract float[] Step(int tokenId, Tensor logits, Action launches);

    /// <summary>Runs one decode step's <paramref name="launches"/> for <paramref name="tokenId"/>; the greedy next id (on a GPU only those 4 bytes come back).</summary>
    public abstract int StepGreedy(int tokenId, Action launches);

    /// <summary>Every layer's cache holds one more token (the step's last launch on a GPU).</summary>
    public abstract void AdvanceDecode();

    /// <summary>Tokens each layer's cache holds.</summary>
    public abstract int[] CachedTokensPerLayer();

    public abstract void Dispose();
}
