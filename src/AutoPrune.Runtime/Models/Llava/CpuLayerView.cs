using AutoPrune.Compute.Cpu;

namespace AutoPrune.Models.Llava;

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
