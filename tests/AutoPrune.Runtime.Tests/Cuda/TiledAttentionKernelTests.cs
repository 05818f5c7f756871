using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using ILGPU.Runtime;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>fp16 attention inputs and the tiled kernel run on them, shared by the two launch shapes' tests.</summary>
internal static class TiledAttentionCase
{
    public sealed record Inputs(float[] Q, float[] K, float[] V, int Nq, int Nk, int Heads, int KvHeads, int HeadDim, int CausalOffset);

    /// <summary>Random fp16-valued q, k, v; q scaled so that the softmax is peaked in places and flat in others.</summary>
    public static Inputs Make(int nq, int nk, int heads, int kvHeads, int hd, int causalOffset, int seed)
    {
        var rng = new Random(seed);
        float[] Values(int n, float scale) => Enumerable.Range(0, n).Select(_ => (float)(Half)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
        return new Inputs(Values(nq * heads * hd, 3f), Values(nk * kvHeads * hd, 1f), Values(nk * kvHeads * hd, 1f), nq, nk, heads, kvHeads, hd, causalOffset);
    }

    public static ushort[] Bits(float[] x) => x.Select(f => BitConverter.HalfToUInt16Bits((Half)f)).ToArray();

    public static float[] Floats(ushort[] bits) => bits.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();

    /// <summary>The kernel's output on <paramref name="ops"/>, widened from fp16; the output buffer starts as NaN so rows it skipped show.</summary>
    public static float[] Run(CudaOps ops, Inputs c)
    {
        var acc = ops.Accelerator;
        using var q = acc.Allocate1D(Bits(c.Q));
        using var k = acc.Allocate1D(Bits(c.K));
        using var v = acc.Allocate1D(Bits(c.V));
        using var o = acc.Allocate1D(Enumerable.Repeat(BitConverter.HalfToUInt16Bits(Half.NaN), c.Q.Length).ToArray());
        long before = ops.Counters.Snapshot().Launches;
        ops.TiledAttention(q.View, k.View, v.View, o.View, AttentionShape.Create(c.Nq, c.Nk, c.Heads, c.KvHeads, c.HeadDim, causal: false), c.CausalOffset);
        ops.Queue.Synchronize();
        Assert.Equal(before + 1, ops.Counters.Snapshot().Launches);
        return Floats(o.GetAsArray1D());
    }

    /// <summary>The host twin (<see cref="DeviceNumerics.TiledAttention"/>).</summary>
    public static float[] Host(Inputs c)
    {
        var o = new float[c.Q.Length];
        DeviceNumerics.TiledAttention(c.Q, c.K, c.V, o, c.Nq, c.Nk, c.Heads, c.KvHeads, c.HeadDim, c.CausalOffset);
        return o;
    }

    public static TheoryData<int, int, int, int, int, int> Shapes(bool small) => small
        ? new()
        {
            // nq, nk, heads, kv heads, head dim, causal offset (-1: none)
            { 20, 27, 2, 1, 32, 7 },   // a partial second tile, grouped-query heads, keys before the rows
            { 16, 16, 1, 1, 16, 0 },   // exactly one tile, the prefill's square causal case
            { 9, 21, 1, 1, 48, -1 },   // one partial tile, every key visible, head dim 48 (three chunks)
            { 40, 120, 1, 1, 16, 80 }, // eight key steps, the last partly past the keys
        }
        : new()
        {
            { 40, 40, 2, 2, 32, 0 },
            { 37, 53, 4, 2, 48, 16 },
            { 23, 30, 2, 1, 16, -1 },
            { 70, 70, 1, 1, 128, 0 },
            { 30, 45, 2, 2, 64, 3 },   // rows that see only some of the keys after them
        };
}

/// <summary>
/// Tiled attention as the engine's <c>ilgpu-cpu</c> device runs it (the host twin on the device memory, one counted
/// launch), and the host twin itself: close to plain fp32 attention, and the rules of the op.
/// </summary>
public sealed class TiledAttentionKernelTests(IlgpuCpuFixture fx) : IClassFixture<IlgpuCpuFixture>
{
    public static TheoryData<int, int, int, int, int, int> Shapes() => TiledAttentionCase.Shapes(small: false);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void OnTheCpuAcceleratorTheOpRunsTheHostTwinOnDeviceMemory(int nq, int nk, int heads, int kvHeads, int hd, int causalOffset)
    {
        Assert.True(fx.Ops.TiledAttentionOnHost);
        var c = TiledAttentionCase.Make(nq, nk, heads, kvHeads, hd, causalOffset, seed: nq * 31 + hd);
        Assert.Equal(TiledAttentionCase.Host(c), TiledAttentionCase.Run(fx.Ops, c));
    }

