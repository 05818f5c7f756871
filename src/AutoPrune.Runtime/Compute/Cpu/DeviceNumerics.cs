using System.Numerics.Tensors;

namespace AutoPrune.Compute.Cpu;

/// <summary>
/// The arithmetic the CUDA code path uses where it differs from the CPU engine's default, for
/// <see cref="CpuPrecision.MatchDevice"/>: activations stored as fp16 where the device stores them, sums over a row
/// taken in index order (as the device's row kernels do on ILGPU's CPU accelerator), biases added after an accumulating
/// GEMM, the GEMM's tiled kernel even for one row, and the fused attention kernel's order for short attention.
/// </summary>
internal static class DeviceNumerics
{
    /// <summary>Rounds every value to the nearest fp16 (ties to even), in place: what storing it as fp16 and reading it back gives.</summary>
    public static void RoundToHalf(Span<float> x)
    {
        Span<Half> tmp = stackalloc Half[256];
        for (int i = 0; i < x.Length; i += 256)
        {
            var s = x.Slice(i, Math.Min(256, x.Length - i));
            TensorPrimitives.ConvertToHalf(s, tmp[..s.Length]);
            TensorPrimitives.ConvertToSingle(tmp[..s.Length], s);
        }
    }

    /// <summary>
    /// Exact GELU with <see cref="CpuOps.Erf"/>'s Chebyshev fit evaluated in fp32, in the erfc form: the device kernel's
    /// own function (<see cref="Cuda.CudaKernels.Gelu"/>; <see cref="CpuOps.Gelu"/> evaluates it in double).
    /// </summary>
    public static void Gelu(Span<float> x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = Cuda.CudaKernels.Gelu(x[i]);
    }

    /// <summary>
    /// The GPU code path computes attention of at most this many query × key pairs in one fused kernel (and a decode
    /// step's always), longer attention through GEMMs (<c>CudaLlavaModel.FusedAttentionMaxPairs</c>'s default).
    /// </summary>
    public const long FusedAttentionMaxPairs = 32768;

