using AutoPrune.Pruning;
using AutoPrune.Tests.Engine;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>The public model on the GPU code path (Device = "ilgpu-cpu"), next to the CPU one.</summary>
public sealed class EmulatedGpuModelFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "ilgpu-cpu", MaxConcurrentRequests = 2 });

    /// <summary>The CPU backend computing with the device's precision (<see cref="CpuPrecision.MatchDevice"/>).</summary>
    public VisionLanguageModel CpuMatched { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", CpuPrecision = CpuPrecision.MatchDevice });

    public void Dispose()
    {
        Model.Dispose();
        CpuMatched.Dispose();
    }
}

/// <summary>
/// Answers through the public API with the GPU code path (ILGPU's CPU accelerator, host GEMM) against the CPU
/// backend, unpruned on dev rows and with every pruning method.
/// </summary>
public sealed class EmulatedGpuEngineTests(EmulatedGpuModelFixture gpu, ITestOutputHelper output)
    : IClassFixture<EmulatedGpuModelFixture>
{
    /// <summary>Every 16th dev row in the fast suite; `AUTOPRUNE_FULL_DEV=1` runs all 208.</summary>
    public static TheoryData<int> Rows => new(TestData.Dev
        .Where((r, i) => Environment.GetEnvironmentVariable("AUTOPRUNE_FULL_DEV") == "1" || i % 16 == 0)
        .Select(r => r.Id));

    private static VisionRequest Request(TestData.DevRow row, PruningOptions pruning, int maxNew) =>
        VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = maxNew },
            Pruning = pruning,
        };

    [Theory]
    [MemberData(nameof(Rows))]
    public async Task UnprunedAnswersEqualTheCpuBackendAndTransformers(int id)
    {
        var row = TestData.Dev.Single(r => r.Id == id);
        var answer = await gpu.Model.AskAsync(Request(row, new PruningOptions { Method = PruningMethod.None }, 8));
        Assert.Equal(row.HfPred, answer.Text.Trim()); // the CPU backend equals hf_pred on every row (DevSetAgreementTests)
        Assert.Equal(row.Top5Ids[0], answer.TopLogits[0].Id);
        for (int i = 0; i < 5; i++)
        {
            int at = Array.IndexOf(row.Top5Ids, answer.TopLogits[i].Id);
            if (at >= 0) Assert.InRange(answer.TopLogits[i].Logit, row.Top5Logits[at] - 2e-2f, row.Top5Logits[at] + 2e-2f);
        }
        Assert.StartsWith("ILGPU CPU accelerator", answer.Device);
    }

    public static TheoryData<string, double> Methods => new()
    {
        { "fastv", 128 }, { "pdrop", 128 }, { "sparsevlm", 192 }, { "visionzip", 128 }, { "adaptprune", 128 },
        { "divprune", 128 }, { "dart", 128 }, { "autoprune", 128 }, { "autoprune", 96 }, { "autoprune-paper", 128 }, { "fastv", 96 },
    };

    /// <summary>Every 52nd dev row in the fast suite (4 rows); `AUTOPRUNE_FULL_DEV=1` runs all 208.</summary>
    private static IEnumerable<TestData.DevRow> KeepRows => TestData.Dev
        .Where((r, i) => Environment.GetEnvironmentVariable("AUTOPRUNE_FULL_DEV") == "1" || i % 52 == 3);

    /// <summary>
    /// The same answers, per-layer counts and kept visual tokens as the CPU backend computing with the device's precision
    /// (<see cref="CpuPrecision.MatchDevice"/>; against fp32 activations, tokens whose scores differ by less than fp16
    /// rounding trade places): every method's host code then decides exactly as its kernels do.
    /// </summary>
    [Theory]
    [MemberData(nameof(Methods))]
    public async Task PrunedAnswersScheduleAndKeptTokensEqualTheCpuBackend(string method, double budget)
    {
        var pruning = method == "autoprune-paper" ? PruningOptions.AutoPrunePaper(budget)
            : new PruningOptions { Method = PruningMethods.Parse(method), Budget = budget };
        foreach (var row in KeepRows)
        {
            var g = await gpu.Model.AskAsync(Request(row, pruning, 3));
            var c = await gpu.CpuMatched.AskAsync(Request(row, pruning, 3));
            output.WriteLine($"{method}@{budget} row {row.Id}: cpu '{c.Text}' gpu '{g.Text}', layers cpu [{string.Join(",", c.Report.VisualTokensPerLayer)}] gpu [{string.Join(",", g.Report.VisualTokensPerLayer)}]");
            Assert.Equal(c.TopLogits[0].Id, g.TopLogits[0].Id);
            Assert.Equal(c.Report.VisualTokensPerLayer, g.Report.VisualTokensPerLayer);
            Assert.Equal(c.Report.FlopsRatio, g.Report.FlopsRatio, 9);
            // The same tokens kept at every layer (on the GPU path the selection runs in kernels and comes back once, at the end).
            Assert.Equal(c.Report.KeptIndicesPerLayer.Count, g.Report.KeptIndicesPerLayer.Count);
            for (int l = 0; l < c.Report.KeptIndicesPerLayer.Count; l++)
            {
                var (a, b) = (c.Report.KeptIndicesPerLayer[l], g.Report.KeptIndicesPerLayer[l]);
                output.WriteLine($"  layer {l}: {a.Length} kept");
                Assert.Equal(a, b);
            }
        }
    }

    [Fact]
    public void DeviceNamesResolveOrExplain()
    {
        using (var auto = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "auto" }))
        {
            // No NVIDIA driver on the test machines: auto falls back to the CPU (a GPU machine would pick cuda:0).
            if (!AutoPrune.Compute.Cuda.CudaDevice.Probe(0).Usable) Assert.Equal("cpu", auto.Info.Device);
            else Assert.StartsWith("cuda:0", auto.Info.Device);
        }
        Assert.StartsWith("ILGPU CPU accelerator", gpu.Model.Info.Device);
        if (!AutoPrune.Compute.Cuda.CudaDevice.Probe(0).Usable)
        {
            var e = Assert.Throws<NotSupportedException>(() => VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cuda:0" }));
            Assert.Contains("cuda:0", e.Message);
        }
        var bad = Assert.Throws<ArgumentException>(() => VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "tpu" }));
        Assert.Contains("ilgpu-cpu", bad.Message);
    }
}
