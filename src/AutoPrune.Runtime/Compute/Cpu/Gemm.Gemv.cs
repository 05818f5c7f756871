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

    private static unsafe void GemvTransBWide<T, TW>(GemmIsa isa, float* a, int k, T* w, int ldw, int n0, int n1, float* c, float* bias, bool acc)
        where T : unmanaged where TW : IWidening<T>
    {
        if (isa == GemmIsa.Scalar)
        {
            for (int j = n0; j < n1; j++)
            {
                T* wr = w + (nint)j * ldw;
                float s = 0f;
                for (int p = 0; p < k; p++) s = MathF.FusedMultiplyAdd(a[p], TW.Widen(wr[p]), s);
                Store1(c, j, s, bias, acc);
            }
            return;
        }
        // Same accumulation structure as the fp32 GEMV (so results equal fp32 GEMV on widened weights),
        // with the fp16/bf16 -> fp32 widening done in registers: W is streamed once at 2 bytes/element.
        for (int j0 = n0; j0 < n1; j0 += 4)
        {
            int rows = Math.Min(4, n1 - j0);
            T* w0 = w + (nint)j0 * ldw;
            T* w1 = rows > 1 ? w0 + ldw : w0;
            T* w2 = rows > 2 ? w0 + 2 * (nint)ldw : w0;
            T* w3 = rows > 3 ? w0 + 3 * (nint)ldw : w0;
            Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            int p = 0;
            for (; p + 16 <= k; p += 16)
            {
                var x0 = Vector256.Load(a + p);
                var x1 = Vector256.Load(a + p + 8);
                a0 = Fma.MultiplyAdd(x0, TW.Widen8(w0 + p), a0);
                b0 = Fma.MultiplyAdd(x1, TW.Widen8(w0 + p + 8), b0);
                a1 = Fma.MultiplyAdd(x0, TW.Widen8(w1 + p), a1);
                b1 = Fma.MultiplyAdd(x1, TW.Widen8(w1 + p + 8), b1);
                a2 = Fma.MultiplyAdd(x0, TW.Widen8(w2 + p), a2);
                b2 = Fma.MultiplyAdd(x1, TW.Widen8(w2 + p + 8), b2);
                a3 = Fma.MultiplyAdd(x0, TW.Widen8(w3 + p), a3);
                b3 = Fma.MultiplyAdd(x1, TW.Widen8(w3 + p + 8), b3);
            }
            if (p + 8 <= k)
            {
                var x0 = Vector256.Load(a + p);
                a0 = Fma.MultiplyAdd(x0, TW.Widen8(w0 + p), a0);
                a1 = Fma.MultiplyAdd(x0, TW.Widen8(w1 + p), a1);
                a2 = Fma.MultiplyAdd(x0, TW.Widen8(w2 + p), a2);
                a3 = Fma.MultiplyAdd(x0, TW.Widen8(w3 + p), a3);
            }
            FinishRowWide<T, TW>(a0 + b0, a, k, w0, c, j0, bias, acc);
            if (rows > 1) FinishRowWide<T, TW>(a1 + b1, a, k, w1, c, j0 + 1, bias, acc);
            if (rows > 2) FinishRowWide<T, TW>(a2 + b2, a, k, w2, c, j0 + 2, bias, acc);
            if (rows > 3) FinishRowWide<T, TW>(a3 + b3, a, k, w3, c, j0 + 3, bias, acc);
        }
    }

    private static unsafe void FinishRowWide<T, TW>(Vector256<float> v, float* a, int k, T* wr, float* c, int j, float* bias, bool acc)
        where T : unmanaged where TW : IWidening<T>
    {
        float sum = Vector256.Sum(v);
        for (int p = k & ~7; p < k; p++) sum = MathF.FusedMultiplyAdd(a[p], TW.Widen(wr[p]), sum);
        Store1(c, j, sum, bias, acc);
    }

    /// <summary>
    /// Exact fp16 -> fp32 widening of 8 values in registers (no F16C intrinsics in .NET): move exponent+mantissa
    /// into fp32 position and rescale by 2^112 (which also handles zeros and subnormals exactly), patch Inf/NaN,
    /// then restore the sign.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector256<float> HalfToSingle8(Half* p)
    {
        Vector256<int> h = Avx2.ConvertToVector256Int32((ushort*)p); // zero-extend
        Vector256<int> em = (h & Vector256.Create(0x7FFF)) << 13;
        Vector256<float> f = em.AsSingle() * Vector256.Create(0x77800000).AsSingle(); // * 2^112
        Vector256<int> infNan = Vector256.Equals(h & Vector256.Create(0x7C00), Vector256.Create(0x7C00));
        f = Vector256.ConditionalSelect(infNan.AsSingle(), (em | Vector256.Create(0x7F800000)).AsSingle(), f);
        return (f.AsInt32() | ((h & Vector256.Create(0x8000)) << 16)).AsSingle();
    }

    /// <summary>
    /// c[j] = sum_p a[p]·B[p,j] for j in [n0,n1), B row-major [k, ldb]. Streams B row segments contiguously into
    /// an L1-resident accumulator strip (columns in chunks of <c>GemvNormalChunk</c>), 4 rows per pass.
    /// Per element the order is a plain FMA chain over p, then + C.
    /// </summary>
    private static unsafe void GemvNormal(GemmIsa isa, float* a, int k, float* b, int ldb, int n0, int n1, float* c, bool acc)
    {
        const int Chunk = 1024;
        float* t = stackalloc float[Chunk];
        for (int j0 = n0; j0 < n1; j0 += Chunk)
        {
            int len = Math.Min(Chunk, n1 - j0);
            new Span<float>(t, len).Clear();
            int p = 0;
            if (isa != GemmIsa.Scalar)
            {
                for (; p + 4 <= k; p += 4)
                {
                    float* r0 = b + (nint)p * ldb + j0;
                    float* r1 = r0 + ldb, r2 = r1 + ldb, r3 = r2 + ldb;
                    var x0 = Vector256.Create(a[p]); var x1 = Vector256.Create(a[p + 1]);
                    var x2 = Vector256.Create(a[p + 2]); var x3 = Vector256.Create(a[p + 3]);
                    int j = 0;
                    for (; j + 8 <= len; j += 8)
                    {
                        var v = Vector256.Load(t + j);
                        v = Fma.MultiplyAdd(x0, Vector256.Load(r0 + j), v);
                        v = Fma.MultiplyAdd(x1, Vector256.Load(r1 + j), v);
                        v = Fma.MultiplyAdd(x2, Vector256.Load(r2 + j), v);
                        v = Fma.MultiplyAdd(x3, Vector256.Load(r3 + j), v);
                        v.Store(t + j);
                    }
                    for (; j < len; j++)
                    {
                        float v = t[j];
                        v = MathF.FusedMultiplyAdd(a[p], r0[j], v);
                        v = MathF.FusedMultiplyAdd(a[p + 1], r1[j], v);
                        v = MathF.FusedMultiplyAdd(a[p + 2], r2[j], v);
                        v = MathF.FusedMultiplyAdd(a[p + 3], r3[j], v);
                        t[j] = v;
                    }
                }
            }
            for (; p < k; p++)
            {
                float* r0 = b + (nint)p * ldb + j0;
                float ap = a[p];
                for (int j = 0; j < len; j++) t[j] = MathF.FusedMultiplyAdd(ap, r0[j], t[j]);
            }
            float* cj = c + j0;
            if (acc) for (int j = 0; j < len; j++) cj[j] = t[j] + cj[j];
            else new ReadOnlySpan<float>(t, len).CopyTo(new Span<float>(cj, len));
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

/// <summary>How a 2-byte weight type widens to fp32 exactly (fp16, bf16), for the GEMM's packing and GEMV.</summary>
internal unsafe interface IWidening<T> where T : unmanaged
{
    /// <summary>8 consecutive values widened in registers (AVX2).</summary>
    static abstract Vector256<float> Widen8(T* p);
    static abstract float Widen(T v);
}

/// <summary>IEEE fp16.</summary>
internal readonly unsafe struct HalfWidening : IWidening<Half>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(Half* p) => Gemm.HalfToSingle8(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Widen(Half v) => (float)v;
}

/// <summary>bfloat16 as raw bits: the high half of an fp32, so widening is a 16-bit shift.</summary>
internal readonly unsafe struct BFloat16Widening : IWidening<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(ushort* p) => (Avx2.ConvertToVector256Int32(p) << 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Widen(ushort v) => BitConverter.Int32BitsToSingle(v << 16);
}
