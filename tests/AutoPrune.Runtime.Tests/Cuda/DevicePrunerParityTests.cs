using AutoPrune.Models.Llava;
using AutoPrune.Pruning;
using AutoPrune.Pruning.Device;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// Each method moved to the device against its host code on the same GPU-path inputs (ILGPU's CPU accelerator): the
/// kernels mirror the host arithmetic where it decides what is kept, so the kept tokens at every layer, and with them
/// the pruned sequences and the logits, are bit-for-bit the same.
/// </summary>
public sealed class DevicePrunerParityTests(TwoBackendFixture fx, ITestOutputHelper output) : IClassFixture<TwoBackendFixture>
{
    private static readonly ModelShape Shape = new(8, 4, 192, 512, 576, 24);

    public static TheoryData<PruningMethod, double, int> Cases => new()
    {
        { PruningMethod.FastV, 128, 3 }, { PruningMethod.FastV, 96, 6 },
        { PruningMethod.PDrop, 128, 3 }, { PruningMethod.PDrop, 96, 6 },
        { PruningMethod.SparseVLM, 192, 3 }, { PruningMethod.SparseVLM, 160, 6 },
        { PruningMethod.AdaptPrune, 128, 3 }, { PruningMethod.AdaptPrune, 96, 6 },
    };

    private (float[] Logits, PruningReport Report, Diagnostics.DeviceCounters Counters) Run(TestData.DevRow row, PruningOptions options, bool onDevice)
    {
        var reference = TestData.References.FirstOrDefault(r => r.Id == row.Id);
        int[] ids = reference?.InputIds ?? throw new InvalidOperationException($"No reference prompt for dev row {row.Id}.");
        int prefix = Array.IndexOf(ids, fx.Gpu.Config.ImageTokenIndex);
        int text = ids.Length - (Array.LastIndexOf(ids, fx.Gpu.Config.ImageTokenIndex) + 1);
        var session = new PruningSession(Shape, options, prefix, deviceSelection: onDevice);
        var counters = new Diagnostics.DeviceCounterSet();
        using var scope = Diagnostics.DeviceCounterSet.BeginRequest(counters);
        var state = TwoBackendFixture.Sequence(fx.Gpu, ids, fx.Pixels(row.Image));
        using var gen = fx.Gpu.StartGeneration(1);
        var logits = gen.Prefill(state, session, CancellationToken.None);
        return (logits, session.Finish(state, text), counters.Snapshot());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void TheDeviceKeepsWhatTheHostCodeKeepsOnTheSameInputs(PruningMethod method, double budget, int rowId)
    {
        var row = TestData.Dev.Single(r => r.Id == rowId);
        var options = new PruningOptions { Method = method, Budget = budget };
        var device = Run(row, options, onDevice: true);
        var host = Run(row, options, onDevice: false);
        output.WriteLine($"{method}@{budget} row {rowId}: device {device.Counters}; host {host.Counters}");
        Assert.Equal(host.Report.VisualTokensPerLayer, device.Report.VisualTokensPerLayer);
        for (int l = 0; l < host.Report.KeptIndicesPerLayer.Count; l++)
            Assert.Equal(host.Report.KeptIndicesPerLayer[l], device.Report.KeptIndicesPerLayer[l]);
        Assert.Equal(host.Logits, device.Logits);
        foreach (var (k, v) in host.Report.Signals) Assert.Equal(v, device.Report.Signals[k]);
        Assert.Equal(1, device.Counters.HostSyncs);
        Assert.True(host.Counters.HostSyncs > 1, "the host code reads signals back");
    }

    [Theory]
    [InlineData(128, 3)]
    [InlineData(64, 6)]
    public void VisionZipOnTheDeviceMergesWhatTheHostCodeMerges(double budget, int rowId)
    {
        var row = TestData.Dev.Single(r => r.Id == rowId);
        var policy = (VisionZipPolicy)PruningPolicies.Create(Shape, new PruningOptions { Method = PruningMethod.VisionZip, Budget = budget });
        var vision = fx.Gpu.VisionForward(fx.Pixels(row.Image));
        var zip = policy.Select(vision); // host code on the GPU path's features (copied back)
        var hostRows = fx.Gpu.Project(zip.Hidden, zip.Count);
        using var deviceRows = VisionZipOnDevice.Select(fx.Gpu, policy, vision);
        var visual = fx.Gpu.Download(deviceRows.Visual!.View, zip.Count);
        Assert.Equal([.. zip.Dominant, .. Enumerable.Repeat(-2, zip.ContextualTargets.Length)], visual);
        Assert.Equal(hostRows, deviceRows.ToHost());
        vision.Device!.Release();
    }
}
