using System.Numerics.Tensors;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// A linear layer y = x · Wᵀ + b with W [out, in] kept as the checkpoint stores it (fp16 and bf16 are widened a packed
/// tile at a time by the blocked GEMM).
/// </summary>
internal sealed class QwenLinear
{
    public QwenLinear(WeightData weight, float[]? bias, int @in, int @out)
    {
        Weight = weight; Bias = bias; In = @in; Out = @out;
    }

    public int In { get; }
    public int Out { get; }
    public WeightData Weight { get; }
    public float[]? Bias { get; }

    public static QwenLinear Load(ITensorSource store, string prefix, int @in, int @out, bool bias)
        => new(store.ReadWeight(prefix + ".weight", @out, @in), bias ? store.ReadFloat32(prefix + ".bias", @out) : null, @in, @out);

    /// <summary>y[rows, Out] = x[rows, In] · Wᵀ + b.</summary>
    public void Forward(ReadOnlySpan<float> x, int rows, Span<float> y)
    {
        switch (Weight.Type)
        {
            case DType.F16: Gemm.MatMulTransB(x, rows, In, Weight.F16.Span, Out, y, Bias); break;
            case DType.BF16: Gemm.MatMulTransBBFloat16(x, rows, In, Weight.BFloat16.Span, Out, y, Bias); break;
            default: Gemm.MatMulTransB(x, rows, In, Weight.F32.Span, Out, y, Bias); break;
        }
    }

    public float[] Forward(ReadOnlySpan<float> x, int rows)
    {
        var y = new float[rows * Out];
        Forward(x, rows, y);
        return y;
    }
}

/// <summary>Rotary embeddings from per-row angle tables, rotate-half style (dimension i pairs with i + head_dim/2).</summary>
internal static class QwenRope
{
    /// <summary>
    /// Rotates every head of x ([rows, heads·hd]) in place: for i &lt; hd/2 and angle a = table[r, i],
    /// (x_i, x_{i+hd/2}) → (x_i cos a − x_{i+hd/2} sin a, x_{i+hd/2} cos a + x_i sin a).
    /// </summary>
    public static void Apply(Span<float> x, int rows, int heads, int hd, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = hd / 2;
        for (int r = 0; r < rows; r++)
        {
            var c = cos.Slice(r * half, half);
            var s = sin.Slice(r * half, half);
            var row = x.Slice(r * heads * hd, heads * hd);
            for (int h = 0; h < heads; h++)
            {
                var v = row.Slice(h * hd, hd);
                for (int i = 0; i < half; i++)
                {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c[i] - x2 * s[i];
                    v[i + half] = x2 * c[i] + x1 * s[i];
                }
            }
        }
    }

    /// <summary>1 / theta^(2i / dim) for i in [0, dim/2), rounded to float32.</summary>
    public static float[] InverseFrequencies(int dim, double theta)
    {
        var inv = new float[dim / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = (float)(1.0 / Math.Pow(theta, 2.0 * i / dim));
        return inv;
    }
}

/// <summary>RMSNorm weights: y = w · x / sqrt(mean(x²) + eps).</summary>
internal sealed record QwenNorm(float[] Weight, float Eps)
{
    public static QwenNorm Load(ITensorSource store, string name, int dim, double eps) => new(store.ReadFloat32(name, dim), (float)eps);

    public void Forward(ReadOnlySpan<float> x, Span<float> y, int rows) => CpuOps.RmsNorm(x, y, rows, Weight.Length, Weight, Eps);
}

/// <summary>Attention over contiguous segments (windows, images): each segment's rows attend only to each other.</summary>
internal static partial class SegmentAttention
{
    /// <summary>
    /// o = softmax(q kᵀ / sqrt(hd)) v within each segment [cu[s], cu[s+1]) of rows; q, k, v, o are [rows, heads·hd].
    /// Only one segment's scores exist at a time (no rows×rows mask).
    /// </summary>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o, int heads, int hd, ReadOnlySpan<int> cu)
    {
        int dim = heads * hd;
        for (int s = 0; s + 1 < cu.Length; s++)
        {
            int start = cu[s], len = cu[s + 1] - cu[s];
            if (len <= 0) continue;
            Attention.MultiHead(q.Slice(start * dim, len * dim), k.Slice(start * dim, len * dim), v.Slice(start * dim, len * dim),
                o.Slice(start * dim, len * dim), len, len, heads, heads, hd, causal: false);
        }
    }
}

internal static partial class SegmentAttention
{
    /// <summary>
    /// Adds to <paramref name="received"/>[j] the attention key row j receives within its segment (see
    /// <see cref="SegmentOps.Received"/>, the CPU backend's fp32 form of <c>Backend.ReceivedAttention</c>).
    /// </summary>
    public static void Received(float[] q, float[] k, int heads, int hd, ReadOnlySpan<int> cu, float[] received)
        => SegmentOps.Received(q, k, heads, hd, cu, received);
}

/// <summary>Small element-wise helpers.</summary>
internal static class QwenMath
{
    /// <summary>x += y.</summary>
    public static void AddInPlace(Span<float> x, ReadOnlySpan<float> y) => TensorPrimitives.Add(x, y, x);
}
