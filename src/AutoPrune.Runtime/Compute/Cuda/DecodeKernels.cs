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
    /// One decode row's fused q|k|v ([Width] fp32) split with rotate-half RoPE at the layer's next position: q to fp16,
    /// k and v into the layer's cache at row = its current length (both read from state[2·layer], state[2·layer + 1]).
    /// One thread per rotation pair, as <see cref="CudaKernels.QkvSplitRopeKernel"/>.
    /// </summary>
    internal static void DecodeQkvRopeKernel(Index1D t0, ArrayView<float> qkv, ArrayView<int> state, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<ushort> qHalf, ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, QkvShape s, int layer, ElementRange range)
    {
        int hd = s.HeadDim, half = hd / 2;
        long row = state[2 * layer];
        long tab0 = (long)state[2 * layer + 1] * half;
        for (long e = t0; e < range.Count; e += range.Stride)
        {
            int p = (int)e;
            int slot = p / half, i = p % half;
            int section = slot < s.Heads ? 0 : slot < s.Heads + s.KvHeads ? 1 : 2;
            int h = section == 0 ? slot : section == 1 ? slot - s.Heads : slot - s.Heads - s.KvHeads;
            long src = (section == 0 ? 0 : section == 1 ? s.QDim : s.QDim + s.KvDim) + (long)h * hd + i;
            float x1 = qkv[src], x2 = qkv[src + half];
            if (section < 2)
            {
                float c = cos[tab0 + i], sn = sin[tab0 + i];
                float y1 = x1 * c - x2 * sn, y2 = x2 * c + x1 * sn;
                x1 = y1;
                x2 = y2;
            }
            if (section == 0)
            {
                long d = (long)h * hd + i;
                qHalf[d] = CudaKernels.FloatToHalfBits(x1);
                qHalf[d + half] = CudaKernels.FloatToHalfBits(x2);
            }
            else
            {
                long d = row * s.KvDim + (long)h * hd + i;
                if (section == 1)
                {
                    cacheK[d] = CudaKernels.FloatToHalfBits(x1);
                    cacheK[d + half] = CudaKernels.FloatToHalfBits(x2);
                }
                else
                {
                    cacheV[d] = CudaKernels.FloatToHalfBits(x1);
                    cacheV[d + half] = CudaKernels.FloatToHalfBits(x2);
                }
            }
        }
    }

    /// <summary>
    /// Attention of the decode row over the layer's cache (its length + 1 rows, the new one included; read from the
    /// state), one group per query head: scaled scores q·k (fp16 inputs, fp32 sums) into scores [QHeads, capacity],
    /// softmax, probabilities rounded to fp16 as the prefill's probability GEMM reads them, then the fp16 output row.
    /// </summary>
    internal static void DecodeAttentionKernel(ArrayView<ushort> q, ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, ArrayView<int> state,
        ArrayView<float> scores, ArrayView<ushort> output, AttentionShape s, int layer, int capacity)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int h = Grid.IdxX, kvh = h / (s.QHeads / s.KvHeads);
        int nk = XMath.Min(state[2 * layer] + 1, capacity);
        FusedAttentionKernels.ScoresSoftmaxValues(sh, q, (long)h * s.HeadDim, cacheK, cacheV, (long)kvh * s.HeadDim, s.KvStride, s.HeadDim, s.Scale, nk,
            scores, (long)h * capacity, output, (long)h * s.HeadDim, Group.IdxX, Group.DimX);
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
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, QkvShape, int, ElementRange>? _decodeQkvRope;
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int, int>? _decodeAttention;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int>? _advance;

    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, ElementRange> EmbedTokenK
        => _embedToken ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, ElementRange>(DecodeKernels.EmbedTokenKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, QkvShape, int, ElementRange> DecodeQkvRopeK
        => _decodeQkvRope ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, QkvShape, int, ElementRange>(DecodeKernels.DecodeQkvRopeKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int, int> DecodeAttentionK
        => _decodeAttention ??= _acc.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int, int>(DecodeKernels.DecodeAttentionKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int> AdvanceK
        => _advance ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int>(DecodeKernels.AdvanceKernel);

    private object[] DecodeKernelsLoaded() => [EmbedTokenK, DecodeQkvRopeK, DecodeAttentionK, AdvanceK];

    /// <summary>x [hidden] = the embedding of the token id held at token[0].</summary>
    public void EmbedToken(ArrayView<ushort> table, ArrayView<int> token, ArrayView<float> x, int hidden)
    {
        Require(x.Length >= hidden && token.Length >= 1, $"x must hold {hidden} values and token one id.");
        var r = Range(hidden);
        Counters.Launch();
        EmbedTokenK(Stream, Extent(r.Stride), table, token, x, hidden, r);
    }

    /// <summary>See <see cref="DecodeKernels.DecodeQkvRopeKernel"/>: q to fp16 and k, v appended to the layer's cache.</summary>
    public void DecodeQkvRope(ArrayView<float> qkv, ArrayView<int> state, int layer, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<ushort> qHalf, ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, QkvShape shape)
    {
        Require(shape.HeadDim % 2 == 0 && shape.HeadDim > 0, $"Head dimension {shape.HeadDim} must be even.");
        Require(qkv.Length >= shape.Width && qHalf.Length >= shape.QDim && state.Length >= 2 * layer + 2,
            $"qkv ({qkv.Length}), qHalf ({qHalf.Length}) and state ({state.Length}) are too short for layer {layer}.");
        var r = Range(shape.PairsPerRow);
        Counters.Launch();
        DecodeQkvRopeK(Stream, Extent(r.Stride), qkv, state, cos, sin, qHalf, cacheK, cacheV, shape, layer, r);
    }

    /// <summary>See <see cref="DecodeKernels.DecodeAttentionKernel"/>; scores must hold QHeads × capacity values.</summary>
    public void DecodeAttention(ArrayView<ushort> q, ArrayView<ushort> cacheK, ArrayView<ushort> cacheV, ArrayView<int> state, int layer,
        ArrayView<float> scores, ArrayView<ushort> output, AttentionShape shape, int capacity)
    {
        Require(scores.Length >= (long)shape.QHeads * capacity, $"scores ({scores.Length}) must hold {shape.QHeads} × {capacity} values.");
        Require(cacheK.Length >= (long)capacity * shape.KvStride && cacheV.Length >= (long)capacity * shape.KvStride, $"the cache views must hold {capacity} rows.");
        Counters.Launch();
        DecodeAttentionK(Stream, RowConfig(shape.QHeads), q, cacheK, cacheV, state, scores, output, shape, layer, capacity);
    }

    /// <summary>Moves every layer's cache length and next position on by one.</summary>
    public void AdvanceDecodeState(ArrayView<int> state, int layers)
    {
        Require(state.Length >= 2L * layers, $"state ({state.Length}) must hold {layers} layers.");
        Counters.Launch();
        AdvanceK(Stream, Extent(layers), state, layers);
    }
}
