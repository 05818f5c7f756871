using System.Numerics.Tensors;

namespace AutoPrune.Compute.Cpu;

/// <summary>
/// The arithmetic the CUDA code path uses where it differs from the CPU engine's default, for
/// <see cref="CpuPrecision.MatchDevice"/>: activations stored as fp16 where the device stores them, sums over a row
/// taken in index order (as the device's row kernels do on ILGPU's CPU accelerator), biases added after an accumulating
/// GEMM, and the GEMM's tiled kernel even for one row.
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
    /// Exact GELU with <see cref="CpuOps.Erf"/>'s Chebyshev fit evaluated in fp32, in the erfc form, term for term as
    /// <see cref="Cuda.CudaKernels.GeluKernel"/> (<see cref="CpuOps.Gelu"/> evaluates it in double).
    /// </summary>
    public static void Gelu(Span<float> x)
    {
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            float z = MathF.Abs(v * 0.70710678118654752f);
            float t = 1f / (1f + 0.5f * z);
            float r = t * MathF.Exp(-z * z - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
                t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
                t * (-0.82215223f + t * 0.17087277f)))))))));
            float onePlusErf = v >= 0 ? 2f - r : r;
            x[i] = 0.5f * v * onePlusErf;
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
