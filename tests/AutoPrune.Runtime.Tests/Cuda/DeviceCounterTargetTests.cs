using AutoPrune.Diagnostics;
using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// The speed benchmark on the GPU code path (ILGPU's CPU accelerator) with LLaVA-1.5-7B's 32 decoder layers and 576
/// visual tokens at the fixture's sizes (generated weights), every method moved to the device at budget 64: what the
/// counters targets are measured on.
/// </summary>
public sealed class Deep32BenchFixture
{
    public static readonly PruningMethod[] DeviceMethods =
        [PruningMethod.FastV, PruningMethod.PDrop, PruningMethod.SparseVLM, PruningMethod.AdaptPrune, PruningMethod.VisionZip,
         PruningMethod.AutoPrune, PruningMethod.DivPrune, PruningMethod.Dart];

    public SpeedReport Report { get; } = SpeedBenchmark.Run(new SpeedBenchmarkOptions
    {
        Architecture = "tiny-32-layers",
        Device = "ilgpu-cpu",
        Methods = DeviceMethods,
        Budgets = [64],
        Repeats = 2, // the counters come from the second run: a request after the first
        Warmup = 0,
        DecodeTokens = 3,
    });

    public PrefillTiming Prefill(string method) => Report.Prefill.Single(p => p.Method == method && p.Skipped is null && (method != "None" || p.Budget == 576));
}

/// <summary>
/// The issue's counter targets (GPU code path, counted on ILGPU's CPU accelerator exactly as on a GPU): host
/// synchronisations per prefill and per decode token, bytes each way, launches at a pruning layer, allocations.
/// </summary>
public sealed class DeviceCounterTargetTests(Deep32BenchFixture fx, ITestOutputHelper output) : IClassFixture<Deep32BenchFixture>
{
    private const int Vocab = 402, PromptTokens = 626, Patches = 576, PatchBytes = 576 * 3 * 14 * 14 * 2;

    public static TheoryData<string> DeviceMethods() => new(Deep32BenchFixture.DeviceMethods.Select(m => m.ToString()));

    private DeviceCounters Counters(string method)
    {
        var c = fx.Prefill(method).Counters!;
        output.WriteLine($"{method}: {c}");
        return c;
    }

    [Theory]
    [InlineData("None")]
    [MemberData(nameof(DeviceMethods))]
    public void APrefillWaitsForTheDeviceOnce(string method) => Assert.Equal(Waits(method), Counters(method).HostSyncs);

    /// <summary>AutoPrune waits once more than the final readback: for MI1 after layer 1 (8 bytes), which sets its curve.</summary>
    private static int Waits(string method) => method == "AutoPrune" ? 2 : 1;

    [Fact]
    public void AGreedyDecodeTokenWaitsOnceReadsFourBytesAndUploadsNothing()
    {
        var d = fx.Report.DecodeCountersPerToken!;
        output.WriteLine(d.ToString());
        Assert.Equal(1, d.HostSyncs);
        Assert.Equal(4, d.D2HBytes);
        Assert.Equal(1, d.D2HCopies);
        Assert.Equal(0, d.H2DBytes);
        Assert.Equal(0, d.DeviceAllocations);
        // The static-shape step: 8 launches and cuBLAS calls per layer (input norm, q|k|v GEMV, RoPE with the cache append
        // and the attention in one launch, o GEMV, post norm, gate|up GEMV, SiLU·up, down GEMV), plus the embedding, the
        // final norm, the LM head, the argmax and the advance.
        Assert.Equal(8 * 32 + 5, d.Enqueued);
    }

    /// <summary>Beyond the logits and the greedy token, what a prune sends back (the report's kept indices) stays under 4 KB per pruning layer.</summary>
    [Theory]
    [MemberData(nameof(DeviceMethods))]
    public void DeviceToHostBytesPerPruningLayerStayUnder4KB(string method)
    {
        var m = Enum.Parse<PruningMethod>(method);
        var shape = new ModelShape(32, 4, 192, 512, Patches, 24);
        int pruningLayers = Math.Max(1, new PruningSession(shape, new PruningOptions { Method = m, Budget = 64 }, 1).Policy.Schedule!.Steps.Count);
        long beyondLogits = Counters(method).D2HBytes - Counters("None").D2HBytes;
        Assert.InRange(beyondLogits, 0, 4096L * pruningLayers);
        Assert.Equal(Waits(method), Counters(method).D2HCopies);
    }

    /// <summary>Only pixels and token ids go up: the projector uploads nothing, a prefill only the prompt's ids.</summary>
    [Theory]
    [InlineData("None")]
    [MemberData(nameof(DeviceMethods))]
    public void NothingGoesUpButPixelsAndTokenIds(string method)
    {
        Assert.Equal(PatchBytes, fx.Report.VisionCounters!.H2DBytes);
        Assert.Equal(0, fx.Report.ProjectorCounters!.H2DBytes);
        var p = fx.Prefill(method);
        Assert.Equal(4L * p.PromptTokens, Counters(method).H2DBytes);
    }

    /// <summary>
    /// A decoder layer is 9 launches and cuBLAS calls whatever its length: attention is one launch, fused on a short
    /// sequence and tiled on the tensor cores on the full 626-row prompt (instead of two attention GEMMs and a softmax);
    /// the prefill adds six (the embedding, the final norm, the LM head, the argmax, the token and the final copy).
    /// </summary>
    [Fact]
    public void EveryLayerIsNineLaunchesShortOrFull()
    {
        Assert.Equal("tiled", fx.Report.LongAttention);
        Assert.Equal(9 * 32 + 6, Counters("None").Enqueued);
        Assert.Equal(9 * 32 + 6, Counters("None (input cut)").Enqueued);
        Assert.Equal(4 * 32 + 1, Counters("None").BlasCalls);   // q|k|v, o, gate|up and down per layer, the LM head: no attention GEMMs
    }

