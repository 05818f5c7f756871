using AutoPrune.Compute.Cpu;
using AutoPrune.Diagnostics;
using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// <see cref="CpuPrecision.MatchDevice"/>: with the fixture's fp16 checkpoint the CPU backend computes what the GPU code
/// path computes on ILGPU's CPU accelerator, bit for bit, so the two make the same pruning decisions (the fp32 CPU swaps
/// near-tied tokens). EmulatedGpuEngineTests checks every method's kept tokens on dev rows the same way.
/// </summary>
public sealed class MatchDevicePrecisionTests(TwoBackendFixture fx, ITestOutputHelper output) : IClassFixture<TwoBackendFixture>
{
    private static int Differing(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        int n = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) n++;
        return n;
    }

    [Fact]
    public void TheEmulatedDeviceSumsItsRowsInOneGroupThread()
    {
        // DeviceNumerics.SequentialSum is the order of the row kernels' reductions only with one thread per group.
        Assert.Equal(1, fx.GpuBackend.Ops.RowGroupSize);
    }

    [Fact]
    public void VisionTowerProjectorPrefillAndDecodeEqualTheDevicePathBitForBit()
    {
        var reference = TestData.References[0];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        var c = fx.CpuMatched.VisionForward(pixels);
        var g = fx.Gpu.VisionForward(pixels);
        Assert.Equal(0, Differing(c.Features, g.Features));
        Assert.Equal(0, Differing(fx.CpuMatched.Project(c.Features, c.Tokens), fx.Gpu.Project(c.Features, c.Tokens)));
        g.Device!.Release();

        var cpu = TwoBackendFixture.Run(fx.CpuMatched, reference.InputIds, pixels, steps: 6);
        var gpu = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 6);
        output.WriteLine(string.Join(", ", cpu.Select((l, s) => $"step {s}: {Differing(l, gpu[s])} logits differ")));
        for (int s = 0; s < cpu.Count; s++) Assert.Equal(0, Differing(cpu[s], gpu[s]));
        // Still the model: within the fp16 bar of transformers' logits, like the device.
        float dHf = 0;
        for (int i = 0; i < cpu[0].Length; i++) dHf = MathF.Max(dHf, MathF.Abs(cpu[0][i] - reference.LastLogits[i]));
        output.WriteLine($"max |Δ| vs transformers {dHf:E2}");
        Assert.True(dHf <= 2e-2f, $"logits differ from transformers by {dHf}");
    }

    [Fact]
    public void TheFp32DefaultIsNotTheDevicesArithmetic()
    {
        // The option changes something: fp32 activations give other features than the device's fp16 ones.
        var pixels = fx.Pixels(TestData.Dev[0].Image);
        Assert.NotEqual(0, Differing(fx.Cpu.VisionForward(pixels).Features, fx.CpuMatched.VisionForward(pixels).Features));
    }

    [Theory]
    [InlineData(PruningMethod.AutoPrune, 128)]
    [InlineData(PruningMethod.PDrop, 128)]
    [InlineData(PruningMethod.SparseVLM, 192)]
    [InlineData(PruningMethod.VisionZip, 128)]
    [InlineData(PruningMethod.DivPrune, 128)]
    public async Task VerifyFindsTheSameKeepDecisionsAndLogits(PruningMethod method, int budget)
    {
        var rows = TestData.Dev.Take(8).Select(r => (TestData.Image(r.Image), r.Question)).ToList();
        var report = await DeviceComparison.RunAsync(TestData.ModelDir, "ilgpu-cpu", rows,
            new PruningOptions { Method = method, Budget = budget }, maxNewTokens: 2);
        output.WriteLine($"{method}: {report.SameKeptTokens}/{report.Rows} kept sets equal, max |Δ logit| {report.MaxAbsLogitDifference:E2}");
        Assert.Equal(nameof(CpuPrecision.MatchDevice), report.ReferencePrecision);
        Assert.Equal(report.Rows, report.SameKeptTokens);
        Assert.Equal(report.Rows, report.SameAnswers);
        Assert.Equal(0, report.MaxAbsLogitDifference);
        Assert.True(report.Agrees(tolerance: 0));
    }
}
