using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace AutoPrune.Compute.Quant;

/// <summary>
/// Dequantization and quantization of ggml's block formats, written from the published block layouts (ggml's
/// <c>block_q8_0</c>, <c>block_q4_0</c>, <c>block_q5_0</c>, <c>block_q4_K</c>, <c>block_q6_K</c>). Dequantization is
/// bit-exact with ggml's reference <c>dequantize_row_*</c>: every product is computed in fp32 in the same order, with no
/// fused multiply-add. The quantizers follow ggml's reference algorithms (<c>quantize_row_*_ref</c>, the ones llama.cpp's
/// quantizer uses without an importance matrix), so they reproduce its bytes: Q8_0/Q4_0/Q5_0 round each value on the
/// block's absolute maximum; Q4_K searches each sub-block's scale and min (<see cref="MakeQkx2Quants"/>), Q6_K each
/// sub-block's scale (<see cref="MakeQxQuants"/>), both then quantizing the sub-block scales to 6/8 bits.
/// </summary>
internal static class BlockCodec
{
    private const int QK = 32, QKK = 256;

    // ------------------------------------------------------------------ dequantization

    /// <summary>
    /// <paramref name="dst"/> = the values of the blocks in <paramref name="src"/>; <paramref name="dst"/> must be a whole
    /// number of blocks and <paramref name="src"/> exactly their bytes.
    /// </summary>
    public static void Dequantize(QuantFormat format, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int be = format.BlockElements(), bb = format.BlockBytes();
        if (dst.Length % be != 0)
            throw new ArgumentException($"{format} holds whole blocks of {be} values; {dst.Length} is not a multiple.", nameof(dst));
        long need = (long)dst.Length / be * bb;
        if (src.Length != need)
            throw new ArgumentException($"{dst.Length} {format} values are {need} bytes, but {src.Length} were given.", nameof(src));
        switch (format)
        {
            case QuantFormat.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
            case QuantFormat.F16: TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(src), dst); break;
            case QuantFormat.BF16:
                {
                    var bits = MemoryMarshal.Cast<byte, ushort>(src);
                    var d = MemoryMarshal.Cast<float, uint>(dst);
                    for (int i = 0; i < bits.Length; i++) d[i] = (uint)bits[i] << 16;
                    break;
                }
            default:
                int blocks = dst.Length / be;
                for (int b = 0; b < blocks; b++)
                    DequantizeBlock(format, src.Slice(b * bb, bb), dst.Slice(b * be, be));
                break;
        }
    }

    /// <summary>One block of a block-quantized format.</summary>
    public static void DequantizeBlock(QuantFormat format, ReadOnlySpan<byte> b, Span<float> y)
    {
        switch (format)
        {
            case QuantFormat.Q8_0:
                {
                    float d = Fp16(b, 0);
                    for (int j = 0; j < QK; j++) y[j] = (sbyte)b[2 + j] * d;
                    break;
                }
            case QuantFormat.Q4_0:
                {
                    float d = Fp16(b, 0);
                    for (int j = 0; j < QK / 2; j++)
                    {
                        int x0 = (b[2 + j] & 0x0F) - 8;
                        int x1 = (b[2 + j] >> 4) - 8;
                        y[j] = x0 * d;
                        y[j + QK / 2] = x1 * d;
                    }
                    break;
                }
            case QuantFormat.Q5_0:
                {
                    float d = Fp16(b, 0);
                    uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(2));
                    for (int j = 0; j < QK / 2; j++)
                    {
                        int xh0 = (int)((qh >> j) << 4) & 0x10;
                        int xh1 = (int)(qh >> (j + 12)) & 0x10;
                        int x0 = ((b[6 + j] & 0x0F) | xh0) - 16;
                        int x1 = ((b[6 + j] >> 4) | xh1) - 16;
                        y[j] = x0 * d;
                        y[j + QK / 2] = x1 * d;
                    }
                    break;
                }
            case QuantFormat.Q4_K:
                {
                    float d = Fp16(b, 0), min = Fp16(b, 2);
                    var scales = b.Slice(4, 12);
                    var q = b.Slice(16, 128);
                    int yi = 0;
                    for (int j = 0, sub = 0; j < QKK; j += 64, sub += 2)
                    {
                        ScaleMinK4(sub, scales, out byte sc, out byte m);
                        float d1 = d * sc, m1 = min * m;
                        ScaleMinK4(sub + 1, scales, out sc, out m);
                        float d2 = d * sc, m2 = min * m;
                        var qs = q.Slice(j / 2, 32);
                        for (int l = 0; l < 32; l++) y[yi++] = d1 * (qs[l] & 0xF) - m1;
                        for (int l = 0; l < 32; l++) y[yi++] = d2 * (qs[l] >> 4) - m2;
                    }
                    break;
                }
            case QuantFormat.Q6_K:
                {
                    var ql = b.Slice(0, 128);
                    var qh = b.Slice(128, 64);
                    var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(192, 16));
                    float d = Fp16(b, 208);
                    for (int n = 0; n < 2; n++)
                    {
                        var l0 = ql.Slice(64 * n);
                        var h0 = qh.Slice(32 * n);
                        var s0 = sc.Slice(8 * n);
                        var yo = y.Slice(128 * n);
                        for (int l = 0; l < 32; l++)
                        {
                            int isc = l / 16;
                            int q1 = ((l0[l] & 0xF) | ((h0[l] >> 0) & 3) << 4) - 32;
                            int q2 = ((l0[l + 32] & 0xF) | ((h0[l] >> 2) & 3) << 4) - 32;
                            int q3 = ((l0[l] >> 4) | ((h0[l] >> 4) & 3) << 4) - 32;
                            int q4 = ((l0[l + 32] >> 4) | ((h0[l] >> 6) & 3) << 4) - 32;
                            yo[l] = d * s0[isc] * q1;
                            yo[l + 32] = d * s0[isc + 2] * q2;
                            yo[l + 64] = d * s0[isc + 4] * q3;
                            yo[l + 96] = d * s0[isc + 6] * q4;
                        }
                    }
                    break;
                }
            default:
                throw new ArgumentOutOfRangeException(nameof(format), format, "not a block-quantized format");
        }
    }

    /// <summary>The 6-bit scale and min of Q4_K sub-block <paramref name="j"/> (0–7) from the 12 packed scale bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScaleMinK4(int j, ReadOnlySpan<byte> q, out byte d, out byte m)
    {
        if (j < 4)
        {
            d = (byte)(q[j] & 63);
            m = (byte)(q[j + 4] & 63);
        }
        else
        {
            d = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Fp16(ReadOnlySpan<byte> b, int at) => (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(at)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteFp16(Span<byte> b, int at, float v) => BinaryPrimitives.WriteUInt16LittleEndian(b.Slice(at), BitConverter.HalfToUInt16Bits((Half)v));

    // ------------------------------------------------------------------ quantization

    /// <summary>
    /// Quantizes <paramref name="src"/> (a whole number of blocks) into <paramref name="dst"/> (exactly their bytes).
    /// F16 and BF16 round to nearest even (bf16 NaN stays a quiet NaN, as in ggml).
    /// </summary>
    public static void Quantize(QuantFormat format, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int be = format.BlockElements(), bb = format.BlockBytes();
        if (src.Length % be != 0)
            throw new ArgumentException($"{format} quantizes whole blocks of {be} values; {src.Length} is not a multiple.", nameof(src));
        long need = (long)src.Length / be * bb;
        if (dst.Length != need)
            throw new ArgumentException($"{src.Length} values are {need} bytes as {format}, but the destination holds {dst.Length}.", nameof(dst));
        switch (format)
        {
            case QuantFormat.F32: src.CopyTo(MemoryMarshal.Cast<byte, float>(dst)); return;
            case QuantFormat.F16: TensorPrimitives.ConvertToHalf(src, MemoryMarshal.Cast<byte, Half>(dst)); return;
            case QuantFormat.BF16:
                {
                    var o = MemoryMarshal.Cast<byte, ushort>(dst);
                    for (int i = 0; i < src.Length; i++) o[i] = ToBFloat16(src[i]);
                    return;
                }
        }
        Span<byte> l = stackalloc byte[QKK];
        Span<byte> laux = stackalloc byte[32];
        Span<float> w = stackalloc float[32];
        int blocks = src.Length / be;
        for (int b = 0; b < blocks; b++)
        {
            var x = src.Slice(b * be, be);
            var y = dst.Slice(b * bb, bb);
            switch (format)
            {
                case QuantFormat.Q8_0: QuantizeQ8_0(x, y); break;
                case QuantFormat.Q4_0: QuantizeQ4_0(x, y); break;
                case QuantFormat.Q5_0: QuantizeQ5_0(x, y); break;
                case QuantFormat.Q4_K: QuantizeQ4_K(x, y, l, laux, w); break;
                case QuantFormat.Q6_K: QuantizeQ6_K(x, y, MemoryMarshal.Cast<byte, sbyte>(l)); break;
                default: throw new ArgumentOutOfRangeException(nameof(format), format, null);
            }
        }
    }

    /// <summary>fp32 → bf16 bits, round to nearest even (ggml's <c>ggml_compute_fp32_to_bf16</c>).</summary>
    internal static ushort ToBFloat16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64); // NaN: force quiet
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    /// <summary>ggml's <c>nearest_int</c>: round half to even through the 1.5·2²³ trick (valid for |x| ≤ 4194303).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int NearestInt(float fval)
    {
        float val = fval + 12582912f;
        int i = BitConverter.SingleToInt32Bits(val);
        return (i & 0x007fffff) - 0x00400000;
    }

    private static void QuantizeQ8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f;
        for (int j = 0; j < QK; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteFp16(y, 0, d);
        for (int j = 0; j < QK; j++)
            y[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    private static void QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f, max = 0f;
        for (int j = 0; j < QK; j++)
        {
            float v = x[j];
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteFp16(y, 0, d);
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            int xi0 = Math.Min(15, (int)(sbyte)(x0 + 8.5f));
            int xi1 = Math.Min(15, (int)(sbyte)(x1 + 8.5f));
            y[2 + j] = (byte)(xi0 | (xi1 << 4));
        }
    }

    private static void QuantizeQ5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f, max = 0f;
        for (int j = 0; j < QK; j++)
        {
            float v = x[j];
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteFp16(y, 0, d);
        uint qh = 0;
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            int xi0 = Math.Min(31, (int)(sbyte)(x0 + 16.5f));
            int xi1 = Math.Min(31, (int)(sbyte)(x1 + 16.5f));
            y[6 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= (((uint)xi0 & 0x10u) >> 4) << j;
            qh |= (((uint)xi1 & 0x10u) >> 4) << (j + QK / 2);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(2), qh);
    }

    private static void QuantizeQ4_K(ReadOnlySpan<float> x, Span<byte> y, Span<byte> l, Span<byte> laux, Span<float> weights)
    {
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        y.Slice(4, 12).Clear();
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            var xs = x.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int i = 0; i < 32; i++) sumX2 += xs[i] * xs[i];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int i = 0; i < 32; i++) weights[i] = avX + MathF.Abs(xs[i]);
            scales[j] = MakeQkx2Quants(32, 15, xs, weights, l.Slice(32 * j, 32), out mins[j], laux, -1f, 0.1f, 20, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        var sc = y.Slice(4, 12);
        for (int j = 0; j < 8; j++)
        {
            byte ls = (byte)NearestInt(invScale * scales[j]);
            byte lm = (byte)NearestInt(invMin * mins[j]);
            ls = Math.Min((byte)63, ls);
            lm = Math.Min((byte)63, lm);
            if (j < 4)
            {
                sc[j] = ls;
                sc[j + 4] = lm;
            }
            else
            {
                sc[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                sc[j - 4] |= (byte)((ls >> 4) << 6);
                sc[j] |= (byte)((lm >> 4) << 6);
            }
        }
        WriteFp16(y, 0, maxScale / 63f);
        WriteFp16(y, 2, maxMin / 63f);
        float dAll = Fp16(y, 0), mAll = Fp16(y, 2);
        for (int j = 0; j < 8; j++)
        {
            ScaleMinK4(j, sc, out byte s, out byte m);
            float d = dAll * s;
            if (d == 0) continue;
            float dm = mAll * m;
            for (int i = 0; i < 32; i++)
            {
                int v = NearestInt((x[32 * j + i] + dm) / d);
                l[32 * j + i] = (byte)Math.Max(0, Math.Min(15, v));
            }
        }
        var q = y.Slice(16, 128);
        for (int j = 0, o = 0; j < QKK; j += 64, o += 32)
            for (int i = 0; i < 32; i++)
                q[o + i] = (byte)(l[j + i] | (l[j + i + 32] << 4));
    }

    /// <summary>
    /// ggml's <c>make_qkx2_quants</c>: levels L in [0, nmax] and (scale, min) for x ≈ scale·L − min, minimising the weighted
    /// squared (or absolute) error over the start grid and <paramref name="nstep"/> + 1 trial scales
    /// (nmax + rmin + rdelta·is)/(max − min), each refined by weighted least squares. Returns the scale; <paramref name="theMin"/>
    /// gets the (positive) min.
    /// </summary>
    internal static float MakeQkx2Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> l,
        out float theMin, Span<byte> laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            l.Slice(0, n).Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int li = NearestInt(iscale * (x[i] - min));
            l[i] = (byte)Math.Max(0, Math.Min(nmax, li));
            float diff = scale * l[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int li = NearestInt(iscale * (x[i] - min));
                li = Math.Max(0, Math.Min(nmax, li));
                laux[i] = (byte)li;
                float w = weights[i];
                sumL += w * li;
                sumL2 += w * li * li;
                sumXL += w * li * x[i];
            }
            float det = sumW * sumL2 - sumL * sumL;
            if (det > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / det;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / det;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    laux.Slice(0, n).CopyTo(l);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    private const float GroupMaxEps = 1e-15f;

    private static void QuantizeQ6_K(ReadOnlySpan<float> x, Span<byte> y, Span<sbyte> l)
    {
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            float scale = MakeQxQuants(16, 32, x.Slice(16 * ib, 16), l.Slice(16 * ib, 16), 1);
            scales[ib] = scale;
            float abs = MathF.Abs(scale);
            if (abs > maxAbsScale)
            {
                maxAbsScale = abs;
                maxScale = scale;
            }
        }
        if (maxAbsScale < GroupMaxEps)
        {
            y.Clear();
            WriteFp16(y, 208, 0f);
            return;
        }
        float iscale = -128f / maxScale;
        WriteFp16(y, 208, 1 / iscale);
        var sc = MemoryMarshal.Cast<byte, sbyte>(y.Slice(192, 16));
        for (int ib = 0; ib < 16; ib++)
            sc[ib] = (sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));
        float dAll = Fp16(y, 208);
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * sc[j];
            if (d == 0) continue;
            for (int i = 0; i < 16; i++)
            {
                int v = NearestInt(x[16 * j + i] / d);
                v = Math.Max(-32, Math.Min(31, v));
                l[16 * j + i] = (sbyte)(v + 32);
            }
        }
        var ql = y.Slice(0, 128);
        var qh = y.Slice(128, 64);
        for (int j = 0, o = 0, h = 0; j < QKK; j += 128, o += 64, h += 32)
        {
            for (int i = 0; i < 32; i++)
            {
                int q1 = l[j + i] & 0xF, q2 = l[j + i + 32] & 0xF, q3 = l[j + i + 64] & 0xF, q4 = l[j + i + 96] & 0xF;
                ql[o + i] = (byte)(q1 | (q3 << 4));
                ql[o + i + 32] = (byte)(q2 | (q4 << 4));
                qh[h + i] = (byte)((l[j + i] >> 4) | ((l[j + i + 32] >> 4) << 2) | ((l[j + i + 64] >> 4) << 4) | ((l[j + i + 96] >> 4) << 6));
            }
        }
    }

    /// <summary>
    /// ggml's <c>make_qx_quants</c> without importance weights: symmetric levels L in [0, 2·nmax) (stored with +nmax) and a
    /// scale for x ≈ scale·(L − nmax), starting from −nmax/max and trying 18 nearby scales −(nmax ± 0.1·is)/max, each fitted by
    /// least squares weighted by x² (<paramref name="rmseType"/> 1), keeping the one with the largest Σ(w·x·l)²/Σ(w·l²).
    /// </summary>
    internal static float MakeQxQuants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> l, int rmseType)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            l.Slice(0, n).Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        if (rmseType == 0)
        {
            for (int i = 0; i < n; i++)
            {
                int li = NearestInt(iscale * x[i]);
                l[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, li)));
            }
            return 1 / iscale;
        }
        bool returnEarly = false;
        if (rmseType < 0)
        {
            rmseType = -rmseType;
            returnEarly = true;
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int li = NearestInt(iscale * x[i]);
            li = Math.Max(-nmax, Math.Min(nmax - 1, li));
            l[i] = (sbyte)(li + nmax);
            float w = Weight(rmseType, x[i]);
            sumlx += w * x[i] * li;
            suml2 += w * li * li;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        if (returnEarly) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int li = NearestInt(iscale * x[i]);
                li = Math.Max(-nmax, Math.Min(nmax - 1, li));
                float w = Weight(rmseType, x[i]);
                sumlx += w * x[i] * li;
                suml2 += w * li * li;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                {
                    int li = NearestInt(iscale * x[i]);
                    l[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, li)));
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Weight(int rmseType, float x) => rmseType switch
    {
        1 => x * x,
        2 => 1,
        3 => MathF.Abs(x),
        _ => MathF.Sqrt(MathF.Abs(x)),
    };
}
