using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Compute.Cpu;

// Generated register-tiled micro-kernels: C[MR,NR] (= or +=) Apanel[kc,MR]^T * Bpanel[kc,NR] (+ bias).
// Operation order per element: acc = fma chain over p; acc += bias; acc += C (if add); store.
internal static partial class Gemm
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Kernel(GemmIsa isa, int kc, float* a, float* b, float* c, int ldc, float* bias, bool add)
    {
        switch (isa)
        {
            case GemmIsa.Avx512: Kernel6x32Avx512(kc, a, b, c, ldc, bias, add); break;
            case GemmIsa.Avx2: Kernel6x16Avx2(kc, a, b, c, ldc, bias, add); break;
            default: Kernel4x8Scalar(kc, a, b, c, ldc, bias, add); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel6x32Avx512(int kc, float* a, float* b, float* c, int ldc, float* bias, bool add)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector512.Load(b + 0);
            var b1 = Vector512.Load(b + 16);
            var a0 = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(a0, b0, c00);
            c01 = Avx512F.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector512.Create(a[1]);
            c10 = Avx512F.FusedMultiplyAdd(a1, b0, c10);
            c11 = Avx512F.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector512.Create(a[2]);
            c20 = Avx512F.FusedMultiplyAdd(a2, b0, c20);
            c21 = Avx512F.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector512.Create(a[3]);
            c30 = Avx512F.FusedMultiplyAdd(a3, b0, c30);
            c31 = Avx512F.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector512.Create(a[4]);
            c40 = Avx512F.FusedMultiplyAdd(a4, b0, c40);
            c41 = Avx512F.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector512.Create(a[5]);
            c50 = Avx512F.FusedMultiplyAdd(a5, b0, c50);
            c51 = Avx512F.FusedMultiplyAdd(a5, b1, c51);
            a += 6; b += 32;
        }
        if (bias != null)
        {
            var bb0 = Vector512.Load(bias + 0);
            var bb1 = Vector512.Load(bias + 16);
            c00 += bb0;
            c01 += bb1;
            c10 += bb0;
            c11 += bb1;
            c20 += bb0;
            c21 += bb1;
            c30 += bb0;
            c31 += bb1;
            c40 += bb0;
            c41 += bb1;
            c50 += bb0;
            c51 += bb1;
        }
        nint ld = ldc;
        if (add)
        {
            c00 += Vector512.Load(c + 0 * ld + 0);
            c01 += Vector512.Load(c + 0 * ld + 16);
            c10 += Vector512.Load(c + 1 * ld + 0);
            c11 += Vector512.Load(c + 1 * ld + 16);
            c20 += Vector512.Load(c + 2 * ld + 0);
            c21 += Vector512.Load(c + 2 * ld + 16);
            c30 += Vector512.Load(c + 3 * ld + 0);
            c31 += Vector512.Load(c + 3 * ld + 16);
            c40 += Vector512.Load(c + 4 * ld + 0);
            c41 += Vector512.Load(c + 4 * ld + 16);
            c50 += Vector512.Load(c + 5 * ld + 0);
            c51 += Vector512.Load(c + 5 * ld + 16);
        }
        c00.Store(c + 0 * ld + 0);
        c01.Store(c + 0 * ld + 16);
        c10.Store(c + 1 * ld + 0);
        c11.Store(c + 1 * ld + 16);
        c20.Store(c + 2 * ld + 0);
        c21.Store(c + 2 * ld + 16);
        c30.Store(c + 3 * ld + 0);
        c31.Store(c + 3 * ld + 16);
        c40.Store(c + 4 * ld + 0);
        c41.Store(c + 4 * ld + 16);
        c50.Store(c + 5 * ld + 0);
        c51.Store(c + 5 * ld + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel6x16Avx2(int kc, float* a, float* b, float* c, int ldc, float* bias, bool add)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector256.Load(b + 0);
            var b1 = Vector256.Load(b + 8);
            var a0 = Vector256.Create(a[0]);
            c00 = Fma.MultiplyAdd(a0, b0, c00);
            c01 = Fma.MultiplyAdd(a0, b1, c01);
            var a1 = Vector256.Create(a[1]);
            c10 = Fma.MultiplyAdd(a1, b0, c10);
            c11 = Fma.MultiplyAdd(a1, b1, c11);
            var a2 = Vector256.Create(a[2]);
            c20 = Fma.MultiplyAdd(a2, b0, c20);
            c21 = Fma.MultiplyAdd(a2, b1, c21);
            var a3 = Vector256.Create(a[3]);
            c30 = Fma.MultiplyAdd(a3, b0, c30);
            c31 = Fma.MultiplyAdd(a3, b1, c31);
            var a4 = Vector256.Create(a[4]);
            c40 = Fma.MultiplyAdd(a4, b0, c40);
            c41 = Fma.MultiplyAdd(a4, b1, c41);
            var a5 = Vector256.Create(a[5]);
            c50 = Fma.MultiplyAdd(a5, b0, c50);
            c51 = Fma.MultiplyAdd(a5, b1, c51);
            a += 6; b += 16;
        }
        if (bias != null)
        {
            var bb0 = Vector256.Load(bias + 0);
            var bb1 = Vector256.Load(bias + 8);
            c00 += bb0;
            c01 += bb1;
            c10 += bb0;
            c11 += bb1;
            c20 += bb0;
            c21 += bb1;
            c30 += bb0;
            c31 += bb1;
            c40 += bb0;
            c41 += bb1;
            c50 += bb0;
            c51 += bb1;
        }
        nint ld = ldc;
        if (add)
        {
            c00 += Vector256.Load(c + 0 * ld + 0);
            c01 += Vector256.Load(c + 0 * ld + 8);
            c10 += Vector256.Load(c + 1 * ld + 0);
            c11 += Vector256.Load(c + 1 * ld + 8);
            c20 += Vector256.Load(c + 2 * ld + 0);
            c21 += Vector256.Load(c + 2 * ld + 8);
            c30 += Vector256.Load(c + 3 * ld + 0);
            c31 += Vector256.Load(c + 3 * ld + 8);
            c40 += Vector256.Load(c + 4 * ld + 0);
            c41 += Vector256.Load(c + 4 * ld + 8);
            c50 += Vector256.Load(c + 5 * ld + 0);
            c51 += Vector256.Load(c + 5 * ld + 8);
        }
        c00.Store(c + 0 * ld + 0);
        c01.Store(c + 0 * ld + 8);
        c10.Store(c + 1 * ld + 0);
        c11.Store(c + 1 * ld + 8);
        c20.Store(c + 2 * ld + 0);
        c21.Store(c + 2 * ld + 8);
        c30.Store(c + 3 * ld + 0);
        c31.Store(c + 3 * ld + 8);
        c40.Store(c + 4 * ld + 0);
        c41.Store(c + 4 * ld + 8);
        c50.Store(c + 5 * ld + 0);
        c51.Store(c + 5 * ld + 8);
    }

    private static unsafe void Kernel4x8Scalar(int kc, float* a, float* b, float* c, int ldc, float* bias, bool add)
    {
        const int MR = 4, NR = 8;
        float* acc = stackalloc float[MR * NR];
        for (int t = 0; t < MR * NR; t++) acc[t] = 0f;
        for (int p = 0; p < kc; p++)
        {
            for (int i = 0; i < MR; i++)
            {
                float ai = a[i];
                float* row = acc + i * NR;
                for (int j = 0; j < NR; j++) row[j] = MathF.FusedMultiplyAdd(ai, b[j], row[j]);
            }
            a += MR; b += NR;
        }
        for (int i = 0; i < MR; i++)
        {
            float* cr = c + (nint)i * ldc;
            for (int j = 0; j < NR; j++)
            {
                float v = acc[i * NR + j];
                if (bias != null) v += bias[j];
                if (add) v += cr[j];
                cr[j] = v;
            }
        }
    }
}
