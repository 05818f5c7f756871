using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Compute.Quant;

/// <summary>
/// Row-dot kernels over quantized blocks: <c>dot(W[row], x)</c> with fp32 activations, never widening the row to memory.
/// <para>
/// The SIMD kernels (AVX2+FMA with Vector256, AVX-512F with Vector512) factor each block's scale out of its sum:
/// <c>Σ d·(q − o)·x = d·(Σ q·x − o·Σx)</c>, so a block costs one integer→float conversion and one FMA per 8 (16) weights
/// plus one FMA per block; the per-block sums of x (<c>Σx</c> over each 16 or 32 elements) are computed once per call
/// (<see cref="BlockSums"/>). Q4_K's mins enter the same way (<c>− dmin·m·Σx</c>). The scalar kernel is the reference:
/// it dequantizes each block exactly (<see cref="BlockCodec.DequantizeBlock"/>) and sums w·x with FMA in element order.
/// </para>
/// </summary>
internal static unsafe class QuantKernels
{
    // ------------------------------------------------------------------ shared helpers

    /// <summary>
    /// fp16 bits → fp32, exact: sign and exponent+mantissa moved to fp32 position and rescaled by 2^112 (exact for normals,
    /// subnormals and zeros; the sign rides along in the bits, so there is no data-dependent branch — a Q4_0 or Q6_K scale's
    /// sign is random). Inf/NaN (never a valid block scale) go through <see cref="System.Half"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Half(byte* p)
    {
        uint h = *(ushort*)p;
        if ((h & 0x7C00) == 0x7C00) return (float)BitConverter.UInt16BitsToHalf((ushort)h);
        return BitConverter.UInt32BitsToSingle(((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)) * 5.192296858534828e33f; // 2^112
    }

    /// <summary>Byte offsets 0, 1, ..., 7 block strides apart, for gathering 8 blocks' fp16 scales.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> Strides(int blockBytes) => Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * blockBytes;

    /// <summary>
    /// The fp16 scales at the start of 8 consecutive blocks (<paramref name="strides"/> = <see cref="Strides"/>), widened
    /// exactly to fp32 in registers (same arithmetic as <see cref="Half"/>; Inf/NaN exponents kept as Inf/NaN), stored to
    /// <paramref name="dst"/>. The gather reads 4 bytes per block, all inside the block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Scales8(byte* p, Vector256<int> strides, float* dst)
    {
        var h = Avx2.GatherVector256((int*)p, strides, 1) & Vector256.Create(0xFFFF);
        var em = (h & Vector256.Create(0x7FFF)) << 13;
        var f = em.AsSingle() * Vector256.Create(0x77800000).AsSingle(); // * 2^112
        var infNan = Vector256.Equals(h & Vector256.Create(0x7C00), Vector256.Create(0x7C00));
        f = Vector256.ConditionalSelect(infNan.AsSingle(), (em | Vector256.Create(0x7F800000)).AsSingle(), f);
        f = (f.AsInt32() | ((h & Vector256.Create(0x8000)) << 16)).AsSingle();
        f.Store(dst);
        return f;
    }

    /// <summary>
    /// Sums of x over each 16 elements into <paramref name="sum16"/> (k/16 values) and each 32 into <paramref name="sum32"/>
    /// (k/32), in element order, so every kernel subtracts the same offsets.
    /// </summary>
    internal static void BlockSums(float* x, int k, float* sum16, float* sum32)
    {
        for (int g = 0; g < k / 16; g++)
        {
            float s = 0;
            float* xg = x + 16 * g;
            for (int i = 0; i < 16; i++) s += xg[i];
            sum16[g] = s;
        }
        for (int g = 0; g < k / 32; g++) sum32[g] = sum16[2 * g] + sum16[2 * g + 1];
    }

    /// <summary>The 6-bit scales and mins of a Q4_K super-block (12 packed bytes) as bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScalesK4(byte* q, byte* sc, byte* m)
    {
        for (int j = 0; j < 4; j++)
        {
            sc[j] = (byte)(q[j] & 63);
            m[j] = (byte)(q[j + 4] & 63);
        }
        for (int j = 4; j < 8; j++)
        {
            sc[j] = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m[j] = (byte)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }

    // ------------------------------------------------------------------ scalar reference

    /// <summary>dot(row, x) over <paramref name="k"/> elements: each block dequantized exactly, then an FMA chain in element order.</summary>
    internal static float DotScalar(QuantFormat f, byte* row, float* x, int k)
    {
        int be = f.BlockElements(), bb = f.BlockBytes();
        float* buf = stackalloc float[256];
        var w = new Span<float>(buf, be);
        float s = 0;
        for (int b = 0; b < k / be; b++)
        {
            BlockCodec.DequantizeBlock(f, new ReadOnlySpan<byte>(row + (nint)b * bb, bb), w);
            float* xb = x + (nint)b * be;
            for (int i = 0; i < be; i++) s = MathF.FusedMultiplyAdd(buf[i], xb[i], s);
        }
        return s;
    }

    // ------------------------------------------------------------------ AVX2 + FMA

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> U8(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> I8(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> F(Vector256<int> v) => Avx.ConvertToVector256Single(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> L(float* p) => Vector256.Load(p);

    internal static float DotAvx2(QuantFormat f, byte* row, float* x, int k, float* sum16, float* sum32) => f switch
    {
        QuantFormat.Q8_0 => DotQ8_0Avx2(row, x, k / 32),
        QuantFormat.Q4_0 => DotQ4_0Avx2(row, x, k / 32, sum32),
        QuantFormat.Q5_0 => DotQ5_0Avx2(row, x, k / 32, sum32),
        QuantFormat.Q4_K => DotQ4_KAvx2(row, x, k / 256, sum32),
        QuantFormat.Q6_K => DotQ6_KAvx2(row, x, k / 256, sum16),
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, null),
    };

    private static float DotQ8_0Avx2(byte* row, float* x, int nb)
    {
        Vector256<float> acc0 = default, acc1 = default;
        float* ds = stackalloc float[8];
        var strides = Strides(34);
        int b = 0;
        for (; b + 8 <= nb; b += 8)
        {
            Scales8(row + (nint)b * 34, strides, ds);
            for (int k = 0; k < 8; k += 2)
            {
                byte* p = row + (nint)(b + k) * 34;
                float* xb = x + (nint)(b + k) * 32;
                var s = I8(p + 2) * L(xb);
                s = Fma.MultiplyAdd(I8(p + 10), L(xb + 8), s);
                s = Fma.MultiplyAdd(I8(p + 18), L(xb + 16), s);
                s = Fma.MultiplyAdd(I8(p + 26), L(xb + 24), s);
                acc0 = Fma.MultiplyAdd(Vector256.Create(ds[k]), s, acc0);
                var t = I8(p + 36) * L(xb + 32);
                t = Fma.MultiplyAdd(I8(p + 44), L(xb + 40), t);
                t = Fma.MultiplyAdd(I8(p + 52), L(xb + 48), t);
                t = Fma.MultiplyAdd(I8(p + 60), L(xb + 56), t);
                acc1 = Fma.MultiplyAdd(Vector256.Create(ds[k + 1]), t, acc1);
            }
        }
        for (; b < nb; b++)
        {
            byte* p = row + (nint)b * 34;
            float* xb = x + (nint)b * 32;
            var s = I8(p + 2) * L(xb);
            s = Fma.MultiplyAdd(I8(p + 10), L(xb + 8), s);
            s = Fma.MultiplyAdd(I8(p + 18), L(xb + 16), s);
            s = Fma.MultiplyAdd(I8(p + 26), L(xb + 24), s);
            acc0 = Fma.MultiplyAdd(Vector256.Create(Half(p)), s, acc0);
        }
        return Vector256.Sum(acc0 + acc1);
    }

    private static float DotQ4_0Avx2(byte* row, float* x, int nb, float* sum32)
    {
        Vector256<float> acc0 = default, acc1 = default, corr = default;
        var mask = Vector256.Create(0x0F);
        float* ds = stackalloc float[8];
        var strides = Strides(18);
        float tailCorr = 0;
        for (int b = 0; b < nb; b += 8)
        {
            int n = Math.Min(8, nb - b);
            if (n == 8) corr = Fma.MultiplyAdd(Scales8(row + (nint)b * 18, strides, ds), L(sum32 + b), corr);
            else for (int k = 0; k < n; k++) { ds[k] = Half(row + (nint)(b + k) * 18); tailCorr = MathF.FusedMultiplyAdd(ds[k], sum32[b + k], tailCorr); }
            for (int k = 0; k < n; k++)
            {
                byte* p = row + (nint)(b + k) * 18;
                float* xb = x + (nint)(b + k) * 32;
                var v = Avx2.ConvertToVector256Int32(p + 2);
                var w = Avx2.ConvertToVector256Int32(p + 10);
                var s = F(v & mask) * L(xb);
                var t = F(w & mask) * L(xb + 8);
                s = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(v, 4)), L(xb + 16), s);
                t = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(w, 4)), L(xb + 24), t);
                if ((k & 1) == 0) acc0 = Fma.MultiplyAdd(Vector256.Create(ds[k]), s + t, acc0);
                else acc1 = Fma.MultiplyAdd(Vector256.Create(ds[k]), s + t, acc1);
            }
        }
        return Vector256.Sum(acc0 + acc1) - 8 * (Vector256.Sum(corr) + tailCorr);
    }

