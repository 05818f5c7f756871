using System.Numerics.Tensors;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// An ILGPU CPU accelerator shaped like a GPU multiprocessor (8 warps of 32 threads: 256 threads per group), so the
/// one-group-per-row kernels run with the 256-thread groups <see cref="CudaOps.DefaultRowGroupSize"/> picks on an NVIDIA
/// GPU. The default CPU accelerator (<see cref="CudaDevice.CreateForTests"/>) allows only 16 threads per group.
/// </summary>
public sealed class IlgpuGpuShapedCpuFixture : IDisposable
{
    internal Context Context { get; } = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)).EnableAlgorithms());
    internal Accelerator Accelerator { get; }
    internal CudaOps Ops { get; }

    /// <summary><see cref="Ops"/> when its groups are <paramref name="rowGroupSize"/> threads, else new ops on the same accelerator with groups that size.</summary>
    internal CudaOps OpsWithGroups(int rowGroupSize) => rowGroupSize == Ops.RowGroupSize ? Ops : new CudaOps(Accelerator, rowGroupSize);

    public IlgpuGpuShapedCpuFixture()
    {
        Accelerator = Context.CreateCPUAccelerator(0);
        Ops = new CudaOps(Accelerator);
    }

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}

/// <summary>The decoder ops on the default CPU accelerator: row kernels with 16-thread groups.</summary>
public sealed class CudaDecoderKernelTestsGroup16(IlgpuCpuFixture fx) : CudaDecoderKernelTests, IClassFixture<IlgpuCpuFixture>
{
    private protected override Accelerator Acc => fx.Device.Accelerator;
    private protected override CudaOps Ops => fx.Ops;
    protected override int ExpectedGroupSize => 16;
}

/// <summary>
/// Runs alone: the GPU-shaped accelerator keeps 256 worker threads that spin at every group barrier, which on a
/// 2-core machine would starve the timing-bounded tests running beside it.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GpuShapedIlgpuCollection
{
    public const string Name = "ILGPU CPU accelerator with 256-thread groups";
}

/// <summary>The decoder ops with the GPU launch shape: row kernels with 256-thread groups.</summary>
[Collection(GpuShapedIlgpuCollection.Name)]
public sealed class CudaDecoderKernelTestsGroup256(IlgpuGpuShapedCpuFixture fx) : CudaDecoderKernelTests, IClassFixture<IlgpuGpuShapedCpuFixture>
{
    private protected override Accelerator Acc => fx.Accelerator;
    private protected override CudaOps Ops => fx.Ops;
    protected override int ExpectedGroupSize => 256;
}

/// <summary>
/// The ops of the fp16 GPU decoder (element-wise adds, fp16-output norms / SiLU·up / masked softmax, mixed row gather,
/// group-per-row argmax) on ILGPU's CPU accelerator against the CPU backend or plain reference loops, run at two
/// row-group sizes (the subclasses). fp16 outputs are compared with the fp32 reference rounded through System.Half: at
/// most 1 fp16 ulp apart, and almost all bit-identical (the kernels' sums are tree-ordered, so an occasional
/// rounding-boundary flip is the only expected difference).
/// </summary>
public abstract class CudaDecoderKernelTests
{
    private protected abstract Accelerator Acc { get; }
    private protected abstract CudaOps Ops { get; }
    /// <summary>The row group size this accelerator should get by default.</summary>
    protected abstract int ExpectedGroupSize { get; }

    private static float[] Rand(Random rng, int n, float scale = 1f) => CudaKernelTests.Rand(rng, n, scale);

