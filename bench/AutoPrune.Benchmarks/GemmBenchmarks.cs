using AutoPrune.Compute.Cpu;
using BenchmarkDotNet.Attributes;

namespace AutoPrune.Benchmarks;

/// <summary>BenchmarkDotNet benchmarks for the CPU GEMM on the shapes the runtime uses.</summary>
[MemoryDiagnoser]
public class GemmBenchmarks
{
    public record Shape(string Name, int M, int K, int N)
    {
        public override string ToString() => $"{Name} {M}x{K}x{N}";
    }

    public static IEnumerable<Shape> Shapes() => GemmShapes.All;

    [ParamsSource(nameof(Shapes))]
    public Shape S { get; set; } = GemmShapes.All[0];

    private float[] _a = [], _w = [], _c = [], _bias = [];
    private Half[] _wh = [];

    [GlobalSetup]
    public void Setup()
    {
        var r = new Random(42);
        _a = GemmShapes.Rand(r, S.M * S.K);
        _w = GemmShapes.Rand(r, S.N * S.K);
        _wh = _w.Select(x => (Half)x).ToArray();
        _bias = GemmShapes.Rand(r, S.N);
        _c = new float[S.M * S.N];
    }

    [Benchmark(Baseline = true)]
    public void MatMulTransB() => Gemm.MatMulTransB(_a, S.M, S.K, _w, S.N, _c, _bias);

    [Benchmark]
    public void MatMulTransB_Half() => Gemm.MatMulTransB(_a, S.M, S.K, _wh, S.N, _c, _bias);

    [Benchmark]
    public void MatMul() => Gemm.MatMul(_a, S.M, S.K, _w, S.N, _c); // W reinterpreted as B[k, n]
}
