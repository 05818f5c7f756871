using System.Buffers;
using System.Numerics.Tensors;

namespace AutoPrune.Compute.Cpu;

/// <summary>Multi-head attention over row-major [tokens, heads*headDim] buffers, with GQA.</summary>
internal static class Attention
{
    /// <summary>
    /// o = softmax(q kᵀ / sqrt(d)) v for every head. q: [nq, qHeads*hd]; k, v: [nk, kvHeads*hd];
    /// with <paramref name="causal"/>, query i sees keys 0..(nk - nq + i).
    /// </summary>
    /// <param name="matchDevice">Round the probabilities and the output to fp16 and use the GEMM's tiled kernel for every
    /// block, as the CUDA code path does (see <see cref="DeviceNumerics"/>); q, k and v are then expected fp16-valued.</param>
    public static void MultiHead(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o,
        int nq, int nk, int qHeads, int kvHeads, int hd, bool causal, bool matchDevice = false)
    {
        if (matchDevice)
        {
            // The device's choice: one fused kernel for a decode step and short attention.
            if (nq == 1 || (long)nq * nk <= DeviceNumerics.FusedAttentionMaxPairs)
            {
                DeviceNumerics.FusedAttention(q, k, v, o, nq, nk, qHeads, kvHeads, hd, causal);
                return;
            }
            // Longer attention: the tiled tensor-core kernel where the head dimension suits it, the GEMMs otherwise.
            if (Cuda.TiledAttentionKernels.Fits(hd))
            {
                DeviceNumerics.TiledAttention(q, k, v, o, nq, nk, qHeads, kvHeads, hd, causal ? nk - nq : -1);
                return;
            }
            MultiHeadBlocked(q, k, v, o, nq, nk, qHeads, kvHeads, hd, causal, matchDevice);
            DeviceNumerics.RoundToHalf(o.Slice(0, nq * qHeads * hd));
            return;
        }
        if (nq >= BlockRows) { MultiHeadBlocked(q, k, v, o, nq, nk, qHeads, kvHeads, hd, causal, false); return; }
        // Few query rows (decoding, short prompts): row by row, one task per head, each with its own scratch.
        int group = qHeads / kvHeads;
        int qStride = qHeads * hd, kvStride = kvHeads * hd;
        unsafe
        {
            fixed (float* qp = q, kp = k, vp = v, op = o)
            {
                nint qa = (nint)qp, ka = (nint)kp, va = (nint)vp, oa = (nint)op;
                int qLen = q.Length, kLen = k.Length, vLen = v.Length, oLen = o.Length;
                void Run(int h)
                {
                    var scratch = ArrayPool<float>.Shared.Rent(nk + hd);
                    try
                    {
                        CpuOps.AttentionHead(
                            new ReadOnlySpan<float>((float*)qa, qLen), nq, qStride, h * hd,
                            new ReadOnlySpan<float>((float*)ka, kLen), new ReadOnlySpan<float>((float*)va, vLen), nk, kvStride, (h / group) * hd,
                            new Span<float>((float*)oa, oLen), qStride, h * hd, hd, causal, scratch);
                    }
                    finally { ArrayPool<float>.Shared.Return(scratch); }
                }
                if ((long)nq * nk * hd * qHeads < 1_000_000)
                    for (int h = 0; h < qHeads; h++) Run(h);
                else
                    Parallel.For(0, qHeads, ComputeScheduler.Options(), Run);
            }
        }
    }

    private const int BlockRows = 64;

