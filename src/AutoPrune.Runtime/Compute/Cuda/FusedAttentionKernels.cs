using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Attention of a short prompt in one launch instead of three (the scores GEMM, the softmax and the probabilities GEMM):
/// a pruned prefill's layers are short, and there the launches, not the arithmetic, are the cost. The arithmetic is the
/// three-launch path's: fp32 sums of fp16 q·k, the softmax of <see cref="CudaKernels.ScaledMaskedSoftmaxToHalfKernel"/>
/// (same reductions, same order), probabilities rounded to fp16 before they weigh the fp16 values, an fp16 output.
/// </summary>
internal static class FusedAttentionKernels
{
    /// <summary>
    /// One group per (head h, query row i), group index h·nq + i: the row's scaled scores over its visible keys (keys
    /// 0..causalOffset + i, or all when causalOffset &lt; 0) into scores[group·nk ..], their softmax, then
    /// output[i, h·hd ..] = Σ_j fp16(p_j) · v[j] (<see cref="ScoresSoftmaxValues"/>). q: fp16 [nq, heads·hd]; k, v: fp16 [nk, kvHeads·hd].
    /// </summary>
    internal static void FusedAttentionKernel(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<float> scores,
        ArrayView<ushort> output, AttentionShape s, int causalOffset)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int group = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int nq = s.Nq, nk = s.Nk, hd = s.HeadDim;
        int h = group / nq, i = group % nq, kvh = h / (s.QHeads / s.KvHeads);
        int limit = causalOffset >= 0 ? XMath.Min(nk, causalOffset + i + 1) : nk;
        long qo = (long)i * s.QStride + (long)h * hd;
        ScoresSoftmaxValues(sh, q, qo, k, v, (long)kvh * hd, s.KvStride, hd, s.Scale, limit, scores, (long)group * nk, output, qo, tid, step);
    }

    /// <summary>
    /// One attention row by a group: scaled scores q·k_j (fp16 inputs, fp32 sums) for keys j &lt; limit into
    /// scores[so ..], their softmax (the reductions and order of <see cref="CudaKernels.ScaledMaskedSoftmaxToHalfKernel"/>),
    /// then output[oo + d] = fp16(Σ_j fp16(p_j) · v[j, d]). q at qo; key and value j at j·kvStride + kvo. Shared by the
    /// fused prefill attention and the decode step.
    /// </summary>
    internal static void ScoresSoftmaxValues(ArrayView<float> sh, ArrayView<ushort> q, long qo, ArrayView<ushort> k, ArrayView<ushort> v, long kvo, int kvStride,
        int hd, float scale, int limit, ArrayView<float> scores, long so, ArrayView<ushort> output, long oo, int tid, int step)
    {
        float max = float.NegativeInfinity;
        for (int j = tid; j < limit; j += step)
        {
            long ko = (long)j * kvStride + kvo;
            float dot = 0;
            for (int d = 0; d < hd; d++) dot += CudaKernels.HalfBitsToFloat(q[qo + d]) * CudaKernels.HalfBitsToFloat(k[ko + d]);
            float x = dot * scale;
            scores[so + j] = x;
            max = XMath.Max(max, x);
        }
        max = CudaKernels.GroupMax(sh, max);
        float sum = 0;
        for (int j = tid; j < limit; j += step)
        {
            float e = XMath.Exp(scores[so + j] - max);
            scores[so + j] = e;
            sum += e;
        }
        float inv = 1f / CudaKernels.GroupSum(sh, sum);
        for (int d = tid; d < hd; d += step)
        {
            float acc = 0;
            for (int j = 0; j < limit; j++)
            {
                float p = CudaKernels.HalfBitsToFloat(CudaKernels.FloatToHalfBits(scores[so + j] * inv));
                acc += p * CudaKernels.HalfBitsToFloat(v[(long)j * kvStride + kvo + d]);
            }
            output[oo + d] = CudaKernels.FloatToHalfBits(acc);
        }
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int>? _fusedAttention;

    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int> FusedAttentionK
        => _fusedAttention ??= _acc.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<ushort>, AttentionShape, int>(FusedAttentionKernels.FusedAttentionKernel);

    private object[] FusedAttentionKernelsLoaded() => [FusedAttentionK];

    /// <summary>
    /// See <see cref="FusedAttentionKernels.FusedAttentionKernel"/>: attention in one launch; scores must hold
    /// heads × nq × nk values. <paramref name="causalOffset"/> ≥ 0: query i sees keys ≤ causalOffset + i; -1: all.
    /// </summary>
    public void FusedAttention(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<float> scores, ArrayView<ushort> output,
        AttentionShape shape, int causalOffset)
    {
        long groups = (long)shape.QHeads * shape.Nq;
        Require(groups <= int.MaxValue, $"{groups} attention rows exceed a grid of 2^31 - 1 groups.");
        Require(scores.Length >= groups * shape.Nk, $"scores ({scores.Length}) must hold {shape.QHeads} × {shape.Nq} × {shape.Nk} values.");
        Require(q.Length >= (long)shape.Nq * shape.QStride && output.Length >= (long)shape.Nq * shape.QStride, $"q and output must hold {shape.Nq} rows of {shape.QStride}.");
        Require(k.Length >= (long)shape.Nk * shape.KvStride && v.Length >= (long)shape.Nk * shape.KvStride, $"k and v must hold {shape.Nk} rows of {shape.KvStride}.");
        if (groups == 0 || shape.Nk == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => FusedAttentionK(Stream, RowConfig((int)groups), q, k, v, scores, output, shape, causalOffset));
    }
}
