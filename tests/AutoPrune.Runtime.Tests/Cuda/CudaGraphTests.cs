using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Diagnostics;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;

using AutoPrune.Loading.Images;
using ILGPU;
using ILGPU.Runtime;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>What an emulated graph is: the work recorded at capture, with the arguments it had then, replayed in order.</summary>
public sealed class EmulatedGraphSemanticsTests(IlgpuCpuFixture fx) : IClassFixture<IlgpuCpuFixture>
{
    [Fact]
    public void AReplayUsesTheRecordedArgumentsAndTheDeviceMemoryOfNow()
    {
        var queue = new DeviceQueue(fx.Device.Accelerator);
        var ops = new CudaOps(fx.Device.Accelerator, queue: queue);
        using var token = fx.Device.Accelerator.Allocate1D(new[] { 1 });
        using var x = fx.Device.Accelerator.Allocate1D(new[] { 1f, 2f, 3f });
        using var y = fx.Device.Accelerator.Allocate1D(new[] { 10f, 20f, 30f });
        int id = 5;
        using var graph = CudaGraph.Capture(queue, () =>
        {
            ops.SetToken(token.View, id);
            ops.Add(x.View, y.View);
        });
        Assert.True(graph.Emulated);
        Assert.Equal(2, graph.RecordedWork);
        // Nothing ran while recording, and nothing was counted.
        Assert.Equal([1], token.GetAsArray1D());
        Assert.Equal([1f, 2f, 3f], x.GetAsArray1D());
        Assert.Equal(0, queue.Counters.Snapshot().Launches);

        id = 7; // a host value changed after the capture: the replay keeps the one recorded
        queue.Upload(y.View, [100f, 200f, 300f]); // device memory changed: the replay reads it
        graph.Launch();
        graph.Launch();
        queue.Synchronize();
        Assert.Equal([5], token.GetAsArray1D());
        Assert.Equal([201f, 402f, 603f], x.GetAsArray1D());
        Assert.Equal(2, queue.Counters.Snapshot().Launches); // one per replay
    }

    [Fact]
    public void NothingMayWaitOrCopyFromTheHostWhileRecording()
    {
        var queue = new DeviceQueue(fx.Device.Accelerator);
        using var x = fx.Device.Accelerator.Allocate1D<float>(4);
        var up = Assert.Throws<InvalidOperationException>(() => CudaGraph.Capture(queue, () => queue.Upload(x.View, [1f])));
        Assert.Contains("an upload from the host while a CUDA graph is being captured", up.Message);
        var down = Assert.Throws<InvalidOperationException>(() => CudaGraph.Capture(queue, () => queue.Download<float>(x.View, 1L)));
        Assert.Contains("a download to the host while a CUDA graph is being captured", down.Message);
        // A failed capture leaves the queue usable.
        queue.Upload(x.View, [4f]);
        Assert.Equal([4f], queue.Download<float>(x.View, 1L));
    }
}

/// <summary>The fixture model twice on the GPU code path (ILGPU's CPU accelerator): without and with CUDA graphs.</summary>
public sealed class GraphedModelPair : IDisposable
{
    internal LlavaModel Plain { get; }
    internal LlavaModel Graphed { get; }
    internal ImagePreprocessor Images { get; } = ImagePreprocessor.Load(TestData.ModelDir);

    public GraphedModelPair()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        Plain = LlavaModel.Create(store, config, CudaDevice.CreateForTests());
        Graphed = LlavaModel.Create(store, config, CudaDevice.CreateForTests(), cudaGraphs: true);
    }

    internal float[] Pixels(int row) => Images.PreprocessFile(TestData.Image(TestData.Dev.Single(r => r.Id == row).Image), false);

    public void Dispose()
    {
        Plain.Dispose();
        Graphed.Dispose();
    }
}