    /// <summary>
    /// Attention with the fused device kernel's arithmetic (<c>FusedAttentionKernels.ScoresSoftmaxValues</c> with one
    /// thread per group): per head and query row, the scaled dot products summed in order, the softmax's max and sum in
    /// order, then each output value Σ_j fp16(p_j)·v_j in order, rounded to fp16. q, k, v are fp16-valued; query i sees
    /// keys 0..nk - nq + i when <paramref name="causal"/>.
    /// </summary>
    public static void FusedAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o,
        int nq, int nk, int qHeads, int kvHeads, int hd, bool causal)
    {
        int group = qHeads / kvHeads, qStride = qHeads * hd, kvStride = kvHeads * hd;
        float scale = 1f / MathF.Sqrt(hd);
        var s = new float[nk];
        for (int h = 0; h < qHeads; h++)
        {
            long kvo = (long)(h / group) * hd;
            for (int i = 0; i < nq; i++)
            {
                int limit = causal ? Math.Min(nk, nk - nq + i + 1) : nk;
                int qo = i * qStride + h * hd;
                float max = float.NegativeInfinity;
                for (int j = 0; j < limit; j++)
                {
                    long ko = (long)j * kvStride + kvo;
                    float dot = 0;
                    for (int d = 0; d < hd; d++) dot += q[qo + d] * k[(int)(ko + d)];
                    float x = dot * scale;
                    s[j] = x;
                    max = MathF.Max(max, x);
                }
                float sum = 0;
                for (int j = 0; j < limit; j++)
                {
                    float e = MathF.Exp(s[j] - max);
                    s[j] = e;
                    sum += e;
                }
                float inv = 1f / sum;
                for (int j = 0; j < limit; j++) s[j] = (float)(Half)(s[j] * inv);
                for (int d = 0; d < hd; d++)
                {
                    float acc = 0;
                    for (int j = 0; j < limit; j++) acc += s[j] * v[(int)((long)j * kvStride + kvo + d)];
                    o[qo + d] = (float)(Half)acc;
                }
            }
        }
    }

    /// <summary>
    /// Attention with the tiled tensor-core kernel's arithmetic (<c>TiledAttentionKernels</c>, long attention on the
    /// device when the head dimension is a multiple of 16): per head and query row, s_j = (Σ_d q_d·k_jd in d order)·scale;
    /// m = max s_j; e_j = exp(s_j − m); sum = (P0 + P1) + (P2 + P3), P_t adding in j order the e_j with (j mod 8) div 2 = t;
    /// out_d = fp16((Σ_j fp16(e_j)·v_jd in j order)·(1 / sum)). The vectors run across keys (scores) and across value
    /// columns (outputs), so every lane still adds in the kernel's order. q, k, v are fp16-valued; query i sees keys
    /// 0..causalOffset + i, or all of them when <paramref name="causalOffset"/> &lt; 0.
    /// </summary>
    public static void TiledAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o,
        int nq, int nk, int qHeads, int kvHeads, int hd, int causalOffset)
    {
        int group = qHeads / kvHeads, qStride = qHeads * hd, kvStride = kvHeads * hd;
        float scale = 1f / MathF.Sqrt(hd);
        int w = System.Numerics.Vector<float>.Count;
        int padded = (nk + w - 1) / w * w;
        // Per kv head, kᵀ [hd, padded keys]: the score vectors read w keys of one dimension at a time.
        var kt = new float[kvHeads][];
        for (int kvh = 0; kvh < kvHeads; kvh++)
        {
            var t = kt[kvh] = new float[hd * padded];
            for (int j = 0; j < nk; j++)
                for (int d = 0; d < hd; d++) t[d * padded + j] = k[j * kvStride + kvh * hd + d];
        }
        var qa = q.ToArray();
        var va = v.ToArray();
        var oa = new float[nq * qStride];
        Parallel.For(0, qHeads, ComputeScheduler.Options(), h =>
        {
            var kh = kt[h / group];
            int kvo = h / group * hd;
            var s = new float[padded];
            var acc = new float[hd];
            var parts = new float[4];
            for (int i = 0; i < nq; i++)
            {
                int limit = causalOffset >= 0 ? Math.Min(nk, causalOffset + i + 1) : nk;
                int qo = i * qStride + h * hd;
                for (int j0 = 0; j0 < limit; j0 += w)
                {
                    var dot = System.Numerics.Vector<float>.Zero;
                    for (int d = 0; d < hd; d++)
                        dot += new System.Numerics.Vector<float>(qa[qo + d]) * new System.Numerics.Vector<float>(kh, d * padded + j0);
                    (dot * scale).CopyTo(s, j0);
                }
                float max = float.NegativeInfinity;
                for (int j = 0; j < limit; j++) max = MathF.Max(max, s[j]);
                Array.Clear(parts);
                Array.Clear(acc);
                for (int j = 0; j < limit; j++)
                {
                    float e = MathF.Exp(s[j] - max), pe = (float)(Half)e;
                    parts[(j >> 1) & 3] += e;
                    var p = new System.Numerics.Vector<float>(pe);
                    int vo = j * kvStride + kvo, d = 0;
                    for (; d + w <= hd; d += w)
                        (new System.Numerics.Vector<float>(acc, d) + p * new System.Numerics.Vector<float>(va, vo + d)).CopyTo(acc, d);
                    for (; d < hd; d++) acc[d] += pe * va[vo + d];
                }
                float inv = 1f / ((parts[0] + parts[1]) + (parts[2] + parts[3]));
                for (int d = 0; d < hd; d++) oa[qo + d] = (float)(Half)(acc[d] * inv);
            }
        });
        oa.CopyTo(o);
    }

    /// <summary>A copy of <paramref name="x"/> rounded to fp16 (<see cref="RoundToHalf"/>).</summary>
    public static float[] HalfCopy(ReadOnlySpan<float> x)
    {
        var r = x.ToArray();
        RoundToHalf(r);
        return r;
    }

    /// <summary>Σ x (or Σ x² with <paramref name="squares"/>) added in index order, one rounding per term.</summary>
    public static float SequentialSum(ReadOnlySpan<float> x, bool squares = false)
    {
        float s = 0;
        if (squares) foreach (float v in x) s += v * v;
        else foreach (float v in x) s += v;
        return s;
    }
}