    /// <summary>For Q5_0's 5th bits: entry b (256 × 8 ints) holds 16 in lane i when bit i of b is set.</summary>
    private static readonly int* s_bit4 = BuildBitTable();

    private static int* BuildBitTable()
    {
        var t = (int*)NativeMemory.AlignedAlloc(256 * 8 * sizeof(int), 64);
        for (int b = 0; b < 256; b++)
            for (int i = 0; i < 8; i++) t[b * 8 + i] = ((b >> i) & 1) << 4;
        return t;
    }

    private static float DotQ5_0Avx2(byte* row, float* x, int nb, float* sum32)
    {
        Vector256<float> acc0 = default, acc1 = default, corr = default;
        var mask = Vector256.Create(0x0F);
        int* tab = s_bit4;
        float* ds = stackalloc float[8];
        var strides = Strides(22);
        float tailCorr = 0;
        for (int b = 0; b < nb; b += 8)
        {
            int n = Math.Min(8, nb - b);
            if (n == 8) corr = Fma.MultiplyAdd(Scales8(row + (nint)b * 22, strides, ds), L(sum32 + b), corr);
            else for (int k = 0; k < n; k++) { ds[k] = Half(row + (nint)(b + k) * 22); tailCorr = MathF.FusedMultiplyAdd(ds[k], sum32[b + k], tailCorr); }
            for (int k = 0; k < n; k++)
            {
                byte* p = row + (nint)(b + k) * 22;
                float* xb = x + (nint)(b + k) * 32;
                byte* qh = p + 2;
                var v = Avx2.ConvertToVector256Int32(p + 6);
                var w = Avx2.ConvertToVector256Int32(p + 14);
                var q0 = (v & mask) | Vector256.Load(tab + qh[0] * 8);
                var q1 = (w & mask) | Vector256.Load(tab + qh[1] * 8);
                var q2 = Avx2.ShiftRightLogical(v, 4) | Vector256.Load(tab + qh[2] * 8);
                var q3 = Avx2.ShiftRightLogical(w, 4) | Vector256.Load(tab + qh[3] * 8);
                var s = F(q0) * L(xb);
                var t = F(q1) * L(xb + 8);
                s = Fma.MultiplyAdd(F(q2), L(xb + 16), s);
                t = Fma.MultiplyAdd(F(q3), L(xb + 24), t);
                if ((k & 1) == 0) acc0 = Fma.MultiplyAdd(Vector256.Create(ds[k]), s + t, acc0);
                else acc1 = Fma.MultiplyAdd(Vector256.Create(ds[k]), s + t, acc1);
            }
        }
        return Vector256.Sum(acc0 + acc1) - 16 * (Vector256.Sum(corr) + tailCorr);
    }

