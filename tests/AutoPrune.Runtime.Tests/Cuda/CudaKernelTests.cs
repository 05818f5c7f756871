using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>One ILGPU CPU-accelerator context for the whole class (creating one is slow).</summary>
public sealed class IlgpuCpuFixture : IDisposable
{
    internal CudaDevice Device { get; } = CudaDevice.CreateForTests();
    internal CudaOps Ops { get; }
    public IlgpuCpuFixture() => Ops = new CudaOps(Device.Accelerator);
    public void Dispose() => Device.Dispose();
}

/// <summary>
/// Every kernel of <see cref="CudaKernels"/> on ILGPU's CPU accelerator against the CPU backend (CpuOps / Attention /
/// reference loops) on random data. This checks the kernels' indexing and arithmetic, not GPU execution.
/// </summary>
public sealed class CudaKernelTests(IlgpuCpuFixture fx) : IClassFixture<IlgpuCpuFixture>
{
    private Accelerator Acc => fx.Device.Accelerator;
    private CudaOps Ops => fx.Ops;

    internal static float[] Rand(Random rng, int n, float scale = 1f)
        => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();

    internal static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double rel = 1e-5, double abs = 1e-6)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double tol = abs + rel * Math.Abs(expected[i]);
            if (!(Math.Abs(expected[i] - actual[i]) <= tol))
                Assert.Fail($"index {i}: expected {expected[i]:R}, got {actual[i]:R} (tolerance {tol:E2})");
        }
    }

    private float[] Read(MemoryBuffer1D<float, Stride1D.Dense> b) { Acc.Synchronize(); return b.GetAsArray1D(); }

    [Fact]
    public void LayerNormInPlace()
    {
        var rng = new Random(3);
        int rows = 4, dim = 80;
        var x = Rand(rng, rows * dim, 2).Select(v => v + 0.7f).ToArray();
        var w = Rand(rng, dim);
        var b = Rand(rng, dim);
        var expected = (float[])x.Clone();
        CpuOps.LayerNorm(expected, rows, dim, w, b, 1e-5f);
        using var xb = Acc.Allocate1D(x);
        using var wb = Acc.Allocate1D(w);
        using var bb = Acc.Allocate1D(b);
        Ops.LayerNorm(xb.View, xb.View, rows, dim, wb.View, bb.View, 1e-5f);
        Close(expected, Read(xb), abs: 1e-5);
    }

    [Theory]
    [InlineData("quick_gelu")]
    [InlineData("gelu")]
    public void Activations(string configName)
    {
        var name = ActivationFunctions.Parse(configName, "hidden_act");
        var rng = new Random(configName.Length);
        var x = Rand(rng, 1000, 6).Concat([0f, -0.5f, 3f, -9f, 9f]).ToArray();
        var expected = (float[])x.Clone();
        CpuOps.Activation(name, expected);
        using var xb = Acc.Allocate1D(x);
        Ops.Activation(name, xb.View);
        Close(expected, Read(xb), abs: 1e-6);
    }

    [Fact]
    public void ArgMaxFirstOfTies()
    {
        var rng = new Random(10);
        int rows = 4, cols = 300;
        var x = Rand(rng, rows * cols);
        x[1 * cols + 17] = 5f; x[1 * cols + 200] = 5f; // tie: first wins, as TensorPrimitives.IndexOfMax
        x[2 * cols] = 7f;
        x[3 * cols + cols - 1] = 9f;
        using var xb = Acc.Allocate1D(x);
        using var rb = Acc.Allocate1D<int>(rows);
        Ops.ArgMax(xb.View, rows, cols, rb.View);
        Acc.Synchronize();
        var got = rb.GetAsArray1D();
        for (int r = 0; r < rows; r++)
            Assert.Equal(CpuOps.ArgMax(x.AsSpan(r * cols, cols)), got[r]);
        Assert.Equal(17, got[1]);
    }

    [Fact]
    public void ToHalfMatchesSystemHalfBitForBit()
    {
        var rng = new Random(11);
        float[] special = [0f, -0f, 65504f, 65519.99f, 65520f, -70000f, 1e-6f, -3.14159f, 6.1035156e-5f, 6.0e-5f,
            5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f, 1e-9f, float.PositiveInfinity, float.NegativeInfinity, float.NaN,
            1.00048828125f, 1.00146484375f, 2049f, 2051f];
        var x = Rand(rng, 300, 100).Concat(Rand(rng, 100, 1e-4f)).Concat(special).ToArray();
        using var xb = Acc.Allocate1D(x);
        using var hb = Acc.Allocate1D<ushort>(x.Length);
        Ops.ToHalf(xb.View, hb.View);
        Acc.Synchronize();
        var bits = hb.GetAsArray1D();
        for (int i = 0; i < x.Length; i++)
        {
            var h = (System.Half)x[i];
            if (System.Half.IsNaN(h)) { Assert.True(System.Half.IsNaN(BitConverter.UInt16BitsToHalf(bits[i])), $"x = {x[i]:R}: expected NaN"); continue; }
            Assert.True(BitConverter.HalfToUInt16Bits(h) == bits[i], $"x = {x[i]:R}: expected {BitConverter.HalfToUInt16Bits(h):X4}, got {bits[i]:X4}");
        }
    }
}
