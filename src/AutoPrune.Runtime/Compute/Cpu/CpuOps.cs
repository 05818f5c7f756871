using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace AutoPrune.Compute.Cpu;

/// <summary>Element-wise, normalisation and attention operations of the CPU backend (fp32).</summary>
internal static class CpuOps
{
    /// <summary>LayerNorm over the last dimension of <paramref name="x"/> ([rows, dim]), in place.</summary>
    public static void LayerNorm(Span<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, bool sequentialSums = false)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * dim, dim);
            float mean = (sequentialSums ? DeviceNumerics.SequentialSum(row) : TensorPrimitives.Sum<float>(row)) / dim;
            TensorPrimitives.Subtract(row, mean, row);
            float var = (sequentialSums ? DeviceNumerics.SequentialSum(row, squares: true) : TensorPrimitives.SumOfSquares<float>(row)) / dim;
            float inv = 1f / MathF.Sqrt(var + eps);
            TensorPrimitives.Multiply(row, inv, row);
            TensorPrimitives.Multiply(row, weight, row);
            TensorPrimitives.Add(row, bias, row);
        }
    }

    /// <summary>LayerNorm from <paramref name="src"/> into <paramref name="dst"/>.</summary>
    public static void LayerNorm(ReadOnlySpan<float> src, Span<float> dst, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, bool sequentialSums = false)
    {
        src.Slice(0, rows * dim).CopyTo(dst);
        LayerNorm(dst, rows, dim, weight, bias, eps, sequentialSums);
    }

    /// <summary>Llama RMSNorm: dst = weight * x / sqrt(mean(x^2) + eps).</summary>
    public static void RmsNorm(ReadOnlySpan<float> src, Span<float> dst, int rows, int dim, ReadOnlySpan<float> weight, float eps, bool sequentialSums = false)
    {
        for (int r = 0; r < rows; r++)
        {
            var s = src.Slice(r * dim, dim);
            var d = dst.Slice(r * dim, dim);
            float ms = (sequentialSums ? DeviceNumerics.SequentialSum(s, squares: true) : TensorPrimitives.SumOfSquares<float>(s)) / dim;
            float inv = 1f / MathF.Sqrt(ms + eps);
            TensorPrimitives.Multiply(s, inv, d);
            TensorPrimitives.Multiply(d, weight, d);
        }
    }

    /// <summary>CLIP's quick GELU: x * sigmoid(1.702 x), in place.</summary>
    public static void QuickGelu(Span<float> x)
    {
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            x[i] = v / (1f + MathF.Exp(-1.702f * v));
        }
    }

    /// <summary>Exact GELU: 0.5 x (1 + erf(x / sqrt 2)), in place.</summary>
    public static void Gelu(Span<float> x)
    {
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i];
            x[i] = (float)(0.5 * v * (1.0 + Erf(v * 0.70710678118654752)));
        }
    }

    /// <summary>gate = silu(gate) * up, element-wise, in place in <paramref name="gate"/>.</summary>
    public static void SiluMul(Span<float> gate, ReadOnlySpan<float> up)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            gate[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>Applies <paramref name="activation"/> to <paramref name="x"/> in place (GELU evaluated in fp32 as the device does, with <paramref name="matchDevice"/>).</summary>
    public static void Activation(ActivationFunction activation, Span<float> x, bool matchDevice = false)
    {
        switch (activation)
        {
            case ActivationFunction.QuickGelu: QuickGelu(x); break;
            case ActivationFunction.Gelu when matchDevice: DeviceNumerics.Gelu(x); break;
            case ActivationFunction.Gelu: Gelu(x); break;
            default: throw new ArgumentOutOfRangeException(nameof(activation), activation, "Unknown activation.");
        }
    }

    /// <summary>Error function with absolute error below 1.2e-7 (Numerical Recipes' Chebyshev fit of erfc).</summary>
    public static double Erf(double x)
    {
        double z = Math.Abs(x);
        double t = 1.0 / (1.0 + 0.5 * z);
        double r = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
            t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
            t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? 1.0 - r : r - 1.0;
    }

    /// <summary>Softmax of one row, in place, numerically stable.</summary>
    public static void Softmax(Span<float> row)
    {
        float max = TensorPrimitives.Max<float>(row);
        float sum = 0;
        for (int i = 0; i < row.Length; i++)
        {
            float e = MathF.Exp(row[i] - max);
            row[i] = e;
            sum += e;
        }
        TensorPrimitives.Multiply(row, 1f / sum, row);
    }

    /// <summary>Rotary tables for Llama's rotate-half RoPE: inverse frequencies of length headDim/2.</summary>
    public static float[] RopeInvFreq(int headDim, double theta)
    {
        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
            inv[i] = (float)(1.0 / Math.Pow(theta, (2.0 * i) / headDim));
        return inv;
    }

    /// <summary>Applies rotate-half RoPE in place to x ([rows, heads*headDim]) with one position per row.</summary>
    public static void ApplyRope(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq)
    {
        int half = headDim / 2;
        Span<float> cos = stackalloc float[half];
        Span<float> sin = stackalloc float[half];
        for (int r = 0; r < rows; r++)
        {
            float p = positions[r];
            for (int i = 0; i < half; i++)
            {
                float a = p * invFreq[i];
                cos[i] = MathF.Cos(a);
                sin[i] = MathF.Sin(a);
            }
            var row = x.Slice(r * heads * headDim, heads * headDim);
            for (int h = 0; h < heads; h++)
            {
                var v = row.Slice(h * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cos[i] - x2 * sin[i];
                    v[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }

    /// <summary>
    /// Scaled dot-product attention for one head group. Queries q ([nq, qStride], head slice at qOff),
    /// keys/values k, v ([nk, kvStride], slice at kvOff). Query i may attend keys 0..(causalOffset + i)
    /// when causal (causalOffset = nk - nq for a cache), all keys otherwise. Output written to o at oOff.
    /// </summary>
    public static void AttentionHead(
        ReadOnlySpan<float> q, int nq, int qStride, int qOff,
        ReadOnlySpan<float> k, ReadOnlySpan<float> v, int nk, int kvStride, int kvOff,
        Span<float> o, int oStride, int oOff, int headDim, bool causal, Span<float> scratch)
    {
        float scale = 1f / MathF.Sqrt(headDim);
        int offset = nk - nq;
        var acc = scratch.Slice(nk, headDim);
        for (int i = 0; i < nq; i++)
        {
            var qi = q.Slice(i * qStride + qOff, headDim);
            int limit = causal ? Math.Min(nk, offset + i + 1) : nk;
            var s = scratch.Slice(0, limit);
            for (int j = 0; j < limit; j++)
                s[j] = TensorPrimitives.Dot(qi, k.Slice(j * kvStride + kvOff, headDim)) * scale;
            Softmax(s);
            acc.Clear();
            for (int j = 0; j < limit; j++)
                TensorPrimitives.MultiplyAdd(v.Slice(j * kvStride + kvOff, headDim), s[j], acc, acc);
            acc.CopyTo(o.Slice(i * oStride + oOff, headDim));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ArgMax(ReadOnlySpan<float> x) => TensorPrimitives.IndexOfMax(x);
}