/// <summary>
/// <see cref="ModelOptions.CudaGraphs"/> on the GPU code path, where the graphs are emulated, against the same model
/// without graphs: the graphed decode steps and vision tower compute the same bits. A decode step that handed a kernel
/// a host value which changes between steps (a cache length, a position) would replay the value of the step it was
/// captured on, and these tests would fail.
/// </summary>
public sealed class CudaGraphModelTests(GraphedModelPair fx) : IClassFixture<GraphedModelPair>
{
    private static void SameBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}, element {i}: ungraphed {expected[i]:R}, graphed {actual[i]:R}");
    }

    /// <summary>
    /// Decode steps fed a fixed sequence of different tokens (not the model's choice, which on this small model often
    /// repeats one token): every step's logits equal the ungraphed model's bit for bit.
    /// </summary>
    [Fact]
    public void GraphedDecodeStepsGiveTheUngraphedLogitsBitForBit()
    {
        foreach (var reference in TestData.References.Take(2))
        {
            var pixels = fx.Pixels(reference.Id);
            int[] fed = [.. reference.InputIds.Where(t => t != fx.Plain.Config.ImageTokenIndex).Reverse().Distinct().Take(6)];
            Assert.Equal(6, fed.Length);
            var plain = Forced(fx.Plain, reference.InputIds, pixels, fed);
            var graphed = Forced(fx.Graphed, reference.InputIds, pixels, fed);
            for (int s = 0; s < plain.Count; s++) SameBits(plain[s], graphed[s], $"row {reference.Id}, step {s}");
        }
    }

    private static List<float[]> Forced(LlavaModel model, int[] ids, float[] pixels, int[] fed)
    {
        var state = TwoBackendFixture.Sequence(model, ids, pixels);
        using var gen = model.StartGeneration(fed.Length);
        var all = new List<float[]> { gen.Prefill(state, null, CancellationToken.None) };
        foreach (int t in fed) all.Add(gen.Step(t));
        return all;
    }

    /// <summary>Greedy decoding, as answers run it: the same tokens; from the second step on one launch (the graph) and one 4-byte wait per token.</summary>
    [Fact]
    public void GraphedGreedyTokensEqualTheUngraphedOnesWithOneLaunchPerToken()
    {
        var reference = TestData.References[1];
        var pixels = fx.Pixels(reference.Id);
        var (plainTokens, _) = Greedy(fx.Plain, reference.InputIds, pixels, 8);
        var (graphedTokens, counters) = Greedy(fx.Graphed, reference.InputIds, pixels, 8);
        Assert.Equal(plainTokens, graphedTokens);
        Assert.True(counters[0].Enqueued >= 8 * fx.Graphed.Decoder.Layers, "the first step runs ungraphed");
        // Everything else zero: no cuBLAS call, upload or allocation of its own.
        var replay = new DeviceCounters { Launches = 1, HostSyncs = 1, D2HBytes = 4, D2HCopies = 1 };
        Assert.All(counters.Skip(1), c => Assert.Equal(replay, c));
    }

    private static (int[] Tokens, List<DeviceCounters> PerStep) Greedy(LlavaModel model, int[] ids, float[] pixels, int steps)
    {
        var state = TwoBackendFixture.Sequence(model, ids, pixels);
        using var gen = model.StartGeneration(steps);
        int next = CpuOps.ArgMax(gen.Prefill(state, null, CancellationToken.None));
        var tokens = new List<int> { next };
        var perStep = new List<DeviceCounters>();
        for (int s = 0; s < steps; s++)
        {
            var set = new DeviceCounterSet();
            using (DeviceCounterSet.BeginRequest(set)) next = gen.StepGreedy(next);
            perStep.Add(set.Snapshot());
            tokens.Add(next);
        }
        return ([.. tokens], perStep);
    }

    /// <summary>The tower is captured on its second image and replayed for the third: features, [CLS] attention and keys equal the ungraphed tower's.</summary>
    [Fact]
    public void GraphedVisionTowerGivesTheUngraphedFeaturesBitForBit()
    {
        foreach (var row in TestData.Dev.Take(3))
        {
            var pixels = fx.Pixels(row.Id);
            var plain = fx.Plain.VisionForward(pixels);
            var graphed = fx.Graphed.VisionForward(pixels);
            try
            {
                SameBits(plain.Features, graphed.Features, $"row {row.Id} features");
                SameBits(plain.ClsAttention!, graphed.ClsAttention!, $"row {row.Id} [CLS] attention");
                SameBits(plain.PatchKeys!, graphed.PatchKeys!, $"row {row.Id} patch keys");
            }
            finally
            {
                plain.Device?.Release();
                graphed.Device?.Release();
            }
        }
    }
}

/// <summary>
/// What gpu-targets.sh compares on a GPU: the speed benchmark with and without CUDA graphs reports the same greedy
/// token ids and the same bits of one more step's logits; here with the graphs emulated.
/// </summary>
public sealed class CudaGraphBenchmarkTests
{
    private static SpeedReport Bench(bool graphs) => SpeedBenchmark.Run(new SpeedBenchmarkOptions
    {
        Architecture = "tiny-test", Device = "ilgpu-cpu", CudaGraphs = graphs,
        Methods = [AutoPrune.Pruning.PruningMethod.FastV], Budgets = [64], Repeats = 1, Warmup = 2, DecodeTokens = 4,
    });

    [Fact]
    public void GraphedBenchmarkDecodesTheSameTokensAndLogitsWithOneLaunchPerToken()
    {
        var plain = Bench(false);
        var graphed = Bench(true);
        Assert.False(plain.CudaGraphs);
        Assert.True(graphed.CudaGraphs);
        Assert.Equal(6, plain.DecodeTokenIds.Count);
        Assert.Equal(plain.DecodeTokenIds, graphed.DecodeTokenIds);
        Assert.Matches("^[0-9a-f]{64}$", plain.DecodeLogitsSha256);
        Assert.Equal(plain.DecodeLogitsSha256, graphed.DecodeLogitsSha256);
        Assert.Equal(1, graphed.DecodeCountersPerToken!.Enqueued);
        Assert.True(plain.DecodeCountersPerToken!.Enqueued > 8);
    }
}
