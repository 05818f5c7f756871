using AutoPrune.Compute.Cpu;
using AutoPrune.Pruning;
using BenchmarkDotNet.Attributes;

namespace AutoPrune.Benchmarks;

/// <summary>
/// Multi-head prefill attention at the fixture's shape (4 heads x 48, causal) and at one LLaVA-7B-like head group,
/// for the sequence lengths an unpruned and a pruned prefill see (589 tokens unpruned; ~140 after pruning to 128).
/// Also the scoring path: attention probabilities of selected rows only (last token / text rows).
/// </summary>
[MemoryDiagnoser]
public class AttentionBenchmarks
{
    [Params(141, 589)] public int N { get; set; }
    [Params(4)] public int Heads { get; set; }
    [Params(48)] public int HeadDim { get; set; }

    private float[] _q = [], _k = [], _v = [], _o = [];
    private int[] _lastRow = [], _textRows = [];

    [GlobalSetup]
    public void Setup()
    {
        var r = new Random(7);
        int d = Heads * HeadDim;
        _q = GemmShapes.Rand(r, N * d); _k = GemmShapes.Rand(r, N * d); _v = GemmShapes.Rand(r, N * d); _o = new float[N * d];
        _lastRow = [N - 1];
        _textRows = Enumerable.Range(N - 12, 12).ToArray();
    }

    [Benchmark(Description = "MultiHead causal prefill")]
    public void MultiHead() => Attention.MultiHead(_q, _k, _v, _o, N, N, Heads, Heads, HeadDim, causal: true);

    [Benchmark(Description = "Rows: last token (FastV/AdaptPrune scoring)")]
    public float[] LastRow() => Attention.Rows(_q, _k, N, N, Heads, Heads, HeadDim, _lastRow, causal: true);

    [Benchmark(Description = "Rows: 12 text rows (AutoPrune/SparseVLM scoring)")]
    public float[] TextRows() => Attention.Rows(_q, _k, N, N, Heads, Heads, HeadDim, _textRows, causal: true);
}

/// <summary>Numerically stable in-place softmax over one attention row.</summary>
public class SoftmaxBenchmarks
{
    [Params(141, 589, 4096)] public int Length { get; set; }
    private float[] _src = [], _row = [];

    [GlobalSetup]
    public void Setup() { _src = GemmShapes.Rand(new Random(3), Length); _row = new float[Length]; }

    [Benchmark]
    public void Softmax() { _src.CopyTo(_row, 0); CpuOps.Softmax(_row); }
}

/// <summary>
/// The pruning policies' own cost (what they add on top of the decoder) at the fixture's shape:
/// 576 visual tokens on a 24x24 grid, 8 layers, 4 heads, hidden 192.
/// </summary>
[MemoryDiagnoser]
public class PruningPolicyBenchmarks
{
    private static readonly ModelShape Shape = new(Layers: 8, Heads: 4, HiddenSize: 192, IntermediateSize: 512, VisualTokens: 576, GridSize: 24);
    private const int V = 576, G = 24, Dim = 192, T = 12, Keys = 589;
    private float[] _attn = [], _features = [], _hidden = [], _scores = [], _textAttn = [], _cls = [], _vkeys = [], _vhidden = [];
    private int[] _dropped = [], _visualCols = [];
    private readonly PruningOptions _opts = new();

    [GlobalSetup]
    public void Setup()
    {
        var r = new Random(11);
        _attn = Enumerable.Range(0, V).Select(_ => (float)r.NextDouble()).ToArray();
        _features = GemmShapes.Rand(r, V * Dim);
        for (int i = 0; i < V; i++)
        {
            var f = _features.AsSpan(i * Dim, Dim);
            float n = System.Numerics.Tensors.TensorPrimitives.Norm(f);
            System.Numerics.Tensors.TensorPrimitives.Divide(f, n, f);
        }
        _hidden = GemmShapes.Rand(r, 320 * Dim);
        _scores = Enumerable.Range(0, 320).Select(_ => (float)r.NextDouble()).ToArray();
        _dropped = Enumerable.Range(0, 320).Where(i => i % 3 != 0).ToArray(); // ~213 dropped of 320
        _textAttn = new float[Shape.Heads * T * Keys];
        for (int i = 0; i < _textAttn.Length; i += Keys)
        {
            var row = _textAttn.AsSpan(i, Keys);
            for (int j = 0; j < Keys; j++) row[j] = (float)r.NextDouble();
            CpuOps.Softmax(row);
        }
        _visualCols = Enumerable.Range(1, V).ToArray();
        _cls = Enumerable.Range(0, 4 * V).Select(_ => (float)r.NextDouble()).ToArray();
        _vkeys = GemmShapes.Rand(r, V * 128);
        _vhidden = GemmShapes.Rand(r, V * Dim);
    }

    [Benchmark(Description = "FastV: top-k of 576 (k=64)")]
    public int[] FastVTopK() => TopK.SelectInOrder(_attn, 64);

    [Benchmark(Description = "AdaptPrune: adaptive NMS, k=64")]
    public int[] AdaptPruneNms() => AdaptiveNms.Select(_attn, _features, G, 64, _opts);

    [Benchmark(Description = "AutoPrune: MI over 12 text rows")]
    public float MutualInfo() => MutualInformation.Compute(_textAttn, Shape.Heads, T, Keys, _visualCols);

    [Benchmark(Description = "AutoPrune: schedule solve (bisection), B=128")]
    public object AutoPruneSolve() => AutoPruneSchedule.Solve(Shape, 128, BudgetAccounting.Processed, _opts, mi1HeadSum: 3.5);

    [Benchmark(Description = "PDrop: schedule solve, B=128")]
    public object PDropSolve() => ScheduleSolver.Solve(Shape, _opts with { Method = PruningMethod.PDrop, Budget = 128 });

    [Benchmark(Description = "Recycling: cluster 213 dropped tokens")]
    public object Recycle() => TokenRecycler.Merge(_hidden, Dim, _scores, _dropped, _opts);

    [Benchmark(Description = "VisionZip: select 108+20 of 576")]
    public object VisionZip() => VisionZipSelector.Select(_cls, 4, _vkeys, _vhidden, Dim, 108, 20);
}
