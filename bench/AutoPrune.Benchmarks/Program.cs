using System.Diagnostics;
using System.Runtime.Intrinsics.X86;
using AutoPrune.Compute.Cpu;
using BenchmarkDotNet.Running;

namespace AutoPrune.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "gemm-quick")
            return GemmQuick.Run(args[1..]);
        if (args.Length > 0 && args[0] == "qwen-quick")
            return QwenQuick.Run(args[1..]);
        if (args.Length > 0 && args[0] == "quant-gemv")
            return QuantGemvBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "gguf-export")
            return GgufCheck.Run(args[1..]);
        if (args.Length > 0 && args[0] == "qwen-seam")
            return QwenSeam.Run(args[1..]);
        if (args.Length > 0 && args[0] == "structured-quick")
            return StructuredQuick.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}

/// <summary>
/// <c>gemm-quick [--threads N] [--shapes a,b] [--ghz X] [--flops-per-cycle F] [--no-half] [--matmul]</c>:
/// warm-up + median of repeats per shape, GFLOP/s and % of the theoretical fp32 peak.
/// </summary>
internal static class GemmQuick
{
    private static double s_measured = double.NaN;

    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount;
        string[]? only = null;
        double? ghzOverride = null, fpcOverride = null;
        bool half = true, matmul = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--shapes": only = args[++i].Split(','); break;
                case "--ghz": ghzOverride = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--flops-per-cycle": fpcOverride = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--no-half": half = false; break;
                case "--matmul": matmul = true; break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        Gemm.MaxThreads = threads;

        var (ghz, ghzSource) = ghzOverride is { } g ? (g, "--ghz") : ReadClockGHz();
        var (fpc, fpcWhy) = fpcOverride is { } f ? (f, "--flops-per-cycle") : FlopsPerCycle();
        double peak = threads * ghz * fpc;

        Console.WriteLine($"CPU: {CpuModel()}; cores used: {threads} of {Environment.ProcessorCount}; GEMM ISA: {Gemm.DetectedIsa}");
        Console.WriteLine($"Clock: {ghz:F3} GHz ({ghzSource}); FLOPs/cycle/core: {fpc} ({fpcWhy})");
        Console.WriteLine($"Theoretical fp32 peak: {threads} x {ghz:F3} GHz x {fpc} = {peak:F1} GFLOP/s");
        double measured = FmaPeak.MeasureGFlops(threads);
        Console.WriteLine($"Measured FMA ceiling ({threads} thread(s), 16 independent FMA chains each): {measured:F1} GFLOP/s" +
                          $" => effective clock ~{measured / threads / fpc:F2} GHz (turbo, if any, included)");
        Console.WriteLine("'% peak' = vs theoretical peak at the stated clock; '% meas' = vs the measured FMA ceiling.");
        Console.WriteLine();
        Console.WriteLine($"{"shape",-14} {"m",5} {"k",6} {"n",6} {"variant",-8} {"median ms",10} {"GFLOP/s",9} {"% peak",7} {"% meas",7}");
        s_measured = measured;

        foreach (var s in GemmShapes.All)
        {
            if (only != null && !only.Contains(s.Name)) continue;
            var r = new Random(1);
            var a = GemmShapes.Rand(r, s.M * s.K);
            var w = GemmShapes.Rand(r, s.N * s.K);
            var bias = GemmShapes.Rand(r, s.N);
            var c = new float[s.M * s.N];
            double flops = 2.0 * s.M * s.N * s.K;

            Report(s, "fp32", flops, peak, () => Gemm.MatMulTransB(a, s.M, s.K, w, s.N, c, bias));
            if (half)
            {
                var wh = w.Select(x => (Half)x).ToArray();
                Report(s, "fp16-W", flops, peak, () => Gemm.MatMulTransB(a, s.M, s.K, wh, s.N, c, bias));
            }
            if (matmul)
                Report(s, "A*B", flops, peak, () => Gemm.MatMul(a, s.M, s.K, w, s.N, c));
        }
        return 0;
    }

    private static void Report(GemmBenchmarks.Shape s, string variant, double flops, double peak, Action op)
    {
        // warm-up (tiering/JIT, page faults, pool buffers): at least 3 calls and ~0.3 s
        var sw = Stopwatch.StartNew();
        int warm = 0;
        while (warm < 3 || sw.Elapsed.TotalSeconds < 0.3) { op(); warm++; }
        double perCall = sw.Elapsed.TotalSeconds / warm;
        int inner = Math.Max(1, (int)(0.05 / perCall)); // each sample >= ~50 ms
        int repeats = perCall > 0.2 ? 5 : 11;
        var samples = new double[repeats];
        for (int rep = 0; rep < repeats; rep++)
        {
            sw.Restart();
            for (int i = 0; i < inner; i++) op();
            samples[rep] = sw.Elapsed.TotalSeconds / inner;
        }
        Array.Sort(samples);
        double med = samples[repeats / 2];
        double gflops = flops / med / 1e9;
        Console.WriteLine($"{s.Name,-14} {s.M,5} {s.K,6} {s.N,6} {variant,-8} {med * 1e3,10:F3} {gflops,9:F1} {100 * gflops / peak,6:F1}% {100 * gflops / s_measured,6:F1}%");
    }

    private static string CpuModel()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name")) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch { }
        return "unknown";
    }

    /// <summary>Max frequency from cpufreq if exposed, else the highest "cpu MHz" in /proc/cpuinfo (the nominal clock under most hypervisors).</summary>
    private static (double ghz, string source) ReadClockGHz()
    {
        try
        {
            const string maxFreq = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq";
            if (File.Exists(maxFreq)) return (double.Parse(File.ReadAllText(maxFreq).Trim()) / 1e6, maxFreq);
            double mhz = 0;
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("cpu MHz"))
                    mhz = Math.Max(mhz, double.Parse(line[(line.IndexOf(':') + 1)..].Trim(), System.Globalization.CultureInfo.InvariantCulture));
            if (mhz > 0) return (mhz / 1000, "/proc/cpuinfo 'cpu MHz' (nominal; turbo, if any, not visible)");
        }
        catch { }
        return (3.0, "unknown, assumed 3.0 GHz");
    }

    /// <summary>
    /// fp32 FLOPs per cycle per core: 2 FMA pipes x lanes x 2. AMD Zen 4 executes AVX-512 on two 256-bit
    /// FMA pipes (a 512-bit FMA issues at 1/cycle), so its peak is 32 like AVX2, not 64.
    /// </summary>
    private static (double fpc, string why) FlopsPerCycle()
    {
        bool amd = CpuModel().Contains("AMD", StringComparison.OrdinalIgnoreCase) || X86Base.IsSupported && IsAmdVendor();
        if (Avx512F.IsSupported && !amd) return (64, "AVX-512: 2 x 512-bit FMA x 16 lanes x 2 (Intel server cores; 1-FMA-port SKUs are 32)");
        if (Avx512F.IsSupported && amd) return (32, "AMD with AVX-512 (Zen 4): 512-bit ops double-pumped on 2 x 256-bit FMA pipes = 2 x 8 lanes x 2");
        if (Fma.IsSupported) return (32, "AVX2: 2 x 256-bit FMA x 8 lanes x 2");
        return (8, "SSE: 2 x 128-bit mul/add, no FMA");
    }

    private static bool IsAmdVendor()
    {
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        return ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163; // "AuthenticAMD"
    }
}
