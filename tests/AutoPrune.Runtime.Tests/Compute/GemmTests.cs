using AutoPrune.Compute.Cpu;
using CsCheck;
using Xunit;

namespace AutoPrune.Runtime.Tests.Compute;

public class GemmTests
{
    // ------------------------------------------------------------------ helpers

    private static float[] Rand(Random r, int len)
    {
        var x = new float[len];
        for (int i = 0; i < len; i++) x[i] = (float)(r.NextDouble() * 2 - 1);
        return x;
    }

    /// <summary>Naive double-precision reference for C = A·op(B) (+bias) (+C0).</summary>
    private static double[] Reference(float[] a, int lda, int m, int k, Func<int, int, double> b, int n,
        float[]? c0, int ldc, float[]? bias)
    {
        var r = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)a[i * lda + p] * b(p, j);
                if (bias != null) s += bias[j];
                if (c0 != null) s += c0[i * ldc + j];
                r[i * n + j] = s;
            }
        return r;
    }

    /// <summary>Checks |got - ref| ≤ tol · (sum_p |a·b| + |bias| + |c0| + 1), tol = 1e-5 · sqrt(k+1) — a relative bound robust to cancellation.</summary>
    private static void AssertClose(double[] expected, double[] scale, float[] c, int ldc, int m, int n, int k, string what)
    {
        double tol = 1e-5 * Math.Sqrt(k + 1);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double e = expected[i * n + j], g = c[i * ldc + j];
                double bound = tol * (scale[i * n + j] + 1);
                if (!(Math.Abs(e - g) <= bound))
                    Assert.Fail($"{what}: C[{i},{j}] = {g}, expected {e} (|diff| {Math.Abs(e - g):g3} > {bound:g3}); m={m} n={n} k={k}");
            }
    }

    private static double[] AbsScale(float[] a, int lda, int m, int k, Func<int, int, double> b, int n, float[]? c0, int ldc, float[]? bias)
    {
        var r = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += Math.Abs((double)a[i * lda + p] * b(p, j));
                if (bias != null) s += Math.Abs(bias[j]);
                if (c0 != null) s += Math.Abs(c0[i * ldc + j]);
                r[i * n + j] = s;
            }
        return r;
    }

    public static IEnumerable<object[]> Isas()
    {
        yield return new object[] { (int)GemmIsa.Scalar };
        if (Gemm.DetectedIsa >= GemmIsa.Avx2) yield return new object[] { (int)GemmIsa.Avx2 };
        if (Gemm.DetectedIsa >= GemmIsa.Avx512) yield return new object[] { (int)GemmIsa.Avx512 };
    }

    private static readonly (int m, int k, int n)[] Shapes =
    {
        (1, 1, 1), (1, 7, 1), (1, 1, 9), (2, 3, 5), (1, 1000, 37), (1, 1031, 129), (1, 16, 16), (1, 24, 3),
        (3, 1, 2), (5, 17, 33), (6, 32, 32), (7, 33, 31), (13, 19, 65), (6, 257, 64), (17, 300, 47),
        (64, 128, 128), (145, 70, 97), (31, 1029, 40), (200, 513, 33), (2, 600, 2049), (577, 128, 40),
    };

    private static void CheckTransB(GemmIsa isa, int threads, int m, int k, int n, bool useBias, bool acc, int padA = 0, int padW = 0, int padC = 0, int seed = 1)
    {
        var r = new Random(seed * 7919 + m * 31 + k * 17 + n);
        int lda = k + padA, ldw = k + padW, ldc = n + padC;
        var a = Rand(r, Math.Max(0, m * lda));
        var w = Rand(r, Math.Max(0, n * ldw));
        var bias = useBias ? Rand(r, n) : null;
        var c = Rand(r, Math.Max(0, m * ldc));
        var c0 = acc ? (float[])c.Clone() : null;
        Func<int, int, double> bf = (p, j) => w[j * ldw + p];
        var exp = Reference(a, lda, m, k, bf, n, c0, ldc, bias);
        var scale = AbsScale(a, lda, m, k, bf, n, c0, ldc, bias);
        Gemm.MatMulTransBCore(a, lda, m, k, w, ldw, n, c, ldc, bias, acc, isa, threads);
        AssertClose(exp, scale, c, ldc, m, n, k, $"TransB[{isa},t{threads},bias={useBias},acc={acc}]");
        // padding columns of C must be untouched
        if (padC > 0 && c0 == null)
        {
            var r2 = new Random(seed * 7919 + m * 31 + k * 17 + n);
            Rand(r2, m * lda); Rand(r2, n * ldw); if (useBias) Rand(r2, n);
            var orig = Rand(r2, m * ldc);
            for (int i = 0; i < m; i++)
                for (int j = n; j < ldc; j++)
                    Assert.Equal(orig[i * ldc + j], c[i * ldc + j]);
        }
    }

    // ------------------------------------------------------------------ MatMulTransB (fp32)

    [Theory]
    [MemberData(nameof(Isas))]
    public void TransB_MatchesReference_ManyShapes(int isaId)
    {
        var isa = (GemmIsa)isaId;
        foreach (var (m, k, n) in Shapes)
        {
            CheckTransB(isa, 1, m, k, n, useBias: false, acc: false);
            CheckTransB(isa, 2, m, k, n, useBias: true, acc: false);
            CheckTransB(isa, 2, m, k, n, useBias: true, acc: true);
            CheckTransB(isa, 1, m, k, n, useBias: false, acc: true);
        }
    }

    [Theory]
    [MemberData(nameof(Isas))]
    public void TransB_Strided(int isaId)
    {
        var isa = (GemmIsa)isaId;
        foreach (var (m, k, n) in new[] { (1, 5, 3), (7, 33, 31), (64, 20, 48), (33, 300, 70), (1, 64, 100) })
        {
            CheckTransB(isa, 1, m, k, n, useBias: true, acc: false, padA: 3, padW: 5, padC: 7);
            CheckTransB(isa, 2, m, k, n, useBias: false, acc: true, padA: 11, padW: 1, padC: 2);
        }
    }

    [Fact]
    public void TransB_PublicApi_LargeK_MultiThreaded()
    {
        var r = new Random(5);
        int m = 70, k = 2100, n = 130;
        var a = Rand(r, m * k); var w = Rand(r, n * k); var bias = Rand(r, n);
        var c = new float[m * n];
        Gemm.MatMulTransB(a, m, k, w, n, c, bias);
        Func<int, int, double> bf = (p, j) => w[j * k + p];
        AssertClose(Reference(a, k, m, k, bf, n, null, n, bias), AbsScale(a, k, m, k, bf, n, null, n, bias), c, n, m, n, k, "public");
    }

    [Fact]
    public void ZeroSizes_AreNoOpsOrBiasOnly()
    {
        // m = 0 / n = 0: nothing to do, empty spans allowed.
        Gemm.MatMulTransB(ReadOnlySpan<float>.Empty, 0, 5, new float[15], 3, Span<float>.Empty);
        Gemm.MatMulTransB(new float[10], 2, 5, ReadOnlySpan<float>.Empty, 0, Span<float>.Empty);
        Gemm.MatMul(ReadOnlySpan<float>.Empty, 0, 4, new float[8], 2, Span<float>.Empty);
        // k = 0: C = bias (or C += bias).
        var c = new float[] { 1, 2, 3, 4, 5, 6 };
        Gemm.MatMulTransB(ReadOnlySpan<float>.Empty, 2, 0, ReadOnlySpan<float>.Empty, 3, c, new float[] { 10, 20, 30 }, accumulate: true);
        Assert.Equal(new float[] { 11, 22, 33, 14, 25, 36 }, c);
        Gemm.MatMulTransB(ReadOnlySpan<float>.Empty, 2, 0, ReadOnlySpan<float>.Empty, 3, c);
        Assert.All(c, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void InvalidArguments_Throw()
    {
        Assert.Throws<ArgumentException>(() => Gemm.MatMulTransB(new float[5], 2, 3, new float[6], 2, new float[4]));
        Assert.Throws<ArgumentException>(() => Gemm.MatMulTransB(new float[6], 2, 3, new float[5], 2, new float[4]));
        Assert.Throws<ArgumentException>(() => Gemm.MatMulTransB(new float[6], 2, 3, new float[6], 2, new float[3]));
        Assert.Throws<ArgumentException>(() => Gemm.MatMulTransB(new float[6], 2, 3, new float[6], 2, new float[4], new float[1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.MatMulTransB(new float[6], 2, 2, 3, new float[6], 3, 2, new float[4], 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.MatMul(new float[6], -1, 3, new float[6], 2, new float[4]));
    }

    [Fact]
    public void Deterministic_AcrossThreadCounts()
    {
        var r = new Random(11);
        foreach (var (m, k, n) in new[] { (300, 700, 200), (1, 3000, 1000), (40, 500, 600) })
        {
            var a = Rand(r, m * k); var w = Rand(r, n * k); var bias = Rand(r, n);
            var wh = w.Select(x => (Half)x).ToArray();
            var c1 = new float[m * n]; var c2 = new float[m * n]; var c3 = new float[m * n];
            Gemm.MatMulTransBCore(a, k, m, k, w, k, n, c1, n, bias, false, Gemm.DetectedIsa, 1);
            Gemm.MatMulTransBCore(a, k, m, k, w, k, n, c2, n, bias, false, Gemm.DetectedIsa, 2);
            Gemm.MatMulTransBCore(a, k, m, k, w, k, n, c3, n, bias, false, Gemm.DetectedIsa, 7);
            Assert.Equal(c1, c2); Assert.Equal(c1, c3);
            Gemm.MatMulTransBCore(a, k, m, k, wh, k, n, c1, n, bias, false, Gemm.DetectedIsa, 1);
            Gemm.MatMulTransBCore(a, k, m, k, wh, k, n, c2, n, bias, false, Gemm.DetectedIsa, 2);
            Assert.Equal(c1, c2);
            // B = W viewed as [k, n] row-major for MatMul
            var d1 = new float[m * n]; var d2 = new float[m * n];
            var b = Rand(r, k * n);
            Gemm.MatMulCore(a, k, m, k, b, n, n, d1, n, false, Gemm.DetectedIsa, 1);
            Gemm.MatMulCore(a, k, m, k, b, n, n, d2, n, false, Gemm.DetectedIsa, 2);
            Assert.Equal(d1, d2);
        }
    }

    // ------------------------------------------------------------------ Half weights

    [Theory]
    [MemberData(nameof(Isas))]
    public void TransB_Half_MatchesReference(int isaId)
    {
        var isa = (GemmIsa)isaId;
        foreach (var (m, k, n) in Shapes.Concat(new[] { (1, 2500, 9), (3, 1100, 20) }))
            foreach (var (pad, acc, threads) in new[] { (0, false, 1), (3, true, 2) })
            {
                var r = new Random(m * 1000 + k * 10 + n);
                int lda = k + pad, ldw = k + pad, ldc = n + pad;
                var a = Rand(r, m * lda);
                var wh = Rand(r, n * ldw).Select(x => (Half)x).ToArray();
                var bias = Rand(r, n);
                var c = Rand(r, m * ldc);
                var c0 = acc ? (float[])c.Clone() : null;
                Func<int, int, double> bf = (p, j) => (double)(float)wh[j * ldw + p];
                Gemm.MatMulTransBCore(a, lda, m, k, wh, ldw, n, c, ldc, bias, acc, isa, threads);
                AssertClose(Reference(a, lda, m, k, bf, n, c0, ldc, bias), AbsScale(a, lda, m, k, bf, n, c0, ldc, bias), c, ldc, m, n, k, $"Half[{isa}]");
            }
    }

    [Fact]
    public void TransB_Half_PublicApi_EqualsFp32OnWidenedWeights()
    {
        var r = new Random(3);
        int m = 37, k = 300, n = 90;
        var a = Rand(r, m * k);
        var wh = Rand(r, n * k).Select(x => (Half)x).ToArray();
        var wf = wh.Select(x => (float)x).ToArray();
        var c1 = new float[m * n]; var c2 = new float[m * n];
        Gemm.MatMulTransB(a, m, k, wh, n, c1);
        Gemm.MatMulTransB(a, m, k, wf, n, c2);
        Assert.Equal(c2, c1); // same packed panels => bit-identical
    }

    [Fact]
    public unsafe void HalfToSingle8_IsExact_ForAllBitPatterns()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return;
        var all = new ushort[65536];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        fixed (ushort* p = all)
        {
            for (int i = 0; i < all.Length; i += 8)
            {
                var v = Gemm.HalfToSingle8((Half*)(p + i));
                for (int l = 0; l < 8; l++)
                {
                    float expected = (float)BitConverter.UInt16BitsToHalf(all[i + l]);
                    float got = System.Runtime.Intrinsics.Vector256.GetElement(v, l);
                    if (float.IsNaN(expected)) Assert.True(float.IsNaN(got), $"0x{i + l:X4}");
                    else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(got));
                }
            }
        }
    }

    [Fact]
    public void Gemv_Half_EqualsFp32GemvOnWidenedWeights()
    {
        var r = new Random(8);
        foreach (var (k, n) in new[] { (1, 1), (7, 5), (16, 4), (24, 9), (4099, 70), (192, 512) })
        {
            var a = Rand(r, k);
            var wh = Rand(r, n * k).Select(x => (Half)x).ToArray();
            var wf = wh.Select(x => (float)x).ToArray();
            var bias = Rand(r, n);
            var c1 = new float[n]; var c2 = new float[n];
            Gemm.MatMulTransB(a, 1, k, wh, n, c1, bias);
            Gemm.MatMulTransB(a, 1, k, wf, n, c2, bias);
            Assert.Equal(c2, c1);
        }
    }

    /// <summary>bf16 weights (raw bits) give exactly the fp32 results on the widened weights, packed (m &gt; 1) and streamed (m = 1).</summary>
    [Theory]
    [InlineData(37, 300, 90)]
    [InlineData(1, 4099, 70)]
    [InlineData(1, 7, 5)]
    [InlineData(626, 192, 512)]
    public void TransB_BFloat16_EqualsFp32OnWidenedWeights(int m, int k, int n)
    {
        var r = new Random(m + k + n);
        var a = Rand(r, m * k);
        var bits = Rand(r, n * k).Select(x => (ushort)(BitConverter.SingleToUInt32Bits(x) >> 16)).ToArray();
        var wf = bits.Select(b => BitConverter.UInt32BitsToSingle((uint)b << 16)).ToArray();
        var bias = Rand(r, n);
        var c1 = new float[m * n]; var c2 = new float[m * n];
        Gemm.MatMulTransBBFloat16(a, m, k, bits, n, c1, bias);
        Gemm.MatMulTransB(a, m, k, wf, n, c2, bias);
        Assert.Equal(c2, c1);
    }

    // ------------------------------------------------------------------ MatMul (A·B)

    [Theory]
    [MemberData(nameof(Isas))]
    public void MatMul_MatchesReference(int isaId)
    {
        var isa = (GemmIsa)isaId;
        foreach (var (m, k, n) in Shapes)
            foreach (var (pad, acc, threads) in new[] { (0, false, 1), (0, true, 2), (5, false, 2), (2, true, 1) })
            {
                var r = new Random(m * 7 + k * 3 + n + pad);
                int lda = k + pad, ldb = n + pad, ldc = n + pad;
                var a = Rand(r, m * lda);
                var b = Rand(r, k * ldb);
                var c = Rand(r, m * ldc);
                var c0 = acc ? (float[])c.Clone() : null;
                Func<int, int, double> bf = (p, j) => b[p * ldb + j];
                Gemm.MatMulCore(a, lda, m, k, b, ldb, n, c, ldc, acc, isa, threads);
                AssertClose(Reference(a, lda, m, k, bf, n, c0, ldc, null), AbsScale(a, lda, m, k, bf, n, c0, ldc, null), c, ldc, m, n, k, $"MatMul[{isa}]");
            }
    }

    [Fact]
    public void MatMul_AttentionHeadSlices()
    {
        // Q,K,V stored as [seq, heads*headDim]; per-head scores = Q_h·K_h^T and out_h = P_h·V_h without copies.
        var r = new Random(9);
        int seq = 37, heads = 3, hd = 16, ld = heads * hd;
        var q = Rand(r, seq * ld); var kk = Rand(r, seq * ld); var v = Rand(r, seq * ld);
        var outp = new float[seq * ld];
        for (int h = 0; h < heads; h++)
        {
            var scores = new float[seq * seq];
            Gemm.MatMulTransB(q.AsSpan(h * hd), ld, seq, hd, kk.AsSpan(h * hd), ld, seq, scores, seq);
            Func<int, int, double> kf = (p, j) => kk[j * ld + h * hd + p];
            var qh = new float[seq * hd];
            for (int i = 0; i < seq; i++) Array.Copy(q, i * ld + h * hd, qh, i * hd, hd);
            AssertClose(Reference(qh, hd, seq, hd, kf, seq, null, 0, null), AbsScale(qh, hd, seq, hd, kf, seq, null, 0, null), scores, seq, seq, seq, hd, "QK^T head");

            Gemm.MatMul(scores, seq, seq, seq, v.AsSpan(h * hd), ld, hd, outp.AsSpan(h * hd), ld);
            Func<int, int, double> vf = (p, j) => v[p * ld + h * hd + j];
            var exp = Reference(scores, seq, seq, seq, vf, hd, null, 0, null);
            var sc = AbsScale(scores, seq, seq, seq, vf, hd, null, 0, null);
            AssertClose(exp, sc, outp[(h * hd)..], ld, seq, hd, seq, "PV head");
        }
    }

    // ------------------------------------------------------------------ property test

    [Fact]
    public void Property_RandomShapes_AllOverloads()
    {
        var gen = Gen.Select(Gen.Int[0, 70], Gen.Int[0, 300], Gen.Int[0, 80], Gen.Int[0, 3], Gen.Bool, Gen.Bool, Gen.Int[1, 3], Gen.Int)
            .Select((m, k, n, pad, bias, acc, threads, seed) => (m, k, n, pad, bias, acc, threads, seed));
        gen.Sample(t =>
        {
            var (m, k, n, pad, useBias, acc, threads, seed) = t;
            var r = new Random(seed);
            int lda = k + pad, ldw = k + pad, ldc = n + pad, ldb = n + pad;
            var a = Rand(r, m * lda);
            var w = Rand(r, n * ldw);
            var wh = w.Select(x => (Half)x).ToArray();
            var b = Rand(r, k * ldb);
            var bias = useBias ? Rand(r, n) : null;
            var cInit = Rand(r, m * ldc);

            foreach (var isa in Isas().Select(o => (GemmIsa)(int)o[0]))
            {
                var c = (float[])cInit.Clone();
                Func<int, int, double> wf = (p, j) => w[j * ldw + p];
                Gemm.MatMulTransBCore(a, lda, m, k, w, ldw, n, c, ldc, bias, acc, isa, threads);
                AssertClose(Reference(a, lda, m, k, wf, n, acc ? cInit : null, ldc, bias), AbsScale(a, lda, m, k, wf, n, acc ? cInit : null, ldc, bias), c, ldc, m, n, k, "prop TransB");

                c = (float[])cInit.Clone();
                Func<int, int, double> hf = (p, j) => (float)wh[j * ldw + p];
                Gemm.MatMulTransBCore(a, lda, m, k, wh, ldw, n, c, ldc, bias, acc, isa, threads);
                AssertClose(Reference(a, lda, m, k, hf, n, acc ? cInit : null, ldc, bias), AbsScale(a, lda, m, k, hf, n, acc ? cInit : null, ldc, bias), c, ldc, m, n, k, "prop Half");

                c = (float[])cInit.Clone();
                Func<int, int, double> bf = (p, j) => b[p * ldb + j];
                Gemm.MatMulCore(a, lda, m, k, b, ldb, n, c, ldc, acc, isa, threads);
                AssertClose(Reference(a, lda, m, k, bf, n, acc ? cInit : null, ldc, null), AbsScale(a, lda, m, k, bf, n, acc ? cInit : null, ldc, null), c, ldc, m, n, k, "prop MatMul");
            }
        }, iter: 150);
    }
}
