using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// A PyTorch-style linear layer: y = x · Wᵀ + b, with W stored [out, in] in the checkpoint's own type (fp16/bf16 stay
/// 2 bytes per weight; the GEMM widens a packed tile at a time).
/// </summary>
internal sealed class Linear
{
    public int In { get; }
    public int Out { get; }
    public WeightData Weight { get; }
    public float[]? Bias { get; }

    public Linear(WeightData weight, float[]? bias, int @in, int @out)
    {
        Weight = weight; Bias = bias; In = @in; Out = @out;
    }

    public static Linear Load(ITensorSource store, string prefix, int @in, int @out, bool bias)
    {
        var w = store.ReadWeight(prefix + ".weight", @out, @in);
        var b = bias ? store.ReadFloat32(prefix + ".bias", @out) : null;
        return new Linear(w, b, @in, @out);
    }

    /// <summary>
    /// y[rows, Out] = x[rows, In] · Wᵀ + b. With <paramref name="matchDevice"/> (see <see cref="DeviceNumerics"/>) an
    /// fp16 weight always goes through the tiled kernel, and a bias is added after accumulating, (y + x·Wᵀ) + b, as the
    /// device does; the GEMM's own order is (x·Wᵀ + b) + y.
    /// </summary>
    public void Forward(ReadOnlySpan<float> x, int rows, Span<float> y, bool accumulate = false, bool matchDevice = false)
    {
        var bias = matchDevice && accumulate ? null : Bias;
        switch (Weight.Type)
        {
            case DType.F16:
                Gemm.MatMulTransBCore(x, In, rows, In, Weight.F16.Span, In, Out, y, Out, bias, accumulate, Gemm.DetectedIsa, Gemm.MaxThreads, tiled: matchDevice);
                break;
            case DType.BF16: Gemm.MatMulTransBBFloat16(x, rows, In, Weight.BFloat16.Span, Out, y, bias, accumulate); break;
            default: Gemm.MatMulTransB(x, rows, In, Weight.F32.Span, Out, y, bias, accumulate); break;
        }
        if (bias is null && Bias is { } b)
            for (int r = 0; r < rows; r++) System.Numerics.Tensors.TensorPrimitives.Add(y.Slice(r * Out, Out), b, y.Slice(r * Out, Out));
    }

    public float[] Forward(ReadOnlySpan<float> x, int rows, bool matchDevice = false)
    {
        var y = new float[rows * Out];
        Forward(x, rows, y, matchDevice: matchDevice);
        return y;
    }
}

/// <summary>A norm's weight (and bias for LayerNorm).</summary>
internal sealed record NormWeights(float[] Weight, float[]? Bias, float Eps)
{
    public static NormWeights LoadLayerNorm(ITensorSource store, string prefix, int dim, float eps)
        => new(store.ReadFloat32(prefix + ".weight", dim), store.ReadFloat32(prefix + ".bias", dim), eps);

    public static NormWeights LoadRmsNorm(ITensorSource store, string prefix, int dim, float eps)
        => new(store.ReadFloat32(prefix + ".weight", dim), null, eps);
}
