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
