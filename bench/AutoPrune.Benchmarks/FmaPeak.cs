using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Benchmarks;

/// <summary>
/// Empirical fp32 FMA ceiling: every thread runs 16 independent FMA dependency chains (enough to cover
/// latency x throughput on current x86 cores) for a fixed time. This is what the cores actually
/// deliver at the clock they really run at (turbo included), which /proc/cpuinfo does not show.
/// </summary>
internal static class FmaPeak
{
    public static double MeasureGFlops(int threads, double seconds = 0.4)
    {
        var results = new double[threads];
        var ts = new Thread[threads];
        using var start = new Barrier(threads);
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            ts[t] = new Thread(() => { start.SignalAndWait(); results[id] = Spin(seconds); }) { IsBackground = true };
            ts[t].Start();
        }
        foreach (var th in ts) th.Join();
        return results.Sum();
    }

    private static double Spin(double seconds)
    {
        Spin512or256(1000); // JIT warm-up
        var sw = Stopwatch.StartNew();
        long iters = 0;
        const int Chunk = 1 << 16;
        float sink = 0;
        while (sw.Elapsed.TotalSeconds < seconds) { sink += Spin512or256(Chunk); iters += Chunk; }
        double secs = sw.Elapsed.TotalSeconds;
        GC.KeepAlive(sink);
        int lanes = Avx512F.IsSupported && Vector512.IsHardwareAccelerated ? 16 : Fma.IsSupported ? 8 : 0;
        return iters * 16.0 * lanes * 2 / secs / 1e9;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Spin512or256(int n)
    {
        if (Avx512F.IsSupported && Vector512.IsHardwareAccelerated)
        {
            var x = Vector512.Create(0.999f); var y = Vector512.Create(1e-7f);
            Vector512<float> c0 = x, c1 = y, c2 = x, c3 = y, c4 = x, c5 = y, c6 = x, c7 = y,
                c8 = x, c9 = y, c10 = x, c11 = y, c12 = x, c13 = y, c14 = x, c15 = y;
            for (int i = 0; i < n; i++)
            {
                c0 = Avx512F.FusedMultiplyAdd(c0, x, y); c1 = Avx512F.FusedMultiplyAdd(c1, x, y);
                c2 = Avx512F.FusedMultiplyAdd(c2, x, y); c3 = Avx512F.FusedMultiplyAdd(c3, x, y);
                c4 = Avx512F.FusedMultiplyAdd(c4, x, y); c5 = Avx512F.FusedMultiplyAdd(c5, x, y);
                c6 = Avx512F.FusedMultiplyAdd(c6, x, y); c7 = Avx512F.FusedMultiplyAdd(c7, x, y);
                c8 = Avx512F.FusedMultiplyAdd(c8, x, y); c9 = Avx512F.FusedMultiplyAdd(c9, x, y);
                c10 = Avx512F.FusedMultiplyAdd(c10, x, y); c11 = Avx512F.FusedMultiplyAdd(c11, x, y);
                c12 = Avx512F.FusedMultiplyAdd(c12, x, y); c13 = Avx512F.FusedMultiplyAdd(c13, x, y);
                c14 = Avx512F.FusedMultiplyAdd(c14, x, y); c15 = Avx512F.FusedMultiplyAdd(c15, x, y);
            }
            return (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 + c13 + c14 + c15).ToScalar();
        }
        if (Fma.IsSupported)
        {
            var x = Vector256.Create(0.999f); var y = Vector256.Create(1e-7f);
            Vector256<float> c0 = x, c1 = y, c2 = x, c3 = y, c4 = x, c5 = y, c6 = x, c7 = y,
                c8 = x, c9 = y, c10 = x, c11 = y, c12 = x, c13 = y, c14 = x, c15 = y;
            for (int i = 0; i < n; i++)
            {
                c0 = Fma.MultiplyAdd(c0, x, y); c1 = Fma.MultiplyAdd(c1, x, y);
                c2 = Fma.MultiplyAdd(c2, x, y); c3 = Fma.MultiplyAdd(c3, x, y);
                c4 = Fma.MultiplyAdd(c4, x, y); c5 = Fma.MultiplyAdd(c5, x, y);
                c6 = Fma.MultiplyAdd(c6, x, y); c7 = Fma.MultiplyAdd(c7, x, y);
                c8 = Fma.MultiplyAdd(c8, x, y); c9 = Fma.MultiplyAdd(c9, x, y);
                c10 = Fma.MultiplyAdd(c10, x, y); c11 = Fma.MultiplyAdd(c11, x, y);
                c12 = Fma.MultiplyAdd(c12, x, y); c13 = Fma.MultiplyAdd(c13, x, y);
                c14 = Fma.MultiplyAdd(c14, x, y); c15 = Fma.MultiplyAdd(c15, x, y);
            }
            return (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 + c13 + c14 + c15).ToScalar();
        }
        return 0;
    }
}
