using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Compute.Cpu;

// m == 1 (decoding) paths. These are memory-bound on real checkpoints, so they stream W exactly once,
// 4 rows at a time with 2 independent FMA accumulators per row (8 chains hide the FMA latency),
// and never pack. Rows are split across threads in multiples of 16, so the row grouping (and
// therefore every result) does not depend on the thread count.
internal static partial class Gemm
{
    private const int HalfChunk = 1024; // fp16 weights are widened HalfChunk elements at a time (multiple of 16)

    private static unsafe void GemvTransB(GemmIsa isa, float* a, int k, float* w, int ldw, int n0, int n1, float* c, float* bias, bool acc)
    {
        if (isa == GemmIsa.Scalar)
        {
            for (int j = n0; j < n1; j++)
                Store1(c, j, DotScalar(a, w + (nint)j * ldw, k), bias, acc);
            return;
        }
        int j0 = n0;
        for (; j0 + 4 <= n1; j0 += 4)
        {
            var s = new Acc4();
            float* w0 = w + (nint)j0 * ldw;
            Dot4(a, w0, w0 + ldw, w0 + 2 * (nint)ldw, w0 + 3 * (nint)ldw, k, ref s);
            FinishRow(ref s, a, k, j0, 0, w0, c, bias, acc);
            FinishRow(ref s, a, k, j0, 1, w0 + ldw, c, bias, acc);
            FinishRow(ref s, a, k, j0, 2, w0 + 2 * (nint)ldw, c, bias, acc);
            FinishRow(ref s, a, k, j0, 3, w0 + 3 * (nint)ldw, c, bias, acc);
        }
        for (; j0 < n1; j0++)
        {
            var s = new Acc4();
            float* wr = w + (nint)j0 * ldw;
            Dot4(a, wr, wr, wr, wr, k, ref s);
            FinishRow(ref s, a, k, j0, 0, wr, c, bias, acc);
        }
    }

