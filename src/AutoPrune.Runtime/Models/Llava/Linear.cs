using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>A PyTorch-style linear layer: y = x · Wᵀ + b, with W stored [out, in].</summary>
internal sealed class Linear
{
    public int In { get; }
    public int Out { get; }
    public float[] Weight { get; }
    public float[]? Bias { get; }

    public Linear(float[] weight, float[]? bias, int @in, int @out)
    {
        Weight = weight; Bias = bias; In = @in; Out = @out;
    }

    public static Linear Load(ITensorSource store, string prefix, int @in, int @out, bool bias)
    {
        var w = store.ReadFloat32(prefix + ".weight", @out, @in);
        var b = bias ? store.ReadFloat32(prefix + ".bias", @out) : null;
        return new Linear(w, b, @in, @out);
    }

    /// <summary>y[rows, Out] = x[rows, In] · Wᵀ + b.</summary>
    public void Forward(ReadOnlySpan<float> x, int rows, Span<float> y, bool accumulate = false)
        => Gemm.MatMulTransB(x, rows, In, Weight, Out, y, Bias, accumulate);

    public float[] Forward(ReadOnlySpan<float> x, int rows)
    {
        var y = new float[rows * Out];
        Forward(x, rows, y);
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