    private static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double rel, double abs)
        => CudaKernelTests.Close(expected, actual, rel, abs);

    private float[] Read(MemoryBuffer1D<float, Stride1D.Dense> b) { Acc.Synchronize(); return b.GetAsArray1D(); }

    /// <summary>Sign-magnitude fp16 bits mapped to a monotonic integer line (+0 and -0 both 0).</summary>
    private static int OrderedHalf(ushort h) => (h & 0x8000) != 0 ? -(h & 0x7FFF) : h;

    private static void HalfClose(ReadOnlySpan<float> expected, ReadOnlySpan<ushort> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        int exact = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            ushort e = BitConverter.HalfToUInt16Bits((System.Half)expected[i]);
            int d = Math.Abs(OrderedHalf(e) - OrderedHalf(actual[i]));
            if (d > 1)
                Assert.Fail($"index {i}: expected fp16 {e:X4} ({expected[i]:R}), got {actual[i]:X4} ({(float)BitConverter.UInt16BitsToHalf(actual[i]):R}), {d} ulp apart");
            if (d == 0) exact++;
        }
        int allowedOff = Math.Max(1, expected.Length / 100);
        Assert.True(expected.Length - exact <= allowedOff, $"{expected.Length - exact} of {expected.Length} fp16 values are 1 ulp off (at most {allowedOff} expected)");
    }

    private ushort[] Read(MemoryBuffer1D<ushort, Stride1D.Dense> b) { Acc.Synchronize(); return b.GetAsArray1D(); }

    /// <summary>Every power-of-two row group size this accelerator supports (1 up to the default).</summary>
    private IEnumerable<int> GroupSizes()
    {
        for (int g = 1; g <= CudaOps.DefaultRowGroupSize(Acc); g *= 2) yield return g;
    }

    [Fact]
    public void RowGroupSizeIsAPowerOfTwoWithinLimits()
    {
        int g = CudaOps.DefaultRowGroupSize(Acc);
        Assert.Equal(ExpectedGroupSize, g);
        Assert.Equal(g, Ops.RowGroupSize);
        Assert.True(g >= 1 && g <= CudaKernels.MaxRowGroupSize && g <= Acc.MaxNumThreadsPerGroup, $"group size {g}");
        Assert.Equal(0, g & (g - 1));
        Assert.True(2 * g > Math.Min(CudaKernels.MaxRowGroupSize, Acc.MaxNumThreadsPerGroup), "the largest power of two within the limits");
        Assert.Equal(1, new CudaOps(Acc, 1).RowGroupSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => new CudaOps(Acc, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new CudaOps(Acc, -4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new CudaOps(Acc, 2 * g));
    }

    [Theory]
    [InlineData(5, 7)]
    [InlineData(3, 300)]
    [InlineData(1, 1)]
    public void AddBiasAddsPerColumn(int rows, int cols)
    {
        var rng = new Random(20 + cols);
        var x = Rand(rng, rows * cols, 4);
        var bias = Rand(rng, cols);
        var expected = new float[x.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) expected[r * cols + c] = x[r * cols + c] + bias[c];
        using var xb = Acc.Allocate1D(x);
        using var bb = Acc.Allocate1D(bias);
        Ops.AddBias(xb.View, rows, cols, bb.View);
        Assert.Equal(expected, Read(xb));
    }

    [Fact]
    public void AddIsElementWise()
    {
        var rng = new Random(21);
        var x = Rand(rng, 1001, 3);
        var y = Rand(rng, 1001, 3);
        var expected = x.Zip(y, (a, b) => a + b).ToArray();
        using var xb = Acc.Allocate1D(x);
        using var yb = Acc.Allocate1D(y);
        Ops.Add(xb.View, yb.View);
        Assert.Equal(expected, Read(xb));
        Assert.Equal(y, yb.GetAsArray1D());
    }

    [Theory]
    [InlineData(3, 1)]
    [InlineData(3, 7)]
    [InlineData(4, 300)]
    [InlineData(2, 4096)]
    public void RmsNormToHalfMatchesCpu(int rows, int dim)
    {
        var rng = new Random(22 + dim);
        var x = Rand(rng, rows * dim, 3);
        var w = Rand(rng, dim, 2);
        var expected = new float[x.Length];
        CpuOps.RmsNorm(x, expected, rows, dim, w, 1e-5f);
        using var xb = Acc.Allocate1D(x);
        using var wb = Acc.Allocate1D(w);
        using var db = Acc.Allocate1D<ushort>(x.Length);
        Ops.RmsNormToHalf(xb.View, db.View, rows, dim, wb.View, 1e-5f);
        HalfClose(expected, Read(db));
        Assert.Equal(x, xb.GetAsArray1D());
    }

    [Theory]
    [InlineData(3, 1)]
    [InlineData(3, 7)]
    [InlineData(4, 300)]
    [InlineData(2, 4096)]
    public void LayerNormToHalfMatchesCpu(int rows, int dim)
    {
        var rng = new Random(23 + dim);
        var x = Rand(rng, rows * dim, 2).Select(v => v + 0.7f).ToArray(); // a non-zero mean exercises the two passes
        var w = Rand(rng, dim);
        var b = Rand(rng, dim);
        var expected = new float[x.Length];
        CpuOps.LayerNorm(x, expected, rows, dim, w, b, 1e-5f);
        using var xb = Acc.Allocate1D(x);
        using var wb = Acc.Allocate1D(w);
        using var bb = Acc.Allocate1D(b);
        using var db = Acc.Allocate1D<ushort>(x.Length);
        Ops.LayerNormToHalf(xb.View, db.View, rows, dim, wb.View, bb.View, 1e-5f);
        HalfClose(expected, Read(db));
    }

    /// <summary>Raw scores [heads, nq, nk] = q_i·k_j per head (GQA), computed as Attention.Rows computes them before scaling.</summary>
    private static float[] RawScores(float[] q, float[] k, int nq, int nk, int heads, int kvHeads, int hd)
    {
        var s = new float[heads * nq * nk];
        int group = heads / kvHeads;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < nq; i++)
                for (int j = 0; j < nk; j++)
                    s[(h * nq + i) * nk + j] = TensorPrimitives.Dot<float>(q.AsSpan(i * heads * hd + h * hd, hd), k.AsSpan(j * kvHeads * hd + (h / group) * hd, hd));
        return s;
    }

    [Theory]
    [InlineData(4, 2, 9, 9, true)]      // prefill, causal, GQA
    [InlineData(4, 1, 1, 13, true)]     // decode step: one query against a longer cache
    [InlineData(2, 2, 5, 12, true)]     // block of queries after a cached prefix
    [InlineData(3, 3, 6, 6, false)]     // bidirectional
    [InlineData(2, 1, 3, 300, false)]   // nq < nk, no mask
    [InlineData(2, 2, 1, 1, true)]      // a single key
    [InlineData(1, 1, 2, 4096, true)]   // long rows
    public void ScaledMaskedSoftmaxToHalfMatchesCpuAttentionRows(int heads, int kvHeads, int nq, int nk, bool causal)
    {
        int hd = 16;
        var rng = new Random(25 + nq * 31 + nk);
        var q = Rand(rng, nq * heads * hd, 2);
        var k = Rand(rng, nk * kvHeads * hd, 2);
        var scores = RawScores(q, k, nq, nk, heads, kvHeads, hd);
        var expected = Attention.Rows(q, k, nq, nk, heads, kvHeads, hd, Enumerable.Range(0, nq).ToArray(), causal);
        using var sb = Acc.Allocate1D(scores);
        using var pb = Acc.Allocate1D<ushort>(scores.Length);
        Ops.ScaledMaskedSoftmaxToHalf(sb.View, pb.View, heads, nq, nk, causal ? nk - nq : -1, 1f / MathF.Sqrt(hd));
        Assert.Equal(scores, Read(sb)); // the raw scores are left alone: nothing reads probabilities in fp32
        var p16 = pb.GetAsArray1D();
        HalfClose(expected, p16);
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < nq; i++)
            {
                int row = (h * nq + i) * nk, visible = causal ? nk - nq + i + 1 : nk;
                for (int j = visible; j < nk; j++) Assert.Equal(0, p16[row + j]);
            }
    }

    /// <summary>Score rows padded to a multiple of 8 (the GEMMs' leading dimension): the padding is neither read nor written.</summary>
    [Theory]
    [InlineData(2, 13, true)]
    [InlineData(3, 626, false)]
    public void ScaledMaskedSoftmaxToHalfReadsPaddedRows(int nq, int nk, bool causal)
    {
        int heads = 2, ld = (nk + 7) & ~7;
        var rng = new Random(nq * 7 + nk);
        var dense = Rand(rng, heads * nq * nk, 4);
        var padded = new float[heads * nq * ld];
        for (int r = 0; r < heads * nq; r++)
        {
            dense.AsSpan(r * nk, nk).CopyTo(padded.AsSpan(r * ld));
            padded.AsSpan(r * ld + nk, ld - nk).Fill(float.NaN);
        }
        using var db = Acc.Allocate1D(dense);
        using var dp = Acc.Allocate1D<ushort>(dense.Length);
        using var pb = Acc.Allocate1D(padded);
        using var pp = Acc.Allocate1D<ushort>(padded.Length);
        ushort sentinel = 0x7777;
        pp.CopyFromCPU(Enumerable.Repeat(sentinel, padded.Length).ToArray());
        Ops.ScaledMaskedSoftmaxToHalf(db.View, dp.View, heads, nq, nk, causal ? nk - nq : -1, 0.25f);
        Ops.ScaledMaskedSoftmaxToHalf(pb.View, pp.View, heads, nq, nk, causal ? nk - nq : -1, 0.25f, ld);
        var a = dp.GetAsArray1D();
        var b = Read(pp);
        for (int r = 0; r < heads * nq; r++)
        {
            Assert.Equal(a.AsSpan(r * nk, nk).ToArray(), b.AsSpan(r * ld, nk).ToArray());
            for (int j = nk; j < ld; j++) Assert.Equal(sentinel, b[r * ld + j]);
        }
    }

    [Fact]
    public void ScaledMaskedSoftmaxToHalfWithAnyCausalOffset()
    {
        // causalOffset 2 with nq = nk = 5: query i sees keys 0..2+i (clamped to nk); plain reference loop.
        int heads = 2, nq = 5, nk = 5, offset = 2;
        float scale = 0.3f;
        var rng = new Random(26);
        var scores = Rand(rng, heads * nq * nk, 6);
        var expected = new float[scores.Length];
        for (int r = 0; r < heads * nq; r++)
        {
            int visible = Math.Min(nk, offset + r % nq + 1);
            var row = expected.AsSpan(r * nk, visible);
            for (int j = 0; j < visible; j++) row[j] = scores[r * nk + j] * scale;
            CpuOps.Softmax(row);
        }
        using var sb = Acc.Allocate1D(scores);
        using var pb = Acc.Allocate1D<ushort>(scores.Length);
        Ops.ScaledMaskedSoftmaxToHalf(sb.View, pb.View, heads, nq, nk, offset, scale);
        var p16 = pb.GetAsArray1D();
        HalfClose(expected, p16);
        Assert.Equal(0, p16[0 * nk + 3]);
        Assert.Equal(0, p16[1 * nk + 4]);
        Assert.NotEqual(0, p16[2 * nk + 4]);
    }

    [Fact]
    public void RowGatherMixedTakesNegativeIndicesFromExtra()
    {
        var rng = new Random(27);
        int rowLen = 13;
        var src = Rand(rng, 10 * rowLen);
        var extra = Rand(rng, 3 * rowLen, 5);
        int[] index = [2, -1, 9, -3, 0, -2, 2];
        var expected = index.SelectMany(i => (i >= 0 ? src.AsSpan(i * rowLen, rowLen) : extra.AsSpan((-i - 1) * rowLen, rowLen)).ToArray()).ToArray();
        using var sb = Acc.Allocate1D(src);
        using var eb = Acc.Allocate1D(extra);
        using var ib = Acc.Allocate1D(index);
        using var db = Acc.Allocate1D<float>(index.Length * rowLen);
        Ops.RowGatherMixed(sb.View, eb.View, ib.View, db.View, rowLen);
        Assert.Equal(expected, Read(db));
    }

    [Fact]
    public void RowGatherMixedWithDummyExtra()
    {
        var rng = new Random(28);
        int rowLen = 300;
        var src = Rand(rng, 6 * rowLen);
        int[] index = [5, 0, 3, 3];
        using var sb = Acc.Allocate1D(src);
        using var eb = Acc.Allocate1D(new float[1]);
        using var ib = Acc.Allocate1D(index);
        using var db = Acc.Allocate1D<float>(index.Length * rowLen);
        Ops.RowGatherMixed(sb.View, eb.View, ib.View, db.View, rowLen);
        Assert.Equal(index.SelectMany(i => src.AsSpan(i * rowLen, rowLen).ToArray()).ToArray(), Read(db));
    }

    [Fact]
    public void ArgMaxRowsFirstOfTies()
    {
        var rng = new Random(29);
        int rows = 7, cols = 300;
        var x = Rand(rng, rows * cols);
        x[1 * cols + 17] = 5f; x[1 * cols + 200] = 5f;      // tie: first wins
        x[2 * cols] = 7f;                                     // first column
        x[3 * cols + cols - 1] = 9f;                          // last column
        x.AsSpan(4 * cols, cols).Fill(0.5f);                  // all equal: 0
        x.AsSpan(5 * cols, cols).Fill(float.NegativeInfinity); // all -inf: 0
        x[6 * cols + 255] = 3f; x[6 * cols + 256] = 3f;      // tie where the later index sits on a lower thread
        using var xb = Acc.Allocate1D(x);
        using var rb = Acc.Allocate1D<int>(rows);
        Ops.ArgMaxRows(xb.View, rows, cols, rb.View);
        Acc.Synchronize();
        var got = rb.GetAsArray1D();
        for (int r = 0; r < rows; r++)
            Assert.Equal(CpuOps.ArgMax(x.AsSpan(r * cols, cols)), got[r]);
        Assert.Equal(new[] { got[0], 17, 0, cols - 1, 0, 0, 255 }, got);
    }

    [Fact]
    public void ArgMaxRowsOverAVocabularyRow()
    {
        var rng = new Random(30);
        int rows = 3, cols = 32000;
        var x = Rand(rng, rows * cols, 10);
        x[1 * cols + 31999] = 11f;
        x[2 * cols + 20001] = 12f; x[2 * cols + 30001] = 12f; x[2 * cols + 20000 + 256] = 12f;
        using var xb = Acc.Allocate1D(x);
        using var rb = Acc.Allocate1D<int>(rows);
        Ops.ArgMaxRows(xb.View, rows, cols, rb.View);
        Acc.Synchronize();
        var got = rb.GetAsArray1D();
        Assert.Equal(CpuOps.ArgMax(x.AsSpan(0, cols)), got[0]);
        Assert.Equal(31999, got[1]);
        Assert.Equal(20001, got[2]);
    }

    [Fact]
    public void ArgMaxRowsSingleColumn()
    {
        using var xb = Acc.Allocate1D(new[] { 3f, -1f });
        using var rb = Acc.Allocate1D(new[] { 9, 9 });
        Ops.ArgMaxRows(xb.View, 2, 1, rb.View);
        Acc.Synchronize();
        Assert.Equal(new[] { 0, 0 }, rb.GetAsArray1D());
    }

    /// <summary>
    /// The tree reductions at every group size from 1 up to the default, with a row length (37) that is a multiple of
    /// none of them but 1 and, for the masked softmax, rows with fewer visible keys than threads.
    /// </summary>
    [Fact]
    public void RowKernelsAgreeAtEveryGroupSize()
    {
        var rng = new Random(31);
        int rows = 3, dim = 37, offset = 1;
        var x = Rand(rng, rows * dim, 3).Select(v => v + 0.4f).ToArray();
        var w = Rand(rng, dim);
        var b = Rand(rng, dim);
        var rms = new float[x.Length];
        CpuOps.RmsNorm(x, rms, rows, dim, w, 1e-6f);
        var ln = new float[x.Length];
        CpuOps.LayerNorm(x, ln, rows, dim, w, b, 1e-6f);
        var soft = (float[])x.Clone();
        for (int r = 0; r < rows; r++) CpuOps.Softmax(soft.AsSpan(r * dim, dim));
        var causal = new float[x.Length];                                    // query r sees keys 0..offset + r
        for (int r = 0; r < rows; r++)
        {
            x.AsSpan(r * dim, offset + r + 1).CopyTo(causal.AsSpan(r * dim));
            CpuOps.Softmax(causal.AsSpan(r * dim, offset + r + 1));
        }
        var xArg = (float[])x.Clone();
        xArg[1 * dim + 30] = 9f; xArg[1 * dim + 2] = 9f;
        var arg = Enumerable.Range(0, rows).Select(r => CpuOps.ArgMax(xArg.AsSpan(r * dim, dim))).ToArray();
        Assert.Equal(2, arg[1]);
        var sizes = GroupSizes().ToArray();
        Assert.Equal(1, sizes[0]);
        foreach (int g in sizes)
        {
            var ops = new CudaOps(Acc, g);
            using var xb = Acc.Allocate1D(x);
            using var wb = Acc.Allocate1D(w);
            using var bb = Acc.Allocate1D(b);
            using var hb = Acc.Allocate1D<ushort>(x.Length);
            ops.RmsNormToHalf(xb.View, hb.View, rows, dim, wb.View, 1e-6f);
            HalfClose(rms, Read(hb));
            ops.LayerNormToHalf(xb.View, hb.View, rows, dim, wb.View, bb.View, 1e-6f);
            HalfClose(ln, Read(hb));
            ops.ScaledMaskedSoftmaxToHalf(xb.View, hb.View, 1, rows, dim, -1, 1f);
            HalfClose(soft, Read(hb));
            ops.ScaledMaskedSoftmaxToHalf(xb.View, hb.View, 1, rows, dim, offset, 1f);
            var pc = Read(hb);
            HalfClose(causal, pc);
            for (int r = 0; r < rows; r++)
                for (int j = offset + r + 1; j < dim; j++) Assert.Equal(0, pc[r * dim + j]);
            using var ab = Acc.Allocate1D(xArg);
            using var rb = Acc.Allocate1D<int>(rows);
            ops.ArgMaxRows(ab.View, rows, dim, rb.View);
            Acc.Synchronize();
            Assert.Equal(arg, rb.GetAsArray1D());
        }
    }

    [Fact]
    public void ZeroRowsLaunchNothing()
    {
        using var xb = Acc.Allocate1D(new[] { 1.5f });
        using var hb = Acc.Allocate1D(new ushort[] { 0xABCD });
        using var ib = Acc.Allocate1D(new[] { 7 });
        Ops.AddBias(xb.View, 0, 5, xb.View);
        Ops.Add(xb.View.SubView(0, 0), xb.View);
        Ops.RmsNormToHalf(xb.View, hb.View, 0, 4096, xb.View, 1e-5f);
        Ops.LayerNormToHalf(xb.View, hb.View, 0, 4096, xb.View, xb.View, 1e-5f);
        Ops.ScaledMaskedSoftmaxToHalf(xb.View, hb.View, 0, 1, 4096, 0, 1f);
        Ops.ScaledMaskedSoftmaxToHalf(xb.View, hb.View, 32, 0, 4096, 0, 1f);
        Ops.ArgMaxRows(xb.View, 0, 32000, ib.View);
        Ops.RowGatherMixed(xb.View, xb.View, ib.View.SubView(0, 0), xb.View, 4096);
        Acc.Synchronize();
        Assert.Equal(new[] { 1.5f }, xb.GetAsArray1D());
        Assert.Equal(new ushort[] { 0xABCD }, hb.GetAsArray1D());
        Assert.Equal(new[] { 7 }, ib.GetAsArray1D());
    }

    [Fact]
    public void ShortViewsAreRejectedBeforeLaunch()
    {
        using var xb = Acc.Allocate1D<float>(10);
        using var hb = Acc.Allocate1D<ushort>(10);
        using var ib = Acc.Allocate1D<int>(2);
        Assert.Throws<ArgumentException>(() => Ops.Add(xb.View, xb.View.SubView(0, 9)));
        Assert.Throws<ArgumentException>(() => Ops.AddBias(xb.View, 2, 6, xb.View));
        Assert.Throws<ArgumentException>(() => Ops.RmsNormToHalf(xb.View, hb.View.SubView(0, 9), 2, 5, xb.View, 1e-5f));
        Assert.Throws<ArgumentException>(() => Ops.RmsNormToHalf(xb.View, hb.View, 2, 5, xb.View.SubView(0, 4), 1e-5f));
        Assert.Throws<ArgumentException>(() => Ops.LayerNormToHalf(xb.View, hb.View, 2, 5, xb.View, xb.View.SubView(0, 4), 1e-5f));
        Assert.Throws<ArgumentException>(() => Ops.ScaledMaskedSoftmaxToHalf(xb.View, hb.View, 2, 3, 2, -1, 1f));
        Assert.Throws<ArgumentException>(() => Ops.ArgMaxRows(xb.View, 2, 0, ib.View));
        Assert.Throws<ArgumentException>(() => Ops.ArgMaxRows(xb.View, 3, 3, ib.View));
        Assert.Throws<ArgumentException>(() => Ops.RowGatherMixed(xb.View, xb.View, ib.View, xb.View, 6));
    }

    /// <summary>The grouped policy-signal kernel equals the CPU's attention rows (any rows, GQA, causal, firstKey).</summary>
    [Theory]
    [InlineData(10, 10, 4, 2, 8, true, 0)]
    [InlineData(10, 10, 4, 2, 8, true, 3)]
    [InlineData(4, 11, 2, 1, 8, true, 2)]
    [InlineData(300, 300, 2, 2, 16, true, 0)]
    [InlineData(37, 37, 3, 3, 8, false, 1)]
    public void AttentionRowsGroupedMatchesCpu(int nq, int nk, int qHeads, int kvHeads, int hd, bool causal, int firstKey)
    {
        var rng = new Random(nq + nk * 7 + firstKey);
        var q = Rand(rng, nq * qHeads * hd, 2);
        var k = Rand(rng, nk * kvHeads * hd, 2);
        int[] rows = nq == 4 ? [3, 0] : [nq - 1, 2, 5, 0];
        var expected = Attention.Rows(q, k, nq, nk, qHeads, kvHeads, hd, rows, causal, firstKey);
        using var qb = Acc.Allocate1D(q);
        using var kb = Acc.Allocate1D(k);
        using var rb = Acc.Allocate1D(rows);
        using var res = Acc.Allocate1D<float>(expected.Length);
        Ops.AttentionRowsGrouped(qb.View, kb.View, rb.View, res.View, AttentionShape.Create(nq, nk, qHeads, kvHeads, hd, causal), firstKey);
        Acc.Synchronize();
        Close(expected, res.GetAsArray1D(), 1e-5, 1e-7);
    }

    /// <summary>The fused q|k|v split equals separate RoPE (CpuOps.ApplyRope) on q and k, with fp16 copies and v untouched.</summary>
    [Theory]
    [InlineData(5, 4, 4, 8, true)]
    [InlineData(7, 4, 2, 6, true)]
    [InlineData(3, 2, 1, 4, false)]
    public void QkvSplitRopeMatchesSeparateRope(int rows, int heads, int kvHeads, int hd, bool rope)
    {
        var rng = new Random(rows * 31 + heads);
        var shape = new QkvShape(heads, kvHeads, hd, rope ? 1 : 0);
        var qkv = Rand(rng, rows * shape.Width, 3);
        int[] positions = Enumerable.Range(0, rows).Select(r => 3 * r + 1).ToArray();
        var invFreq = CpuOps.RopeInvFreq(hd, 10000);
        var (cos, sin) = CudaKernels.RopeTables(invFreq, 64);
        var q = new float[rows * shape.QDim];
        var k = new float[rows * shape.KvDim];
        var v = new float[rows * shape.KvDim];
        for (int r = 0; r < rows; r++)
        {
            qkv.AsSpan(r * shape.Width, shape.QDim).CopyTo(q.AsSpan(r * shape.QDim));
            qkv.AsSpan(r * shape.Width + shape.QDim, shape.KvDim).CopyTo(k.AsSpan(r * shape.KvDim));
            qkv.AsSpan(r * shape.Width + shape.QDim + shape.KvDim, shape.KvDim).CopyTo(v.AsSpan(r * shape.KvDim));
        }
        if (rope)
        {
            CpuOps.ApplyRope(q, rows, heads, hd, positions, invFreq);
            CpuOps.ApplyRope(k, rows, kvHeads, hd, positions, invFreq);
        }
        using var dQkv = Acc.Allocate1D(qkv);
        using var dPos = Acc.Allocate1D(positions);
        using var dCos = Acc.Allocate1D(cos);
        using var dSin = Acc.Allocate1D(sin);
        using var dq = Acc.Allocate1D<float>(q.Length);
        using var dk = Acc.Allocate1D<float>(k.Length);
        using var dqh = Acc.Allocate1D<ushort>(q.Length);
        using var dkh = Acc.Allocate1D<ushort>(k.Length + shape.KvDim); // a cache view that starts one row in
        using var dvh = Acc.Allocate1D<ushort>(v.Length + shape.KvDim);
        Ops.QkvSplitRope(dQkv.View, rows, dPos.View, dCos.View, dSin.View, dq.View, dk.View, dqh.View,
            dkh.View.SubView(shape.KvDim, k.Length), dvh.View.SubView(shape.KvDim, v.Length), shape);
        Acc.Synchronize();
        Close(q, dq.GetAsArray1D(), 1e-6, 1e-6);
        Close(k, dk.GetAsArray1D(), 1e-6, 1e-6);
        static float[] Widen(ushort[] h) => h.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
        static float[] Round(float[] x) => x.Select(f => (float)(System.Half)f).ToArray();
        Close(Round(q), Widen(dqh.GetAsArray1D()), 1e-3, 1e-3);
        Close(Round(k), Widen(dkh.GetAsArray1D()[shape.KvDim..]), 1e-3, 1e-3);
        Assert.Equal(Round(v), Widen(dvh.GetAsArray1D()[shape.KvDim..])); // v is not rotated: exact rounding
    }

    [Fact]
    public void SiluMulSplitToHalfMatchesSiluMul()
    {
        var rng = new Random(77);
        int rows = 9, inter = 37;
        var gu = Rand(rng, rows * 2 * inter, 4);
        var gate = new float[rows * inter];
        var up = new float[rows * inter];
        for (int r = 0; r < rows; r++)
        {
            gu.AsSpan(r * 2 * inter, inter).CopyTo(gate.AsSpan(r * inter));
            gu.AsSpan(r * 2 * inter + inter, inter).CopyTo(up.AsSpan(r * inter));
        }
        CpuOps.SiluMul(gate, up);
        using var d = Acc.Allocate1D(gu);
        using var o = Acc.Allocate1D<ushort>(rows * inter);
        Ops.SiluMulSplitToHalf(d.View, o.View, rows, inter);
        Acc.Synchronize();
        var got = o.GetAsArray1D().Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
        Close(gate.Select(f => (float)(System.Half)f).ToArray(), got, 1e-3, 1e-3);
    }
}