    /// <summary>
    /// FastV's prune is two launches beyond an input-cut prefill's work: the last row's attention over the visual columns,
    /// then top-k with the plan; the gather also writes the next layer's input norm, so it costs no launch of its own.
    /// </summary>
    [Fact]
    public void FastVPrunesInTwoLaunches()
    {
        // FastV runs layers 0 and 1 on the full prompt (as many launches as short layers), then the input-cut prefill's
        // short layers; one more device-to-device copy (the kept indices into the final readback).
        Assert.Equal(2 + 1, Counters("FastV").Enqueued - Counters("None (input cut)").Enqueued);
    }

    [Theory]
    [InlineData("None")]
    [MemberData(nameof(DeviceMethods))]
    public void ARequestAfterTheFirstAllocatesNothingOnTheDevice(string method) => Assert.Equal(0, Counters(method).DeviceAllocations);

    [Fact]
    public void EveryMethodRanWithTheSameKeptCountsAsScheduled()
    {
        foreach (var m in Deep32BenchFixture.DeviceMethods)
        {
            var p = fx.Prefill(m.ToString());
            Assert.InRange(p.AvgVisualTokensPerLayer!.Value, 63, 64);
        }
    }
}

/// <summary>Whole requests through the public API on the GPU code path: counters by stage, on the answer and after a first request.</summary>
public sealed class DeviceRequestCounterTests(ITestOutputHelper output)
{
    [Fact]
    public async Task ASecondRequestAllocatesNothingWaitsOncePerStageAndUploadsOnlyPixelsAndTokenIds()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "ilgpu-cpu", VisionCacheSize = 0, MaxConcurrentRequests = 1 });
        VisionRequest Request(TestData.DevRow row) => VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 4 },
            Pruning = new PruningOptions { Method = PruningMethod.FastV, Budget = 128 },
        };
        var first = await model.AskAsync(Request(TestData.Dev[0]));
        Assert.NotNull(first.DeviceCounters);
        var second = await model.AskAsync(Request(TestData.Dev[5]));
        var c = second.DeviceCounters!;
        output.WriteLine($"vision {c.Vision}\nprefill {c.Prefill}\ndecode {c.Decode} over {c.DecodeSteps} steps; one step {c.DecodePerToken}");
        Assert.Equal(0, c.Vision.DeviceAllocations + c.Prefill.DeviceAllocations + c.Decode.DeviceAllocations);
        Assert.Equal(0, c.Vision.HostSyncs);
        Assert.Equal(1, c.Prefill.HostSyncs);
        Assert.True(c.DecodeSteps > 0);
        Assert.Equal(c.DecodeSteps, c.Decode.HostSyncs);
        Assert.Equal(1, c.DecodePerToken!.HostSyncs);
        // Up: the pixels (fp16 patches) and the prompt's token ids, nothing else.
        long pixels = 576L * 3 * 14 * 14 * 2, ids = 4L * second.PromptTokens;
        Assert.Equal(pixels + ids, c.Vision.H2DBytes + c.Prefill.H2DBytes + c.Decode.H2DBytes);
        // The CPU backend reports none.
        using var cpu = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu" });
        Assert.Null((await cpu.AskAsync(Request(TestData.Dev[5]))).DeviceCounters);
    }

    /// <summary>
    /// AutoPrune through the public API with no vision cache: its [CLS] term is read on the device during the prefill
    /// (the features are held until it ends), it waits twice in the prefill (MI1, then the final readback), never in the
    /// vision stage, and sends up only the pixels and the token ids.
    /// </summary>
    [Fact]
    public async Task AutoPruneWithoutAVisionCacheReadsItsFeaturesOnTheDeviceAndWaitsTwice()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "ilgpu-cpu", VisionCacheSize = 0, MaxConcurrentRequests = 1 });
        var row = TestData.Dev[3];
        var request = VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 1 },
            Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 },
        };
        await model.AskAsync(request);
        var answer = await model.AskAsync(request);
        var c = answer.DeviceCounters!;
        output.WriteLine($"vision {c.Vision}\nprefill {c.Prefill}; layers [{string.Join(",", answer.Report.VisualTokensPerLayer)}]");
        Assert.Equal(0, c.Vision.HostSyncs);
        Assert.Equal(2, c.Prefill.HostSyncs);
        Assert.InRange(answer.Report.AvgVisualTokensProcessed, 127, 128);
        Assert.True(answer.Report.VisualTokensPerLayer[0] < 576, "layer 0 runs on the selection made before the LLM, on the device");
        // Up: the pixels and the ids of the prompt that enters the LLM (its image run cut to layer 0's tokens).
        int enteringIds = answer.PromptTokens - 576 + answer.Report.VisualTokensPerLayer[0];
        Assert.Equal(576L * 3 * 14 * 14 * 2 + 4L * enteringIds, c.Vision.H2DBytes + c.Prefill.H2DBytes + c.Decode.H2DBytes);
        Assert.Equal(0, c.Vision.DeviceAllocations + c.Prefill.DeviceAllocations);
    }
}