    /// <summary>The fixed summation order is still attention: within fp16 rounding of fp32 softmax(q·kᵀ/√d)·v.</summary>
    [Theory]
    [MemberData(nameof(Shapes))]
    public void TheHostTwinIsAttention(int nq, int nk, int heads, int kvHeads, int hd, int causalOffset)
    {
        var c = TiledAttentionCase.Make(nq, nk, heads, kvHeads, hd, causalOffset, seed: nq * 31 + hd);
        var tiled = TiledAttentionCase.Host(c);
        var exact = new float[c.Q.Length];
        ReferenceAttention(c, exact);
        for (int i = 0; i < exact.Length; i++) Assert.True(Math.Abs(tiled[i] - exact[i]) <= 2e-3f + 2e-3f * Math.Abs(exact[i]), $"element {i}: {tiled[i]} vs {exact[i]}");
    }

    /// <summary>softmax(q·kᵀ/√d)·v in double, row by row, each row over the keys it sees.</summary>
    private static void ReferenceAttention(TiledAttentionCase.Inputs c, float[] o)
    {
        int qs = c.Heads * c.HeadDim, ks = c.KvHeads * c.HeadDim, group = c.Heads / c.KvHeads;
        for (int h = 0; h < c.Heads; h++)
            for (int i = 0; i < c.Nq; i++)
            {
                int limit = c.CausalOffset >= 0 ? Math.Min(c.Nk, c.CausalOffset + i + 1) : c.Nk;
                var w = new double[limit];
                for (int j = 0; j < limit; j++)
                    for (int d = 0; d < c.HeadDim; d++) w[j] += (double)c.Q[i * qs + h * c.HeadDim + d] * c.K[j * ks + h / group * c.HeadDim + d] / Math.Sqrt(c.HeadDim);
                double max = w.Max(), sum = w.Sum(x => Math.Exp(x - max));
                for (int d = 0; d < c.HeadDim; d++)
                    o[i * qs + h * c.HeadDim + d] = (float)Enumerable.Range(0, limit).Sum(j => Math.Exp(w[j] - max) / sum * c.V[j * ks + h / group * c.HeadDim + d]);
            }
    }

    /// <summary>The load-time check a GPU model runs (here through the host twin, so exactly 0).</summary>
    [Fact]
    public void TheSelfCheckFindsNoDifferenceOnTheCpuAccelerator() => Assert.Equal(0, fx.Ops.TiledAttentionSelfCheck(48));

    [Fact]
    public void TheKernelItselfNeedsWarpsOfThirtyTwo()
    {
        var e = Assert.Throws<ArgumentException>(() => fx.Ops.TiledAttentionOnHost = false);
        Assert.Contains($"this accelerator's warps are {fx.Device.Accelerator.WarpSize} threads", e.Message);
    }

    [Fact]
    public void AHeadDimensionThatIsNotAMultipleOfSixteenIsRefused()
    {
        Assert.False(fx.Ops.TiledAttentionRuns(40));
        Assert.True(fx.Ops.TiledAttentionRuns(48));
        using var buf = fx.Device.Accelerator.Allocate1D<ushort>(8 * 40);
        var e = Assert.Throws<ArgumentException>(() => fx.Ops.TiledAttention(buf.View, buf.View, buf.View, buf.View, AttentionShape.Create(8, 8, 1, 1, 40, causal: false), 0));
        Assert.Contains("multiple of 16", e.Message);
    }
}

/// <summary>
/// The tensor-core form (one warp per tile, the m16n8k16 fragments) on a CPU accelerator with 32-thread warps, where
/// each mma is emulated from the fragments the lanes hold (the PTX ISA's layout): the same bits as the one-thread form
/// and the host twin. This is what checks the fragment indexing that the inline PTX relies on; the PTX itself only
/// runs on a GPU.
/// </summary>
[Collection(GpuShapedIlgpuCollection.Name)]
public sealed class TiledAttentionWarpTests(IlgpuGpuShapedCpuFixture fx) : IClassFixture<IlgpuGpuShapedCpuFixture>
{
    public static TheoryData<int, int, int, int, int, int> Shapes() => TiledAttentionCase.Shapes(small: true);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void AWarpPerTileGivesTheHostTwinsBits(int nq, int nk, int heads, int kvHeads, int hd, int causalOffset)
    {
        var ops = new CudaOps(fx.Accelerator) { TiledAttentionOnHost = false };
        var c = TiledAttentionCase.Make(nq, nk, heads, kvHeads, hd, causalOffset, seed: nk * 17 + hd);
        Assert.Equal(TiledAttentionCase.Host(c), TiledAttentionCase.Run(ops, c));
    }

    /// <summary>
    /// The check a GPU model runs at load, on the kernel itself: 0 with the emulated mma; a kernel that misreads the
    /// fragments (a1 and a2 of p·v swapped, tried by hand) is off by more than 0.1, far past the 1e-2 tolerance.
    /// </summary>
    [Fact]
    public void TheLoadTimeSelfCheckPassesOnTheWarpKernel()
    {
        var ops = new CudaOps(fx.Accelerator) { TiledAttentionOnHost = false };
        Assert.Equal(0, ops.TiledAttentionSelfCheck(32));
    }
}