    private static unsafe void GemvTransBHalf(GemmIsa isa, float* a, int k, Half* w, int ldw, int n0, int n1, float* c, float* bias, bool acc)
    {
        float* tmp = stackalloc float[4 * HalfChunk];
        int j0 = n0;
        for (; j0 < n1; j0 += 4)
        {
            int rows = Math.Min(4, n1 - j0);
            var s = new Acc4();
            float sc0 = 0, sc1 = 0, sc2 = 0, sc3 = 0; // scalar-ISA accumulators
            for (int p0 = 0; p0 < k; p0 += HalfChunk)
            {
                int len = Math.Min(HalfChunk, k - p0);
                for (int r = 0; r < rows; r++)
                    TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + (nint)(j0 + r) * ldw + p0, len), new Span<float>(tmp + r * HalfChunk, len));
                float* t0 = tmp, t1 = rows > 1 ? tmp + HalfChunk : tmp, t2 = rows > 2 ? tmp + 2 * HalfChunk : tmp, t3 = rows > 3 ? tmp + 3 * HalfChunk : tmp;
                if (isa == GemmIsa.Scalar)
                {
                    for (int p = 0; p < len; p++)
                    {
                        float ap = a[p0 + p];
                        sc0 = MathF.FusedMultiplyAdd(ap, t0[p], sc0);
                        sc1 = MathF.FusedMultiplyAdd(ap, t1[p], sc1);
                        sc2 = MathF.FusedMultiplyAdd(ap, t2[p], sc2);
                        sc3 = MathF.FusedMultiplyAdd(ap, t3[p], sc3);
                    }
                    continue;
                }
                Dot4(a + p0, t0, t1, t2, t3, len, ref s);
                if (p0 + len == k)
                {
                    // final chunk: horizontal sums + scalar tail (tail elements live in this chunk)
                    for (int r = 0; r < rows; r++)
                        FinishRow(ref s, a + p0, len, j0, r, tmp + r * HalfChunk, c, bias, acc);
                }
            }
            if (isa == GemmIsa.Scalar)
            {
                Store1(c, j0, sc0, bias, acc);
                if (rows > 1) Store1(c, j0 + 1, sc1, bias, acc);
                if (rows > 2) Store1(c, j0 + 2, sc2, bias, acc);
                if (rows > 3) Store1(c, j0 + 3, sc3, bias, acc);
            }
        }
    }

    /// <summary>c[j] = sum_p a[p]·B[p,j] for j in [n0,n1), B row-major [k, ldb].</summary>
    private static unsafe void GemvNormal(GemmIsa isa, float* a, int k, float* b, int ldb, int n0, int n1, float* c, bool acc)
    {
        int j = n0;
        if (isa != GemmIsa.Scalar)
        {
            for (; j + 32 <= n1; j += 32)
            {
                Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
                float* bp = b + j;
                for (int p = 0; p < k; p++, bp += ldb)
                {
                    var ap = Vector256.Create(a[p]);
                    s0 = Fma.MultiplyAdd(ap, Vector256.Load(bp), s0);
                    s1 = Fma.MultiplyAdd(ap, Vector256.Load(bp + 8), s1);
                    s2 = Fma.MultiplyAdd(ap, Vector256.Load(bp + 16), s2);
                    s3 = Fma.MultiplyAdd(ap, Vector256.Load(bp + 24), s3);
                }
                if (acc)
                {
                    s0 += Vector256.Load(c + j); s1 += Vector256.Load(c + j + 8);
                    s2 += Vector256.Load(c + j + 16); s3 += Vector256.Load(c + j + 24);
                }
                s0.Store(c + j); s1.Store(c + j + 8); s2.Store(c + j + 16); s3.Store(c + j + 24);
            }
            for (; j + 8 <= n1; j += 8)
            {
                Vector256<float> s0 = default;
                float* bp = b + j;
                for (int p = 0; p < k; p++, bp += ldb)
                    s0 = Fma.MultiplyAdd(Vector256.Create(a[p]), Vector256.Load(bp), s0);
                if (acc) s0 += Vector256.Load(c + j);
                s0.Store(c + j);
            }
        }
        for (; j < n1; j++)
        {
            float s = 0f;
            float* bp = b + j;
            for (int p = 0; p < k; p++, bp += ldb) s = MathF.FusedMultiplyAdd(a[p], *bp, s);
            c[j] = acc ? s + c[j] : s;
        }
    }

    private struct Acc4
    {
        public Vector256<float> A0, B0, A1, B1, A2, B2, A3, B3;
    }

    /// <summary>Accumulate the SIMD part (len rounded down to 8) of 4 dot products a·w_r into s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Dot4(float* a, float* w0, float* w1, float* w2, float* w3, int len, ref Acc4 s)
    {
        Vector256<float> a0 = s.A0, b0 = s.B0, a1 = s.A1, b1 = s.B1, a2 = s.A2, b2 = s.B2, a3 = s.A3, b3 = s.B3;
        int p = 0;
        for (; p + 16 <= len; p += 16)
        {
            var x0 = Vector256.Load(a + p);
            var x1 = Vector256.Load(a + p + 8);
            a0 = Fma.MultiplyAdd(x0, Vector256.Load(w0 + p), a0);
            b0 = Fma.MultiplyAdd(x1, Vector256.Load(w0 + p + 8), b0);
            a1 = Fma.MultiplyAdd(x0, Vector256.Load(w1 + p), a1);
            b1 = Fma.MultiplyAdd(x1, Vector256.Load(w1 + p + 8), b1);
            a2 = Fma.MultiplyAdd(x0, Vector256.Load(w2 + p), a2);
            b2 = Fma.MultiplyAdd(x1, Vector256.Load(w2 + p + 8), b2);
            a3 = Fma.MultiplyAdd(x0, Vector256.Load(w3 + p), a3);
            b3 = Fma.MultiplyAdd(x1, Vector256.Load(w3 + p + 8), b3);
        }
        if (p + 8 <= len)
        {
            var x0 = Vector256.Load(a + p);
            a0 = Fma.MultiplyAdd(x0, Vector256.Load(w0 + p), a0);
            a1 = Fma.MultiplyAdd(x0, Vector256.Load(w1 + p), a1);
            a2 = Fma.MultiplyAdd(x0, Vector256.Load(w2 + p), a2);
            a3 = Fma.MultiplyAdd(x0, Vector256.Load(w3 + p), a3);
        }
        s.A0 = a0; s.B0 = b0; s.A1 = a1; s.B1 = b1; s.A2 = a2; s.B2 = b2; s.A3 = a3; s.B3 = b3;
    }

    /// <summary>Horizontal-sum row r of s, add the scalar tail (elements past len rounded down to 8) and store c[j0+r].</summary>
    private static unsafe void FinishRow(ref Acc4 s, float* a, int len, int j0, int r, float* wr, float* c, float* bias, bool acc)
    {
        Vector256<float> v = r switch { 0 => s.A0 + s.B0, 1 => s.A1 + s.B1, 2 => s.A2 + s.B2, _ => s.A3 + s.B3 };
        float sum = Vector256.Sum(v);
        for (int p = len & ~7; p < len; p++) sum = MathF.FusedMultiplyAdd(a[p], wr[p], sum);
        Store1(c, j0 + r, sum, bias, acc);
    }

    private static unsafe float DotScalar(float* a, float* w, int k)
    {
        float s = 0f;
        for (int p = 0; p < k; p++) s = MathF.FusedMultiplyAdd(a[p], w[p], s);
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store1(float* c, int j, float v, float* bias, bool acc)
    {
        if (bias != null) v += bias[j];
        if (acc) v += c[j];
        c[j] = v;
    }
}
