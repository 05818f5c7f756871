namespace AutoPrune.Compute;

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

    /// <summary>This layer's attention probabilities for the given query rows: [heads, rows, n] (on the host).</summary>
    public abstract float[] AttentionRows(ReadOnlySpan<int> rows);

    /// <summary>The next layer's queries and keys (with its input norm and, optionally, RoPE) on the current output (on the host).</summary>
    public abstract (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true);

    /// <summary>
    /// The same signals computed and kept on the device, for policies that run there (null on the CPU backend): nothing
    /// comes back to the host unless the policy asks.
    /// </summary>
    public virtual Cuda.DeviceLayerSignals? Device => null;

    /// <summary>This layer's keys after RoPE, as its KV cache holds them: [n, kvHeads*headDim].</summary>
    public abstract float[] Keys();

    /// <summary>The model's final RMSNorm (<c>model.norm</c>) applied to the given rows of the current hidden states: [rows, hidden].</summary>
    public abstract float[] FinalNorm(ReadOnlySpan<int> rows);
}