    private static float DotQ4_KAvx2(byte* row, float* x, int nb, float* sum32)
    {
        Vector256<float> acc0 = default, acc1 = default;
        var mask = Vector256.Create(0x0F);
        byte* sc = stackalloc byte[8];
        byte* mn = stackalloc byte[8];
        float corr = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* p = row + (nint)b * 144;
            float d = Half(p), dmin = Half(p + 2);
            ScalesK4(p + 4, sc, mn);
            byte* q = p + 16;
            float* xs = sum32 + (nint)b * 8;
            for (int j = 0; j < 4; j++)
            {
                float* xb = x + (nint)b * 256 + 64 * j;
                byte* qj = q + 32 * j;
                var v0 = Avx2.ConvertToVector256Int32(qj);
                var v1 = Avx2.ConvertToVector256Int32(qj + 8);
                var v2 = Avx2.ConvertToVector256Int32(qj + 16);
                var v3 = Avx2.ConvertToVector256Int32(qj + 24);
                var lo = F(v0 & mask) * L(xb);
                var hi = F(Avx2.ShiftRightLogical(v0, 4)) * L(xb + 32);
                lo = Fma.MultiplyAdd(F(v1 & mask), L(xb + 8), lo);
                hi = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(v1, 4)), L(xb + 40), hi);
                lo = Fma.MultiplyAdd(F(v2 & mask), L(xb + 16), lo);
                hi = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(v2, 4)), L(xb + 48), hi);
                lo = Fma.MultiplyAdd(F(v3 & mask), L(xb + 24), lo);
                hi = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(v3, 4)), L(xb + 56), hi);
                acc0 = Fma.MultiplyAdd(Vector256.Create(d * sc[2 * j]), lo, acc0);
                acc1 = Fma.MultiplyAdd(Vector256.Create(d * sc[2 * j + 1]), hi, acc1);
                corr = MathF.FusedMultiplyAdd(dmin * mn[2 * j], xs[2 * j], corr);
                corr = MathF.FusedMultiplyAdd(dmin * mn[2 * j + 1], xs[2 * j + 1], corr);
            }
        }
        return Vector256.Sum(acc0 + acc1) - corr;
    }

    private static float DotQ6_KAvx2(byte* row, float* x, int nb, float* sum16)
    {
        Vector256<float> acc0 = default, acc1 = default, corr = default;
        var m15 = Vector256.Create(0x0F);
        var m3 = Vector256.Create(0x03);
        var m12 = Vector256.Create(0x0C);
        var m48 = Vector256.Create(0x30);
        var m192 = Vector256.Create(0xC0);
        float* ds = stackalloc float[16];
        for (int b = 0; b < nb; b++)
        {
            byte* p = row + (nint)b * 210;
            var d = Vector256.Create(Half(p + 208));
            // d·sc for the 16 sub-blocks, and Σ d·sc·Σx (the −32 offset) as a vector
            var s0 = d * F(Avx2.ConvertToVector256Int32((sbyte*)(p + 192)));
            var s1 = d * F(Avx2.ConvertToVector256Int32((sbyte*)(p + 200)));
            s0.Store(ds);
            s1.Store(ds + 8);
            float* xs = sum16 + (nint)b * 16;
            corr = Fma.MultiplyAdd(s0, L(xs), corr);
            corr = Fma.MultiplyAdd(s1, L(xs + 8), corr);
            for (int n = 0; n < 2; n++)
            {
                byte* ql = p + 64 * n;
                byte* qh = p + 128 + 32 * n;
                float* s = ds + 8 * n;
                float* xb = x + (nint)b * 256 + 128 * n;
                for (int half = 0; half < 2; half++)
                {
                    int l = 16 * half;
                    var a0 = Avx2.ConvertToVector256Int32(ql + l);
                    var a1 = Avx2.ConvertToVector256Int32(ql + l + 8);
                    var b0 = Avx2.ConvertToVector256Int32(ql + 32 + l);
                    var b1 = Avx2.ConvertToVector256Int32(ql + 32 + l + 8);
                    var h0 = Avx2.ConvertToVector256Int32(qh + l);
                    var h1 = Avx2.ConvertToVector256Int32(qh + l + 8);
                    var q1 = F((a0 & m15) | Avx2.ShiftLeftLogical(h0 & m3, 4)) * L(xb + l);
                    q1 = Fma.MultiplyAdd(F((a1 & m15) | Avx2.ShiftLeftLogical(h1 & m3, 4)), L(xb + l + 8), q1);
                    var q2 = F((b0 & m15) | Avx2.ShiftLeftLogical(h0 & m12, 2)) * L(xb + 32 + l);
                    q2 = Fma.MultiplyAdd(F((b1 & m15) | Avx2.ShiftLeftLogical(h1 & m12, 2)), L(xb + 32 + l + 8), q2);
                    var q3 = F(Avx2.ShiftRightLogical(a0, 4) | (h0 & m48)) * L(xb + 64 + l);
                    q3 = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(a1, 4) | (h1 & m48)), L(xb + 64 + l + 8), q3);
                    var q4 = F(Avx2.ShiftRightLogical(b0, 4) | Avx2.ShiftRightLogical(h0 & m192, 2)) * L(xb + 96 + l);
                    q4 = Fma.MultiplyAdd(F(Avx2.ShiftRightLogical(b1, 4) | Avx2.ShiftRightLogical(h1 & m192, 2)), L(xb + 96 + l + 8), q4);
                    acc0 = Fma.MultiplyAdd(Vector256.Create(s[half]), q1, acc0);
                    acc1 = Fma.MultiplyAdd(Vector256.Create(s[half + 2]), q2, acc1);
                    acc0 = Fma.MultiplyAdd(Vector256.Create(s[half + 4]), q3, acc0);
                    acc1 = Fma.MultiplyAdd(Vector256.Create(s[half + 6]), q4, acc1);
                }
            }
        }
        return Vector256.Sum(acc0 + acc1) - 32 * Vector256.Sum(corr);
    }

    // ------------------------------------------------------------------ AVX-512F

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> U16(byte* p) => Avx512F.ConvertToVector512Int32(Vector128.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> F(Vector512<int> v) => Avx512F.ConvertToVector512Single(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> L16(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Fma16(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Avx512F.FusedMultiplyAdd(a, b, c);

    internal static float DotAvx512(QuantFormat f, byte* row, float* x, int k, float* sum16, float* sum32) => f switch
    {
        QuantFormat.Q8_0 => DotQ8_0Avx512(row, x, k / 32),
        QuantFormat.Q4_0 => DotQ4_0Avx512(row, x, k / 32, sum32),
        QuantFormat.Q5_0 => DotQ5_0Avx512(row, x, k / 32, sum32),
        QuantFormat.Q4_K => DotQ4_KAvx512(row, x, k / 256, sum32),
        QuantFormat.Q6_K => DotQ6_KAvx512(row, x, k / 256, sum16),
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, null),
    };

    private static float DotQ8_0Avx512(byte* row, float* x, int nb)
    {
        Vector512<float> acc0 = default, acc1 = default;
        int b = 0;
        for (; b + 2 <= nb; b += 2)
        {
            byte* p = row + (nint)b * 34;
            float* xb = x + (nint)b * 32;
            var s = F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 2)))) * L16(xb);
            s = Fma16(F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 18)))), L16(xb + 16), s);
            acc0 = Fma16(Vector512.Create(Half(p)), s, acc0);
            var t = F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 36)))) * L16(xb + 32);
            t = Fma16(F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 52)))), L16(xb + 48), t);
            acc1 = Fma16(Vector512.Create(Half(p + 34)), t, acc1);
        }
        for (; b < nb; b++)
        {
            byte* p = row + (nint)b * 34;
            float* xb = x + (nint)b * 32;
            var s = F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 2)))) * L16(xb);
            s = Fma16(F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 18)))), L16(xb + 16), s);
            acc0 = Fma16(Vector512.Create(Half(p)), s, acc0);
        }
        return Vector512.Sum(acc0 + acc1);
    }

    private static float DotQ4_0Avx512(byte* row, float* x, int nb, float* sum32)
    {
        Vector512<float> acc0 = default, acc1 = default;
        Vector256<float> corr = default;
        var mask = Vector512.Create(0x0F);
        float* ds = stackalloc float[8];
        var strides = Strides(18);
        float tailCorr = 0;
        for (int b = 0; b < nb; b += 8)
        {
            int n = Math.Min(8, nb - b);
            if (n == 8) corr = Fma.MultiplyAdd(Scales8(row + (nint)b * 18, strides, ds), L(sum32 + b), corr);
            else for (int k = 0; k < n; k++) { ds[k] = Half(row + (nint)(b + k) * 18); tailCorr = MathF.FusedMultiplyAdd(ds[k], sum32[b + k], tailCorr); }
            for (int k = 0; k < n; k++)
            {
                byte* p = row + (nint)(b + k) * 18;
                float* xb = x + (nint)(b + k) * 32;
                var v = U16(p + 2);
                var s = Fma16(F(Avx512F.ShiftRightLogical(v, 4)), L16(xb + 16), F(v & mask) * L16(xb));
                if ((k & 1) == 0) acc0 = Fma16(Vector512.Create(ds[k]), s, acc0);
                else acc1 = Fma16(Vector512.Create(ds[k]), s, acc1);
            }
        }
        return Vector512.Sum(acc0 + acc1) - 8 * (Vector256.Sum(corr) + tailCorr);
    }

    private static float DotQ5_0Avx512(byte* row, float* x, int nb, float* sum32)
    {
        Vector512<float> acc0 = default, acc1 = default;
        Vector256<float> corr = default;
        var mask = Vector512.Create(0x0F);
        var one = Vector512.Create(1u);
        var shLo = Vector512.Create(0u, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        var shHi = shLo + Vector512.Create(16u);
        float* ds = stackalloc float[8];
        var strides = Strides(22);
        float tailCorr = 0;
        for (int b = 0; b < nb; b += 8)
        {
            int n = Math.Min(8, nb - b);
            if (n == 8) corr = Fma.MultiplyAdd(Scales8(row + (nint)b * 22, strides, ds), L(sum32 + b), corr);
            else for (int k = 0; k < n; k++) { ds[k] = Half(row + (nint)(b + k) * 22); tailCorr = MathF.FusedMultiplyAdd(ds[k], sum32[b + k], tailCorr); }
            for (int k = 0; k < n; k++)
            {
                byte* p = row + (nint)(b + k) * 22;
                float* xb = x + (nint)(b + k) * 32;
                var qh = Vector512.Create(*(uint*)(p + 2));
                var hLo = Avx512F.ShiftLeftLogical(Avx512F.ShiftRightLogicalVariable(qh, shLo) & one, 4).AsInt32();
                var hHi = Avx512F.ShiftLeftLogical(Avx512F.ShiftRightLogicalVariable(qh, shHi) & one, 4).AsInt32();
                var v = U16(p + 6);
                var s = Fma16(F(Avx512F.ShiftRightLogical(v, 4) | hHi), L16(xb + 16), F((v & mask) | hLo) * L16(xb));
                if ((k & 1) == 0) acc0 = Fma16(Vector512.Create(ds[k]), s, acc0);
                else acc1 = Fma16(Vector512.Create(ds[k]), s, acc1);
            }
        }
        return Vector512.Sum(acc0 + acc1) - 16 * (Vector256.Sum(corr) + tailCorr);
    }

    private static float DotQ4_KAvx512(byte* row, float* x, int nb, float* sum32)
    {
        Vector512<float> acc0 = default, acc1 = default;
        var mask = Vector512.Create(0x0F);
        byte* sc = stackalloc byte[8];
        byte* mn = stackalloc byte[8];
        float corr = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* p = row + (nint)b * 144;
            float d = Half(p), dmin = Half(p + 2);
            ScalesK4(p + 4, sc, mn);
            byte* q = p + 16;
            float* xs = sum32 + (nint)b * 8;
            for (int j = 0; j < 4; j++)
            {
                float* xb = x + (nint)b * 256 + 64 * j;
                var v0 = U16(q + 32 * j);
                var v1 = U16(q + 32 * j + 16);
                var lo = Fma16(F(v1 & mask), L16(xb + 16), F(v0 & mask) * L16(xb));
                var hi = Fma16(F(Avx512F.ShiftRightLogical(v1, 4)), L16(xb + 48), F(Avx512F.ShiftRightLogical(v0, 4)) * L16(xb + 32));
                acc0 = Fma16(Vector512.Create(d * sc[2 * j]), lo, acc0);
                acc1 = Fma16(Vector512.Create(d * sc[2 * j + 1]), hi, acc1);
                corr = MathF.FusedMultiplyAdd(dmin * mn[2 * j], xs[2 * j], corr);
                corr = MathF.FusedMultiplyAdd(dmin * mn[2 * j + 1], xs[2 * j + 1], corr);
            }
        }
        return Vector512.Sum(acc0 + acc1) - corr;
    }

    private static float DotQ6_KAvx512(byte* row, float* x, int nb, float* sum16)
    {
        Vector512<float> acc0 = default, acc1 = default, corr = default;
        var m15 = Vector512.Create(0x0F);
        var m3 = Vector512.Create(0x03);
        var m12 = Vector512.Create(0x0C);
        var m48 = Vector512.Create(0x30);
        var m192 = Vector512.Create(0xC0);
        float* ds = stackalloc float[16];
        for (int b = 0; b < nb; b++)
        {
            byte* p = row + (nint)b * 210;
            var sc = Vector512.Create(Half(p + 208)) * F(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 192))));
            sc.Store(ds);
            corr = Fma16(sc, L16(sum16 + (nint)b * 16), corr);
            for (int n = 0; n < 2; n++)
            {
                byte* ql = p + 64 * n;
                byte* qh = p + 128 + 32 * n;
                float* s = ds + 8 * n;
                float* xb = x + (nint)b * 256 + 128 * n;
                for (int half = 0; half < 2; half++)
                {
                    int l = 16 * half;
                    var a = U16(ql + l);
                    var bb = U16(ql + 32 + l);
                    var h = U16(qh + l);
                    var s1 = F((a & m15) | Avx512F.ShiftLeftLogical(h & m3, 4)) * L16(xb + l);
                    var s2 = F((bb & m15) | Avx512F.ShiftLeftLogical(h & m12, 2)) * L16(xb + 32 + l);
                    var s3 = F(Avx512F.ShiftRightLogical(a, 4) | (h & m48)) * L16(xb + 64 + l);
                    var s4 = F(Avx512F.ShiftRightLogical(bb, 4) | Avx512F.ShiftRightLogical(h & m192, 2)) * L16(xb + 96 + l);
                    acc0 = Fma16(Vector512.Create(s[half]), s1, acc0);
                    acc1 = Fma16(Vector512.Create(s[half + 2]), s2, acc1);
                    acc0 = Fma16(Vector512.Create(s[half + 4]), s3, acc0);
                    acc1 = Fma16(Vector512.Create(s[half + 6]), s4, acc1);
                }
            }
        }
        return Vector512.Sum(acc0 + acc1) - 32 * Vector512.Sum(corr);
    }

    // ------------------------------------------------------------------ fp32 dots of one row with up to 4 rows of X

    /// <summary>dot(w, x_j) for the <paramref name="n"/> (1–4) rows x_j = x + j·ldx, k a multiple of 16; FMA chains in element order.</summary>
    internal static (float, float, float, float) Dot4Scalar(float* w, float* x, int ldx, int n, int k)
    {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        float* x1 = n > 1 ? x + ldx : x, x2 = n > 2 ? x + 2 * (nint)ldx : x, x3 = n > 3 ? x + 3 * (nint)ldx : x;
        for (int p = 0; p < k; p++)
        {
            float v = w[p];
            s0 = MathF.FusedMultiplyAdd(v, x[p], s0);
            s1 = MathF.FusedMultiplyAdd(v, x1[p], s1);
            s2 = MathF.FusedMultiplyAdd(v, x2[p], s2);
            s3 = MathF.FusedMultiplyAdd(v, x3[p], s3);
        }
        return (s0, s1, s2, s3);
    }

    /// <summary>As <see cref="Dot4Scalar"/> with Vector256 (two accumulators per row of X). Rows past n repeat row 0 and are discarded.</summary>
    internal static (float, float, float, float) Dot4Avx2(float* w, float* x, int ldx, int n, int k)
    {
        float* x1 = n > 1 ? x + ldx : x, x2 = n > 2 ? x + 2 * (nint)ldx : x, x3 = n > 3 ? x + 3 * (nint)ldx : x;
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        for (int p = 0; p < k; p += 16)
        {
            var w0 = L(w + p);
            var w1 = L(w + p + 8);
            a0 = Fma.MultiplyAdd(w0, L(x + p), a0); b0 = Fma.MultiplyAdd(w1, L(x + p + 8), b0);
            a1 = Fma.MultiplyAdd(w0, L(x1 + p), a1); b1 = Fma.MultiplyAdd(w1, L(x1 + p + 8), b1);
            a2 = Fma.MultiplyAdd(w0, L(x2 + p), a2); b2 = Fma.MultiplyAdd(w1, L(x2 + p + 8), b2);
            a3 = Fma.MultiplyAdd(w0, L(x3 + p), a3); b3 = Fma.MultiplyAdd(w1, L(x3 + p + 8), b3);
        }
        return (Vector256.Sum(a0 + b0), Vector256.Sum(a1 + b1), Vector256.Sum(a2 + b2), Vector256.Sum(a3 + b3));
    }

    /// <summary>As <see cref="Dot4Avx2"/> with Vector512 (k a multiple of 32).</summary>
    internal static (float, float, float, float) Dot4Avx512(float* w, float* x, int ldx, int n, int k)
    {
        float* x1 = n > 1 ? x + ldx : x, x2 = n > 2 ? x + 2 * (nint)ldx : x, x3 = n > 3 ? x + 3 * (nint)ldx : x;
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        for (int p = 0; p < k; p += 32)
        {
            var w0 = L16(w + p);
            var w1 = L16(w + p + 16);
            a0 = Fma16(w0, L16(x + p), a0); b0 = Fma16(w1, L16(x + p + 16), b0);
            a1 = Fma16(w0, L16(x1 + p), a1); b1 = Fma16(w1, L16(x1 + p + 16), b1);
            a2 = Fma16(w0, L16(x2 + p), a2); b2 = Fma16(w1, L16(x2 + p + 16), b2);
            a3 = Fma16(w0, L16(x3 + p), a3); b3 = Fma16(w1, L16(x3 + p + 16), b3);
        }
        return (Vector512.Sum(a0 + b0), Vector512.Sum(a1 + b1), Vector512.Sum(a2 + b2), Vector512.Sum(a3 + b3));
    }

    // ------------------------------------------------------------------ exact SIMD dequantization (GEMM panels)

    /// <summary>
    /// Blocks [<paramref name="b0"/>, <paramref name="b0"/> + <paramref name="nb"/>) of a row dequantized into
    /// <paramref name="dst"/>, bit-exact with <see cref="BlockCodec.DequantizeBlock"/> (the same fp32 products, no FMA),
    /// with AVX2 where <paramref name="simd"/> is set.
    /// </summary>
    internal static void DequantizeBlocks(QuantFormat f, byte* row, int b0, int nb, float* dst, bool simd)
    {
        int be = f.BlockElements(), bb = f.BlockBytes();
        byte* p = row + (nint)b0 * bb;
        if (!simd)
        {
            for (int b = 0; b < nb; b++)
                BlockCodec.DequantizeBlock(f, new ReadOnlySpan<byte>(p + (nint)b * bb, bb), new Span<float>(dst + (nint)b * be, be));
            return;
        }
        switch (f)
        {
            case QuantFormat.Q8_0:
                for (int b = 0; b < nb; b++, p += 34, dst += 32)
                {
                    var d = Vector256.Create(Half(p));
                    (I8(p + 2) * d).Store(dst);
                    (I8(p + 10) * d).Store(dst + 8);
                    (I8(p + 18) * d).Store(dst + 16);
                    (I8(p + 26) * d).Store(dst + 24);
                }
                break;
            case QuantFormat.Q4_0:
                {
                    var mask = Vector256.Create(0x0F);
                    var eight = Vector256.Create(8);
                    for (int b = 0; b < nb; b++, p += 18, dst += 32)
                    {
                        var d = Vector256.Create(Half(p));
                        var v = Avx2.ConvertToVector256Int32(p + 2);
                        var w = Avx2.ConvertToVector256Int32(p + 10);
                        (F((v & mask) - eight) * d).Store(dst);
                        (F((w & mask) - eight) * d).Store(dst + 8);
                        (F(Avx2.ShiftRightLogical(v, 4) - eight) * d).Store(dst + 16);
                        (F(Avx2.ShiftRightLogical(w, 4) - eight) * d).Store(dst + 24);
                    }
                    break;
                }
            case QuantFormat.Q5_0:
                {
                    var mask = Vector256.Create(0x0F);
                    var sixteen = Vector256.Create(16);
                    int* tab = s_bit4;
                    for (int b = 0; b < nb; b++, p += 22, dst += 32)
                    {
                        var d = Vector256.Create(Half(p));
                        byte* qh = p + 2;
                        var v = Avx2.ConvertToVector256Int32(p + 6);
                        var w = Avx2.ConvertToVector256Int32(p + 14);
                        (F(((v & mask) | Vector256.Load(tab + qh[0] * 8)) - sixteen) * d).Store(dst);
                        (F(((w & mask) | Vector256.Load(tab + qh[1] * 8)) - sixteen) * d).Store(dst + 8);
                        (F((Avx2.ShiftRightLogical(v, 4) | Vector256.Load(tab + qh[2] * 8)) - sixteen) * d).Store(dst + 16);
                        (F((Avx2.ShiftRightLogical(w, 4) | Vector256.Load(tab + qh[3] * 8)) - sixteen) * d).Store(dst + 24);
                    }
                    break;
                }
            case QuantFormat.Q4_K:
                {
                    var mask = Vector256.Create(0x0F);
                    byte* sc = stackalloc byte[8];
                    byte* mn = stackalloc byte[8];
                    for (int b = 0; b < nb; b++, p += 144, dst += 256)
                    {
                        float d = Half(p), dmin = Half(p + 2);
                        ScalesK4(p + 4, sc, mn);
                        for (int j = 0; j < 4; j++)
                        {
                            byte* q = p + 16 + 32 * j;
                            float* o = dst + 64 * j;
                            var d1 = Vector256.Create(d * sc[2 * j]);
                            var m1 = Vector256.Create(dmin * mn[2 * j]);
                            var d2 = Vector256.Create(d * sc[2 * j + 1]);
                            var m2 = Vector256.Create(dmin * mn[2 * j + 1]);
                            for (int c = 0; c < 4; c++)
                            {
                                var v = Avx2.ConvertToVector256Int32(q + 8 * c);
                                (d1 * F(v & mask) - m1).Store(o + 8 * c);
                                (d2 * F(Avx2.ShiftRightLogical(v, 4)) - m2).Store(o + 32 + 8 * c);
                            }
                        }
                    }
                    break;
                }
            case QuantFormat.Q6_K:
                {
                    var m15 = Vector256.Create(0x0F);
                    var m3 = Vector256.Create(0x03);
                    var m12 = Vector256.Create(0x0C);
                    var m48 = Vector256.Create(0x30);
                    var m192 = Vector256.Create(0xC0);
                    var k32 = Vector256.Create(32);
                    for (int b = 0; b < nb; b++, p += 210, dst += 256)
                    {
                        sbyte* sc = (sbyte*)(p + 192);
                        float d = Half(p + 208);
                        for (int n = 0; n < 2; n++)
                        {
                            byte* ql = p + 64 * n;
                            byte* qh = p + 128 + 32 * n;
                            sbyte* s = sc + 8 * n;
                            float* o = dst + 128 * n;
                            for (int l = 0; l < 32; l += 8)
                            {
                                int isc = l / 16;
                                var a = Avx2.ConvertToVector256Int32(ql + l);
                                var bq = Avx2.ConvertToVector256Int32(ql + 32 + l);
                                var h = Avx2.ConvertToVector256Int32(qh + l);
                                (Vector256.Create(d * s[isc]) * F(((a & m15) | Avx2.ShiftLeftLogical(h & m3, 4)) - k32)).Store(o + l);
                                (Vector256.Create(d * s[isc + 2]) * F(((bq & m15) | Avx2.ShiftLeftLogical(h & m12, 2)) - k32)).Store(o + 32 + l);
                                (Vector256.Create(d * s[isc + 4]) * F((Avx2.ShiftRightLogical(a, 4) | (h & m48)) - k32)).Store(o + 64 + l);
                                (Vector256.Create(d * s[isc + 6]) * F((Avx2.ShiftRightLogical(bq, 4) | Avx2.ShiftRightLogical(h & m192, 2)) - k32)).Store(o + 96 + l);
                            }
                        }
                    }
                    break;
                }
            default:
                throw new ArgumentOutOfRangeException(nameof(f), f, null);
        }
    }
}
