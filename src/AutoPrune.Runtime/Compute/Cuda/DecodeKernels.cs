using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// The static-shape decode step: every kernel reads the token, each layer's KV-cache length and next position from
/// device memory (the decode state, <c>[layers, 2]</c>: length, position), so one step's launches are the same every
/// step and can be captured once as a CUDA graph. The host never uploads anything per token; it reads back the next id.
/// </summary>
internal static class DecodeKernels
{
    /// <summary>x[c] = the fp16 embedding of token[0], widened exactly.</summary>
    internal static void EmbedTokenKernel(Index1D t, ArrayView<ushort> table, ArrayView<int> token, ArrayView<float> x, int hidden, ElementRange range)
    {
        long row = (long)token[0] * hidden;
        for (long c = t; c < range.Count; c += range.Stride) x[c] = CudaKernels.HalfBitsToFloat(table[row + c]);
    }

    /// <summary>
    /// One decoder layer's attention for the decode row, one group per query head h (kv head kvh), in one launch: the
    /// row's fused q|k|v ([Width] fp32) is split with rotate-half RoPE at the layer's next position (state[2·layer + 1]):
    /// q_h to fp16 (qHalf), and kvh's k and v into the layer's cache at row = its current length (state[2·layer]); every
    /// group of a kv head writes the same bits there, so each reads its own writes after the barrier. Then the attention
    /// over the cache's length + 1 rows: scaled scores q·k (fp16 inputs, fp32 sums) into scores [QHeads, capacity],
    /// softmax, probabilities rounded to fp16 as the prefill's probability GEMM reads them, and the fp16 output row
    /// (<see cref="FusedAttentionKernels.ScoresSoftmaxValues"/>). The rotation is <see cref="SignalKernels.Rotated"/>, the
    /// arithmetic of <see cref="CudaKernels.QkvSplitRopeKernel"/>.
    /// </summary>
    internal static void DecodeRopeAttentionKernel(ArrayView<float> qkv, ArrayView<int> state, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<ushort> qHalf, ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, ArrayView<float> scores, ArrayView<ushort> output,
        AttentionShape s, QkvShape w, int layer, int capacity)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int h = Grid.IdxX, kvh = h / (s.QHeads / s.KvHeads), tid = Group.IdxX, step = Group.DimX;
        int hd = s.HeadDim, half = hd / 2;
        long row = state[2 * layer];
        long tab = (long)state[2 * layer + 1] * half;
        long qo = (long)h * hd, ko = w.QDim + (long)kvh * hd, vo = w.QDim + w.KvDim + (long)kvh * hd, co = row * w.KvDim + (long)kvh * hd;
        for (int d = tid; d < hd; d += step)
        {
            qHalf[qo + d] = CudaKernels.FloatToHalfBits(SignalKernels.Rotated(qkv, qo, d, half, tab, cos, sin));
            cacheK[co + d] = CudaKernels.FloatToHalfBits(SignalKernels.Rotated(qkv, ko, d, half, tab, cos, sin));
            cacheV[co + d] = CudaKernels.FloatToHalfBits(qkv[vo + d]);
        }
        Group.Barrier();
        int nk = XMath.Min((int)row + 1, capacity);
        FusedAttentionKernels.ScoresSoftmaxValues(sh, qHalf, (long)h * hd, cacheK, cacheV, (long)kvh * hd, s.KvStride, hd, s.Scale, nk,
            scores, (long)h * capacity, output, (long)h * hd, tid, step);
    }

    /// <summary>After a decode step: every layer's cache length and next position move on by one.</summary>
    internal static void AdvanceKernel(Index1D t, ArrayView<int> state, int layers)
    {
        if (t < layers)
        {
            state[2 * t]++;
            state[2 * t + 1]++;
        }
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, ElementRange>? _embedToken;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>,
        ArrayView<float>, ArrayView<ushort>, AttentionShape, QkvShape, int, int>? _decodeRopeAttention;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int>? _advance;

    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, ElementRange> EmbedTokenK
        => _embedToken ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, ElementRange>(DecodeKernels.EmbedTokenKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>,
        ArrayView<float>, ArrayView<ushort>, AttentionShape, QkvShape, int, int> DecodeRopeAttentionK
        => _decodeRopeAttention ??= _acc.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>,
            ArrayView<float>, ArrayView<ushort>, AttentionShape, QkvShape, int, int>(DecodeKernels.DecodeRopeAttentionKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int> AdvanceK
        => _advance ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int>(DecodeKernels.AdvanceKernel);

    private object[] DecodeKernelsLoaded() => [EmbedTokenK, DecodeRopeAttentionK, AdvanceK];

    /// <summary>x [hidden] = the embedding of the token id held at token[0].</summary>
    public void EmbedToken(ArrayView<ushort> table, ArrayView<int> token, ArrayView<float> x, int hidden)
    {
        Require(x.Length >= hidden && token.Length >= 1, $"x must hold {hidden} values and token one id.");
        var r = Range(hidden);
        Counters.Launch();
        Queue.Enqueue(() => EmbedTokenK(Stream, Extent(r.Stride), table, token, x, hidden, r));
    }

    /// <summary>
    /// See <see cref="DecodeKernels.DecodeRopeAttentionKernel"/>: q to fp16 (qHalf), k and v appended to the layer's cache,
    /// and the attention output row, in one launch; scores must hold QHeads × capacity values.
    /// </summary>
    public void DecodeRopeAttention(ArrayView<float> qkv, ArrayView<int> state, int layer, ArrayView<float> cos, ArrayView<float> sin, ArrayView<ushort> qHalf,
        ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, ArrayView<float> scores, ArrayView<ushort> output, AttentionShape shape, QkvShape qkvShape, int capacity)
    {
        Require(shape.HeadDim % 2 == 0 && shape.HeadDim > 0 && shape.HeadDim == qkvShape.HeadDim && shape.QHeads == qkvShape.Heads && shape.KvHeads == qkvShape.KvHeads,
            $"Head dimension {shape.HeadDim} must be even and the attention and q|k|v shapes must agree.");
        Require(qkv.Length >= qkvShape.Width && qHalf.Length >= qkvShape.QDim && output.Length >= qkvShape.QDim && state.Length >= 2 * layer + 2,
            $"qkv ({qkv.Length}), qHalf ({qHalf.Length}), output ({output.Length}) and state ({state.Length}) are too short for layer {layer}.");
        Require(scores.Length >= (long)shape.QHeads * capacity, $"scores ({scores.Length}) must hold {shape.QHeads} × {capacity} values.");
        Require(cacheK.Length >= (long)capacity * shape.KvStride && cacheV.Length >= (long)capacity * shape.KvStride, $"the cache views must hold {capacity} rows.");
        Counters.Launch();
        Queue.Enqueue(() => DecodeRopeAttentionK(Stream, RowConfig(shape.QHeads), qkv, state, cos, sin, qHalf, cacheK, cacheV, scores, output, shape, qkvShape, layer, capacity));
    }

    /// <summary>Moves every layer's cache length and next position on by one.</summary>
    public void AdvanceDecodeState(ArrayView<int> state, int layers)
    {
        Require(state.Length >= 2L * layers, $"state ({state.Length}) must hold {layers} layers.");
        Counters.Launch();
        Queue.Enqueue(() => AdvanceK(Stream, Extent(layers), state, layers));
    }
}
