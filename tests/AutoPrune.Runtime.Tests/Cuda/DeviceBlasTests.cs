using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;
using Xunit;
using Half = System.Half;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// The row-major GEMMs of <see cref="DeviceBlas"/> go to cuBLAS as column-major calls. Here the very same
/// <see cref="GemmCall"/>s run through the host reference executor on ILGPU's CPU accelerator and are compared with
/// plain row-major loops, including the strided, offset batches the attention uses for grouped-query heads.
/// </summary>
public sealed class DeviceBlasTests(IlgpuCpuFixture fx) : IClassFixture<IlgpuCpuFixture>
{
    private Accelerator Acc => fx.Device.Accelerator;

    private static ushort[] RandomHalf(Random rng, int n) =>
        Enumerable.Range(0, n).Select(_ => BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 2 - 1))).ToArray();

    private static float F(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    private static void Close(float expected, float actual, string where)
    {
        if (!(Math.Abs(expected - actual) <= 1e-4 + 1e-4 * Math.Abs(expected)))
            Assert.Fail($"{where}: expected {expected:R}, got {actual:R}");
    }

    [Theory]
    [InlineData(1, 1, 1, false)]
    [InlineData(5, 7, 3, false)]
    [InlineData(33, 48, 130, true)]
    public void LinearIsRowMajorAWt(int m, int k, int n, bool accumulate)
    {
        var rng = new Random(m * 100 + k);
        var a = RandomHalf(rng, m * k);
        var w = RandomHalf(rng, n * k);
        var c0 = Enumerable.Range(0, m * n).Select(i => (float)(i % 7) - 3f).ToArray();
        using var blas = new DeviceBlas(new HostGemmExecutor(Acc));
        using var da = Acc.Allocate1D(a);
        using var dw = Acc.Allocate1D(w);
        using var dc = Acc.Allocate1D(c0);
        blas.Linear(da.View, m, k, dw.View, n, dc.View, accumulate);
        Acc.Synchronize();
        var c = dc.GetAsArray1D();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                float s = accumulate ? c0[i * n + j] : 0f;
                for (int l = 0; l < k; l++) s += F(a[i * k + l]) * F(w[j * k + l]);
                Close(s, c[i * n + j], $"c[{i},{j}]");
            }
    }

    /// <summary>
    /// The attention's score GEMM for query-head group g: per kv head b, C_b = Q[rows, head b·group+g] · K[rows, head b]ᵀ,
    /// operands addressed with offsets, row strides and batch strides, as <c>LlavaModel.Attend</c> issues it.
    /// </summary>
    [Theory]
    [InlineData(4, 4, 6, 9, 8)]   // multi-head
    [InlineData(4, 2, 5, 11, 6)]  // grouped-query (2 query heads per kv head)
    [InlineData(8, 1, 1, 7, 4)]   // multi-query, one query row (a decode step)
    public void AttentionShapedBatchesMatchPerHeadLoops(int heads, int kvHeads, int nq, int nk, int hd)
    {
        int group = heads / kvHeads, qd = heads * hd, kvd = kvHeads * hd;
        var rng = new Random(heads * 10 + nq);
        var q = RandomHalf(rng, nq * qd);
        var k = RandomHalf(rng, nk * kvd);
        var v = RandomHalf(rng, nk * kvd);
        var p = RandomHalf(rng, heads * nq * nk);
        using var blas = new DeviceBlas(new HostGemmExecutor(Acc));
        using var dq = Acc.Allocate1D(q);
        using var dk = Acc.Allocate1D(k);
        using var dv = Acc.Allocate1D(v);
        using var dp = Acc.Allocate1D(p);
        using var ds = Acc.Allocate1D<float>(heads * nq * nk);
        using var dout = Acc.Allocate1D<ushort>(nq * qd);
        long per = (long)nq * nk;
        for (int g = 0; g < group; g++)
        {
            ArrayView<ushort> qv = dq.View, kv = dk.View, pv = dp.View, vv = dv.View, ov = dout.View;
            ArrayView<float> sv = ds.View;
            blas.BatchedTransB(nq, hd, nk, kvHeads,
                qv.SubView(g * hd, (long)(nq - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd,
                kv, kvd, hd,
                sv.SubView(g * per, (kvHeads - 1) * group * per + per), nk, group * per);
            blas.BatchedNN(nq, nk, hd, kvHeads,
                pv.SubView(g * per, (kvHeads - 1) * group * per + per), nk, group * per,
                vv, kvd, hd,
                ov.SubView(g * hd, (long)(nq - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd);
        }
        Acc.Synchronize();
        var scores = ds.GetAsArray1D();
        var outp = dout.GetAsArray1D();
        for (int h = 0; h < heads; h++)
        {
            int kh = h / group;
            for (int i = 0; i < nq; i++)
            {
                for (int j = 0; j < nk; j++)
                {
                    float s = 0;
                    for (int d = 0; d < hd; d++) s += F(q[i * qd + h * hd + d]) * F(k[j * kvd + kh * hd + d]);
                    Close(s, scores[(h * nq + i) * nk + j], $"score h{h} i{i} j{j}");
                }
                for (int d = 0; d < hd; d++)
                {
                    float s = 0;
                    for (int j = 0; j < nk; j++) s += F(p[(h * nq + i) * nk + j]) * F(v[j * kvd + kh * hd + d]);
                    float expected = (float)(Half)s; // fp16 output
                    float got = F(outp[i * qd + h * hd + d]);
                    Assert.True(Math.Abs(expected - got) <= 2e-3 * Math.Max(1, Math.Abs(expected)), $"out h{h} i{i} d{d}: expected {expected}, got {got}");
                }
            }
        }
    }

    [Fact]
    public void ViewsTooSmallForTheCallAreRejected()
    {
        using var blas = new DeviceBlas(new HostGemmExecutor(Acc));
        using var a = Acc.Allocate1D<ushort>(10);
        using var w = Acc.Allocate1D<ushort>(15);
        using var c = Acc.Allocate1D<float>(5);
        var e = Assert.Throws<ArgumentException>(() => blas.Linear(a.View, 2, 5, w.View, 3, c.View));
        Assert.Contains("output", e.Message);
    }

    [Fact]
    public void MappingsSwapOperandsAndKeepStrides()
    {
        var t = DeviceBlas.MapTransB(m: 3, k: 4, n: 5, aRowStride: 6, wRowStride: 7, cRowStride: 8);
        Assert.Equal((CuBlas.OpT, CuBlas.OpN, 5, 3, 4, 7, 6, 8), (t.TransA, t.TransB, t.M, t.N, t.K, t.Lda, t.Ldb, t.Ldc));
        var nn = DeviceBlas.MapNN(m: 3, k: 4, n: 5, aRowStride: 6, bRowStride: 7, cRowStride: 8);
        Assert.Equal((CuBlas.OpN, CuBlas.OpN, 5, 3, 4, 7, 6, 8), (nn.TransA, nn.TransB, nn.M, nn.N, nn.K, nn.Lda, nn.Ldb, nn.Ldc));
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceBlas.MapTransB(3, 4, 5, aRowStride: 3, wRowStride: 4, cRowStride: 5));
    }
}