    /// <summary>
    /// Prefill path: per (head, block of 64 query rows), scores = Q·Kᵀ and output = P·V through the packed GEMM
    /// (single-threaded inside, parallel over the tasks). Only a [64, keys] score tile exists at a time per task.
    /// </summary>
    private static unsafe void MultiHeadBlocked(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o,
        int nq, int nk, int qHeads, int kvHeads, int hd, bool causal, bool matchDevice)
    {
        int group = qHeads / kvHeads, qStride = qHeads * hd, kvStride = kvHeads * hd;
        int blocks = (nq + BlockRows - 1) / BlockRows;
        float scale = 1f / MathF.Sqrt(hd);
        var isa = Gemm.DetectedIsa;
        fixed (float* qp = q, kp = k, vp = v, op = o)
        {
            nint qa = (nint)qp, ka = (nint)kp, va = (nint)vp, oa = (nint)op;
            int qLen = q.Length, kLen = k.Length, vLen = v.Length, oLen = o.Length;
            Parallel.For(0, qHeads * blocks, ComputeScheduler.Options(), w =>
            {
                int h = w / blocks, b = w % blocks, kvh = h / group;
                int r0 = b * BlockRows, rows = Math.Min(BlockRows, nq - r0);
                int limit = causal ? Math.Min(nk, nk - nq + r0 + rows) : nk; // keys any row of the block may see
                var scores = ArrayPool<float>.Shared.Rent(rows * limit);
                try
                {
                    var qs = new ReadOnlySpan<float>((float*)qa, qLen);
                    var ks = new ReadOnlySpan<float>((float*)ka, kLen);
                    var vs = new ReadOnlySpan<float>((float*)va, vLen);
                    var os = new Span<float>((float*)oa, oLen);
                    var sc = scores.AsSpan(0, rows * limit);
                    Gemm.MatMulTransBCore(qs.Slice(r0 * qStride + h * hd), qStride, rows, hd, ks.Slice(kvh * hd), kvStride, limit,
                        sc, limit, default, false, isa, 1, tiled: matchDevice);
                    for (int i = 0; i < rows; i++)
                    {
                        int visible = causal ? Math.Min(limit, nk - nq + r0 + i + 1) : limit;
                        var row = sc.Slice(i * limit, limit);
                        TensorPrimitives.Multiply(row.Slice(0, visible), scale, row.Slice(0, visible));
                        CpuOps.Softmax(row.Slice(0, visible));
                        if (matchDevice) DeviceNumerics.RoundToHalf(row.Slice(0, visible));
                        row.Slice(visible).Clear();
                    }
                    Gemm.MatMulCore(sc, limit, rows, limit, vs.Slice(kvh * hd), kvStride, hd, os.Slice(r0 * qStride + h * hd), qStride,
                        false, isa, 1, tiled: matchDevice);
                }
                finally { ArrayPool<float>.Shared.Return(scores); }
            });
        }
    }

    /// <summary>
    /// Attention probabilities of selected query rows, per head: [qHeads, rows.Length, nk - firstKey]
    /// (softmax over all nk keys, columns from <paramref name="firstKey"/> on). Causal masking as in
    /// <see cref="MultiHead"/>. Only these rows are computed: no full attention matrix is materialised.
    /// </summary>
    public static float[] Rows(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int nq, int nk, int qHeads, int kvHeads, int hd,
        ReadOnlySpan<int> rows, bool causal, int firstKey = 0)
    {
        int group = qHeads / kvHeads;
        int qStride = qHeads * hd, kvStride = kvHeads * hd, cols = nk - firstKey;
        var result = new float[qHeads * rows.Length * cols];
        var s = new float[nk];
        float scale = 1f / MathF.Sqrt(hd);
        for (int h = 0; h < qHeads; h++)
        {
            int kvh = h / group;
            for (int r = 0; r < rows.Length; r++)
            {
                int i = rows[r];
                int limit = causal ? Math.Min(nk, nk - nq + i + 1) : nk;
                var qi = q.Slice(i * qStride + h * hd, hd);
                var sl = s.AsSpan(0, limit);
                for (int j = 0; j < limit; j++)
                    sl[j] = TensorPrimitives.Dot(qi, k.Slice(j * kvStride + kvh * hd, hd)) * scale;
                CpuOps.Softmax(sl);
                var dst = result.AsSpan((h * rows.Length + r) * cols, cols);
                for (int j = firstKey; j < nk; j++)
                    dst[j - firstKey] = j < limit ? s[j] : 0f;
            }
        }
        return result;
    }
}
