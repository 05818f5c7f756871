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
    public void EmbeddingGather()
    {
        var rng = new Random(1);
        int vocab = 50, dim = 24;
        var table = Rand(rng, vocab * dim);
        int[] ids = [3, 0, 49, 3, 17];
        using var t = Acc.Allocate1D(table);
        using var i = Acc.Allocate1D(ids);
        using var d = Acc.Allocate1D<float>(ids.Length * dim);
        Ops.EmbeddingGather(t.View, i.View, d.View, dim);
        var expected = ids.SelectMany(id => table.AsSpan(id * dim, dim).ToArray()).ToArray();
        Assert.Equal(expected, Read(d));
    }

    [Fact]
    public void RmsNorm()
    {
        var rng = new Random(2);
        int rows = 5, dim = 96;
        var x = Rand(rng, rows * dim, 3);
        var w = Rand(rng, dim);
        var expected = new float[x.Length];
        CpuOps.RmsNorm(x, expected, rows, dim, w, 1e-5f);
        using var xb = Acc.Allocate1D(x);
        using var wb = Acc.Allocate1D(w);
        using var db = Acc.Allocate1D<float>(x.Length);
        Ops.RmsNorm(xb.View, db.View, rows, dim, wb.View, 1e-5f);
        Close(expected, Read(db));
    }

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

    [Fact]
    public void RopeWithPerRowPositions()
    {
        var rng = new Random(4);
        int rows = 6, heads = 3, hd = 16, maxPos = 4096;
        var x = Rand(rng, rows * heads * hd);
        int[] pos = [0, 1, 7, 600, 4095, 2];
        var inv = CpuOps.RopeInvFreq(hd, 10000);
        var expected = (float[])x.Clone();
        CpuOps.ApplyRope(expected, rows, heads, hd, pos, inv);
        var (cos, sin) = CudaKernels.RopeTables(inv, maxPos);
        using var xb = Acc.Allocate1D(x);
        using var pb = Acc.Allocate1D(pos);
        using var cb = Acc.Allocate1D(cos);
        using var sb = Acc.Allocate1D(sin);
        Ops.Rope(xb.View, rows, heads, hd, pb.View, cb.View, sb.View);
        Close(expected, Read(xb));
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
    public void SiluMul()
    {
        var rng = new Random(5);
        var g = Rand(rng, 500, 5);
        var u = Rand(rng, 500, 2);
        var expected = (float[])g.Clone();
        CpuOps.SiluMul(expected, u);
        using var gb = Acc.Allocate1D(g);
        using var ub = Acc.Allocate1D(u);
        Ops.SiluMul(gb.View, ub.View);
        Close(expected, Read(gb));
    }

    [Fact]
    public void Softmax()
    {
        var rng = new Random(6);
        int rows = 7, cols = 129;
        var x = Rand(rng, rows * cols, 8);
        var expected = (float[])x.Clone();
        for (int r = 0; r < rows; r++) CpuOps.Softmax(expected.AsSpan(r * cols, cols));
        using var xb = Acc.Allocate1D(x);
        Ops.Softmax(xb.View, rows, cols);
        Close(expected, Read(xb));
    }

    [Theory]
    [InlineData(9, 9, 4, 2, 16, true, 9)]    // prefill, GQA
    [InlineData(1, 13, 4, 1, 8, true, 20)]   // decode step against a cache buffer with spare capacity
    [InlineData(5, 12, 2, 2, 8, true, 16)]   // block of queries after a cached prefix
    [InlineData(6, 6, 4, 4, 12, false, 6)]   // vision tower: bidirectional
    public void AttentionMatchesCpu(int nq, int nk, int qHeads, int kvHeads, int hd, bool causal, int capacity)
    {
        var rng = new Random(nq * 100 + nk);
        var q = Rand(rng, nq * qHeads * hd, 2);
        var k = Rand(rng, capacity * kvHeads * hd, 2);
        var v = Rand(rng, capacity * kvHeads * hd);
        var expected = new float[q.Length];
        Attention.MultiHead(q, k.AsSpan(0, nk * kvHeads * hd), v.AsSpan(0, nk * kvHeads * hd), expected, nq, nk, qHeads, kvHeads, hd, causal);
        using var qb = Acc.Allocate1D(q);
        using var kb = Acc.Allocate1D(k);
        using var vb = Acc.Allocate1D(v);
        using var ob = Acc.Allocate1D<float>(q.Length);
        Ops.Attention(qb.View, kb.View, vb.View, ob.View, AttentionShape.Create(nq, nk, qHeads, kvHeads, hd, causal));
        Close(expected, Read(ob), abs: 2e-6);
    }

    [Theory]
    [InlineData(10, 10, 4, 2, 8, true, 0)]
    [InlineData(10, 10, 4, 2, 8, true, 3)]
    [InlineData(4, 11, 2, 1, 8, true, 2)]
    public void AttentionRowsMatchesCpu(int nq, int nk, int qHeads, int kvHeads, int hd, bool causal, int firstKey)
    {
        var rng = new Random(nq + nk * 7 + firstKey);
        var q = Rand(rng, nq * qHeads * hd, 2);
        var k = Rand(rng, nk * kvHeads * hd, 2);
        int[] rows = nq == 4 ? [3, 0] : [nq - 1, 2, 5];
        var expected = Attention.Rows(q, k, nq, nk, qHeads, kvHeads, hd, rows, causal, firstKey);
        using var qb = Acc.Allocate1D(q);
        using var kb = Acc.Allocate1D(k);
        using var rb = Acc.Allocate1D(rows);
        using var res = Acc.Allocate1D<float>(expected.Length);
        Ops.AttentionRows(qb.View, kb.View, rb.View, res.View, AttentionShape.Create(nq, nk, qHeads, kvHeads, hd, causal), firstKey);
        Close(expected, Read(res));
    }

    [Fact]
    public void RowGatherCompactsRows()
    {
        var rng = new Random(8);
        int rows = 12, rowLen = 20;
        var src = Rand(rng, rows * rowLen);
        int[] keep = [0, 1, 4, 5, 9, 11];
        using var sb = Acc.Allocate1D(src);
        using var kb = Acc.Allocate1D(keep);
        using var db = Acc.Allocate1D<float>(keep.Length * rowLen);
        Ops.RowGather(sb.View, kb.View, db.View, rowLen);
        var expected = keep.SelectMany(r => src.AsSpan(r * rowLen, rowLen).ToArray()).ToArray();
        Assert.Equal(expected, Read(db));
    }

    [Fact]
    public void KvAppendWritesAfterExistingRows()
    {
        var rng = new Random(9);
        int capacity = 10, rowLen = 16, existing = 4, added = 3;
        var cache = Rand(rng, capacity * rowLen);
        var add = Rand(rng, added * rowLen);
        var expected = (float[])cache.Clone();
        add.CopyTo(expected, existing * rowLen);
        using var cb = Acc.Allocate1D(cache);
        using var ab = Acc.Allocate1D(add);
        Ops.KvAppend(cb.View, ab.View, existing, rowLen);
        Assert.Equal(expected, Read(cb));
        Assert.Throws<ArgumentException>(() => Ops.KvAppend(cb.View, ab.View, capacity - 2, rowLen));
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
    public void HalfConversionsMatchSystemHalfBitForBit()
    {
        var rng = new Random(11);
        float[] special = [0f, -0f, 65504f, 65519.99f, 65520f, -70000f, 1e-6f, -3.14159f, 6.1035156e-5f, 6.0e-5f,
            5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f, 1e-9f, float.PositiveInfinity, float.NegativeInfinity, float.NaN,
            1.00048828125f, 1.00146484375f, 2049f, 2051f];
        var x = Rand(rng, 300, 100).Concat(Rand(rng, 100, 1e-4f)).Concat(special).ToArray();
        using var xb = Acc.Allocate1D(x);
        using var hb = Acc.Allocate1D<ushort>(x.Length);
        using var fb = Acc.Allocate1D<float>(x.Length);
        Ops.ToHalf(xb.View, hb.View);
        Ops.ToFloat(hb.View, fb.View);
        var back = Read(fb);
        var bits = hb.GetAsArray1D();
        for (int i = 0; i < x.Length; i++)
        {
            var h = (System.Half)x[i];
            if (System.Half.IsNaN(h)) { Assert.True(float.IsNaN(back[i])); continue; }
            Assert.True(BitConverter.HalfToUInt16Bits(h) == bits[i], $"x = {x[i]:R}: expected {BitConverter.HalfToUInt16Bits(h):X4}, got {bits[i]:X4}");
            Assert.Equal(BitConverter.SingleToInt32Bits((float)h), BitConverter.SingleToInt32Bits(back[i]));
        }
    }
}
