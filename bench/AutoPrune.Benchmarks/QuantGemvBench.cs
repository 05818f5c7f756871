using System.Diagnostics;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Quant;

namespace AutoPrune.Benchmarks;

/// <summary>
/// <c>quant-gemv [--shapes 4096x4096,11008x4096] [--formats F16,Q8_0,...] [--threads 1,2] [--isa avx512|avx2|scalar (default: each format's)] [--gemm M]</c>:
/// decode-step GEMV <c>y[out] = W[out, in]·x</c> per weight format on 7B-sized matrices, median of repeats, as GB/s of
/// weight bytes streamed and GFLOP/s (2·out·in per call). "F16 (Gemm)" is the repository's fp16 GEMV (Gemm.Gemv.cs) on the
/// same matrix, the baseline the quantized kernels replace; <c>--gemm M</c> adds the small-batch GEMM (M rows of X).
/// </summary>
internal static class QuantGemvBench
{
    public static int Run(string[] args)
    {
        var shapes = new List<(int Out, int In)> { (4096, 4096), (11008, 4096) };
        var formats = new List<QuantFormat> { QuantFormat.F16, QuantFormat.BF16, QuantFormat.Q8_0, QuantFormat.Q6_K, QuantFormat.Q5_0, QuantFormat.Q4_K, QuantFormat.Q4_0 };
        var threads = new List<int> { 1, 2 };
        GemmIsa? isa = null; // null: each format's default (QuantizedMatrix.PreferredGemvIsa)
        int gemm = 0;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--shapes": shapes = args[++i].Split(',').Select(s => s.Split('x')).Select(p => (int.Parse(p[0]), int.Parse(p[1]))).ToList(); break;
                case "--formats": formats = args[++i].Split(',').Select(s => QuantFormats.TryParse(s, out var f) ? f : throw new ArgumentException($"unknown format {s}")).ToList(); break;
                case "--threads": threads = args[++i].Split(',').Select(int.Parse).ToList(); break;
                case "--isa": isa = args[++i].ToLowerInvariant() switch { "avx512" => GemmIsa.Avx512, "avx2" => GemmIsa.Avx2, "scalar" => GemmIsa.Scalar, var s => throw new ArgumentException($"unknown isa {s}") }; break;
                case "--gemm": gemm = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        Console.WriteLine($"CPU: {Cpu()}; {Environment.ProcessorCount} cores; ISA: {(isa is { } i0 ? QuantizedMatrix.Effective(i0).ToString() : "per format (PreferredGemvIsa)")}; detected {Gemm.DetectedIsa}");
        Console.WriteLine($"{"shape (out x in)",-17} {"format",-16} {"thr",3} {"MB",8} {"median ms",10} {"best ms",8} {"GB/s",7} {"GFLOP/s",8} {"vs F16",7}");
        Console.WriteLine("GB/s and GFLOP/s from the median; 'vs F16' = the F16 (Gemm) median / this median, same thread count.");
        foreach (var (rows, cols) in shapes)
        {
            var r = new Random(1);
            var w = new float[(long)rows * cols];
            for (long i = 0; i < w.LongLength; i++) w[i] = (float)((r.NextDouble() - 0.5) * 0.1);
            var x = Enumerable.Range(0, Math.Max(1, gemm) * cols).Select(_ => (float)(r.NextDouble() - 0.5)).ToArray();
            var y = new float[Math.Max(1, gemm) * rows];
            var baseline = new Dictionary<int, double>();
            {
                var wh = new Half[w.Length];
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(w, wh);
                foreach (int t in threads)
                {
                    double ms = Time(() => Gemm.MatMulTransBCore(x.AsSpan(0, cols), cols, 1, cols, wh, cols, rows, y.AsSpan(0, rows), rows, default, false, isa ?? Gemm.DetectedIsa, t));
                    baseline[t] = ms;
                    Print(rows, cols, "F16 (Gemm)", t, wh.LongLength * 2, ms, 1);
                }
            }
            foreach (var f in formats)
            {
                var m = QuantizedMatrix.Quantize(f, w, rows, cols);
                foreach (int t in threads)
                {
                    var fisa = isa ?? QuantizedMatrix.PreferredGemvIsa(f);
                    double ms = Time(() => m.GemvCore(x.AsSpan(0, cols), y.AsSpan(0, rows), default, false, fisa, t));
                    Print(rows, cols, f.ToString(), t, m.Bytes, ms, baseline[t] / ms);
                    if (gemm > 1)
                    {
                        double gms = Time(() => m.GemmCore(x, cols, gemm, y, rows, default, false, isa ?? Gemm.DetectedIsa, t));
                        Print(rows, cols, $"{f} GEMM m={gemm}", t, m.Bytes, gms, double.NaN, gemm);
                    }
                }
            }
        }
        return 0;
    }

    private static void Print(int rows, int cols, string format, int threads, long bytes, double ms, double speedup, int m = 1)
    {
        double gbs = bytes / (ms / 1e3) / 1e9;
        double gflops = 2.0 * rows * cols * m / (ms / 1e3) / 1e9;
        Console.WriteLine($"{rows + " x " + cols,-17} {format,-16} {threads,3} {bytes / 1e6,8:F1} {ms,10:F3} {s_best,8:F3} {gbs,7:F1} {gflops,8:F1} {(double.IsNaN(speedup) ? "" : speedup.ToString("F2") + "x"),7}");
    }

    /// <summary>
    /// Median ms per call: warm-up (≥ 3 calls, ≥ 0.3 s), then 11 samples of ≥ 50 ms each (5 when a call is slow). The best
    /// sample goes to <see cref="s_best"/> (on a machine shared with other work the median carries their load).
    /// </summary>
    private static double s_best;

    private static double Time(Action op)
    {
        var sw = Stopwatch.StartNew();
        int warm = 0;
        while (warm < 3 || sw.Elapsed.TotalSeconds < 0.3) { op(); warm++; }
        double perCall = sw.Elapsed.TotalSeconds / warm;
        int inner = Math.Max(1, (int)(0.05 / perCall));
        int repeats = perCall > 0.2 ? 5 : 11;
        var samples = new double[repeats];
        for (int rep = 0; rep < repeats; rep++)
        {
            sw.Restart();
            for (int i = 0; i < inner; i++) op();
            samples[rep] = sw.Elapsed.TotalMilliseconds / inner;
        }
        Array.Sort(samples);
        s_best = samples[0];
        return samples[repeats / 2];
    }

    private static string Cpu()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name")) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return "unknown";
    }
}
