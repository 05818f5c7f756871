using AutoPrune.Compute.Cpu;

namespace AutoPrune.Models.Llava;

/// <summary>The CPU decoder's view: the layer's queries and keys are host arrays.</summary>
internal sealed class CpuLayerView : LayerView
{
    private readonly LlamaDecoder _decoder;
    internal CpuLayerView(LlamaDecoder decoder, int layer, SequenceState state, float[] queries, float[] keys)
        : base(layer, state, decoder.Heads, decoder.KvHeads, decoder.HeadDim, decoder.Layers)
    {
        _decoder = decoder; Queries = queries; _keys = keys;
    }
    private readonly float[] _keys;
    /// <summary>The layer's queries after RoPE, [n, heads*hd].</summary>
    public float[] Queries { get; }

    public override float[] AttentionRows(ReadOnlySpan<int> rows)
        => Attention.Rows(Queries, _keys, State.Length, State.Length, Heads, KvHeads, HeadDim, rows, causal: true);

    public override (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true)
        => _decoder.QueryKeys(Layer + 1, State.Hidden, State.Length, State.Positions, rope);

    public override float[] Keys() => _keys;

    public override float[] FinalNorm(ReadOnlySpan<int> rows) => _decoder.FinalNormRows(State.Hidden, rows);
}
