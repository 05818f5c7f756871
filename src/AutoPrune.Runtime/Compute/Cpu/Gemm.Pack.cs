using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Compute.Cpu;

internal static partial class Gemm
{
    // Packed layouts (per micro-panel, k-major):
    //   A panel  (MR rows):    ap[p*MR + i] = A[ic+ir+i, pc+p], rows past m are zero.
    //   B panel  (NR columns): bp[p*NR + j] = B(pc+p, jc+jr+j),  columns past n are zero.
    // Panels are stored one after another, so panel r of A starts at ap + r*MR*kc.

    private static unsafe void PackA(float* a, int lda, int ic, int mc, int pc, int kc, int MR, float* ap)
    {
        for (int ir = 0; ir < mc; ir += MR)
        {
            int mr = Math.Min(MR, mc - ir);
            float* dst = ap + (nint)ir * kc;
            for (int i = 0; i < mr; i++)
            {
                float* src = a + (nint)(ic + ir + i) * lda + pc;
                float* d = dst + i;
                for (int p = 0; p < kc; p++) d[(nint)p * MR] = src[p];
            }
            for (int i = mr; i < MR; i++)
            {
                float* d = dst + i;
                for (int p = 0; p < kc; p++) d[(nint)p * MR] = 0f;
            }
        }
    }

    /// <summary>B given as W[n,k] (row j of W is column j of B): a transpose into the panel layout.</summary>
    private static unsafe void PackBTrans(GemmIsa isa, float* w, int ldw, int jc, int nc, int pc, int kc, int NR, float* bp)
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* dst = bp + (nint)jr * kc;
            float* src0 = w + (nint)(jc + jr) * ldw + pc;
            int j8 = 0, p8 = 0;
            if (isa != GemmIsa.Scalar)
            {
                // 8x8 register transposes for the bulk
                p8 = kc & ~7;
                for (; j8 + 8 <= nr; j8 += 8)
                {
                    float* s = src0 + (nint)j8 * ldw;
                    for (int p = 0; p < p8; p += 8)
                    {
                        Transpose8x8Store(
                            Vector256.Load(s + p), Vector256.Load(s + ldw + p), Vector256.Load(s + 2 * (nint)ldw + p), Vector256.Load(s + 3 * (nint)ldw + p),
                            Vector256.Load(s + 4 * (nint)ldw + p), Vector256.Load(s + 5 * (nint)ldw + p), Vector256.Load(s + 6 * (nint)ldw + p), Vector256.Load(s + 7 * (nint)ldw + p),
                            dst + (nint)p * NR + j8, NR);
                    }
                }
            }
            // scalar remainders: rows [j8, nr) for all p, and the p tail [p8, kc) for rows [0, j8)
            for (int j = 0; j < nr; j++)
            {
                float* s = src0 + (nint)j * ldw;
                float* d = dst + j;
                for (int p = j < j8 ? p8 : 0; p < kc; p++) d[(nint)p * NR] = s[p];
            }
            ZeroCols(dst, nr, NR, kc);
        }
    }

    /// <summary>B given as fp16 or bf16 W[n,k] (<typeparamref name="TW"/> widens it); widened to fp32 while transposing (no fp32 copy of W is ever made).</summary>
    private static unsafe void PackBTransWide<T, TW>(GemmIsa isa, T* w, int ldw, int jc, int nc, int pc, int kc, int NR, float* bp) where T : unmanaged where TW : IWidening<T>
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* dst = bp + (nint)jr * kc;
            T* src0 = w + (nint)(jc + jr) * ldw + pc;
            int j8 = 0, p8 = 0;
            if (isa != GemmIsa.Scalar)
            {
                p8 = kc & ~7;
                for (; j8 + 8 <= nr; j8 += 8)
                {
                    T* s = src0 + (nint)j8 * ldw;
                    for (int p = 0; p < p8; p += 8)
                    {
                        Transpose8x8Store(
                            TW.Widen8(s + p), TW.Widen8(s + ldw + p), TW.Widen8(s + 2 * (nint)ldw + p), TW.Widen8(s + 3 * (nint)ldw + p),
                            TW.Widen8(s + 4 * (nint)ldw + p), TW.Widen8(s + 5 * (nint)ldw + p), TW.Widen8(s + 6 * (nint)ldw + p), TW.Widen8(s + 7 * (nint)ldw + p),
                            dst + (nint)p * NR + j8, NR);
                    }
                }
            }
            for (int j = 0; j < nr; j++)
            {
                T* s = src0 + (nint)j * ldw;
                float* d = dst + j;
                for (int p = j < j8 ? p8 : 0; p < kc; p++) d[(nint)p * NR] = TW.Widen(s[p]);
            }
            ZeroCols(dst, nr, NR, kc);
        }
    }

    /// <summary>Stores the transpose of the 8x8 block whose rows are r0..r7: row i of the output (column i of the input) goes to dst + i*ldd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Transpose8x8Store(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> r4, Vector256<float> r5, Vector256<float> r6, Vector256<float> r7, float* dst, int ldd)
    {
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        nint ld = ldd;
        Avx.Permute2x128(u0, u4, 0x20).Store(dst);
        Avx.Permute2x128(u1, u5, 0x20).Store(dst + ld);
        Avx.Permute2x128(u2, u6, 0x20).Store(dst + 2 * ld);
        Avx.Permute2x128(u3, u7, 0x20).Store(dst + 3 * ld);
        Avx.Permute2x128(u0, u4, 0x31).Store(dst + 4 * ld);
        Avx.Permute2x128(u1, u5, 0x31).Store(dst + 5 * ld);
        Avx.Permute2x128(u2, u6, 0x31).Store(dst + 6 * ld);
        Avx.Permute2x128(u3, u7, 0x31).Store(dst + 7 * ld);
    }

    /// <summary>B given row-major as B[k,n].</summary>
    private static unsafe void PackBNormal(float* b, int ldb, int jc, int nc, int pc, int kc, int NR, float* bp)
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* dst = bp + (nint)jr * kc;
            for (int p = 0; p < kc; p++)
            {
                float* src = b + (nint)(pc + p) * ldb + jc + jr;
                float* d = dst + (nint)p * NR;
                Unsafe.CopyBlockUnaligned(d, src, (uint)(nr * sizeof(float)));
                for (int j = nr; j < NR; j++) d[j] = 0f;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void ZeroCols(float* dst, int nr, int NR, int kc)
    {
        if (nr == NR) return;
        for (int p = 0; p < kc; p++)
        {
            float* d = dst + (nint)p * NR;
            for (int j = nr; j < NR; j++) d[j] = 0f;
        }
    }
}
