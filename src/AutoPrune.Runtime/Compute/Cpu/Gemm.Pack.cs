using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

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

    /// <summary>B given as W[n,k] (row j of W is column j of B).</summary>
    private static unsafe void PackBTrans(float* w, int ldw, int jc, int nc, int pc, int kc, int NR, float* bp)
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* dst = bp + (nint)jr * kc;
            for (int j = 0; j < nr; j++)
            {
                float* src = w + (nint)(jc + jr + j) * ldw + pc;
                float* d = dst + j;
                int p = 0;
                for (; p + 4 <= kc; p += 4)
                {
                    d[(nint)p * NR] = src[p];
                    d[(nint)(p + 1) * NR] = src[p + 1];
                    d[(nint)(p + 2) * NR] = src[p + 2];
                    d[(nint)(p + 3) * NR] = src[p + 3];
                }
                for (; p < kc; p++) d[(nint)p * NR] = src[p];
            }
            ZeroCols(dst, nr, NR, kc);
        }
    }

    /// <summary>B given as fp16 W[n,k]; each row slice is widened into <paramref name="tmp"/> (kc floats) before scattering.</summary>
    private static unsafe void PackBTransHalf(Half* w, int ldw, int jc, int nc, int pc, int kc, int NR, float* bp, float* tmp)
    {
        var t = new Span<float>(tmp, kc);
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* dst = bp + (nint)jr * kc;
            for (int j = 0; j < nr; j++)
            {
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + (nint)(jc + jr + j) * ldw + pc, kc), t);
                float* d = dst + j;
                for (int p = 0; p < kc; p++) d[(nint)p * NR] = tmp[p];
            }
            ZeroCols(dst, nr, NR, kc);
        }
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
