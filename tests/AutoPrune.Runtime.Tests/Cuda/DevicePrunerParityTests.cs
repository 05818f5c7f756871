using AutoPrune.Compute;
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
        { PruningMethod.AutoPrune, 128, 3 }, { PruningMethod.AutoPrune, 96, 6 },
        { PruningMethod.Dart, 128, 3 }, { PruningMethod.Dart, 96, 6 },
    };

    /// <summary>The method's options here: AutoPrune's layers in the LLM (its selection before the LLM is compared on its own below).</summary>
    private static PruningOptions Options(PruningMethod method, double budget) => method == PruningMethod.AutoPrune
        ? new PruningOptions { Method = method, Budget = budget, AutoPruneBeforeLlm = false }
        : new PruningOptions { Method = method, Budget = budget };

    private (float[] Logits, PruningReport Report, Diagnostics.DeviceCounters Counters) Run(TestData.DevRow row, PruningOptions options, bool onDevice,
        Func<PruningSession, Diagnostics.DeviceCounterSet, IPrefillHook>? hook = null)
    {
        var reference = TestData.References.FirstOrDefault(r => r.Id == row.Id);
        int[] ids = reference?.InputIds ?? throw new InvalidOperationException($"No reference prompt for dev row {row.Id}.");
        int prefix = Array.IndexOf(ids, fx.Gpu.Config.ImageTokenIndex);
        int text = ids.Length - (Array.LastIndexOf(ids, fx.Gpu.Config.ImageTokenIndex) + 1);
        var session = new PruningSession(Shape, options, prefix, deviceSelection: onDevice);
        var vision = fx.Gpu.VisionForward(fx.Pixels(row.Image));
        try
        {
            session.SetImage(fx.Image(vision), vision);
            SequenceState state;
            using (var rows = fx.Gpu.ProjectImage(vision)) state = fx.Gpu.BuildSequence(ids, [rows]);
            var counters = new Diagnostics.DeviceCounterSet();
            using var scope = Diagnostics.DeviceCounterSet.BeginRequest(counters);
            using var gen = fx.Gpu.StartGeneration(1);
            var logits = gen.Prefill(state, hook?.Invoke(session, counters) ?? session, CancellationToken.None);
            return (logits, session.Finish(state, text), counters.Snapshot());
        }
        finally { vision.Device?.Release(); }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void TheDeviceKeepsWhatTheHostCodeKeepsOnTheSameInputs(PruningMethod method, double budget, int rowId)
    {
        var row = TestData.Dev.Single(r => r.Id == rowId);
        var options = Options(method, budget);
        var device = Run(row, options, onDevice: true);
        var host = Run(row, options, onDevice: false);
        output.WriteLine($"{method}@{budget} row {rowId}: device {device.Counters}; host {host.Counters}");
        Assert.Equal(host.Report.VisualTokensPerLayer, device.Report.VisualTokensPerLayer);
        for (int l = 0; l < host.Report.KeptIndicesPerLayer.Count; l++)
            Assert.Equal(host.Report.KeptIndicesPerLayer[l], device.Report.KeptIndicesPerLayer[l]);
        Assert.Equal(host.Logits, device.Logits);
        // MI sums the same products in another order on the device: its signals agree to float precision (k, the slope
        // they set, is kept to k0/100 and equal).
        foreach (var (k, v) in host.Report.Signals) Assert.Equal(v, device.Report.Signals[k], Math.Abs(v) * 1e-5 + 1e-9);
        // AutoPrune waits once more, for MI1 after layer 1 (two floats), which sets the rest of its curve.
        Assert.Equal(method == PruningMethod.AutoPrune ? 2 : 1, device.Counters.HostSyncs);
        Assert.True(host.Counters.HostSyncs > 1, "the host code reads signals back");
    }

    [Theory]
    [InlineData(128, 3)]
    [InlineData(64, 6)]
    public void VisionZipOnTheDeviceMergesWhatTheHostCodeMerges(double budget, int rowId)
    {
        var policy = (VisionZipPolicy)PruningPolicies.Create(Shape, new PruningOptions { Method = PruningMethod.VisionZip, Budget = budget });
        WithGpuVision(rowId, vision =>
        {
            var zip = policy.Select(vision); // host code on the GPU path's features (copied back)
            var hostRows = fx.Gpu.Project(zip.Hidden, zip.Count);
            using var deviceRows = VisionZipOnDevice.Select(fx.Gpu, policy, vision);
            var visual = fx.GpuBackend.DownloadInts(deviceRows.Visual!.First(zip.Count));
            Assert.Equal([.. zip.Dominant, .. Enumerable.Repeat(-2, zip.ContextualTargets.Length)], visual);
            Assert.Equal(hostRows, deviceRows.ToHost());
        });
    }

    /// <summary>Runs <paramref name="body"/> on a dev row's vision features from the GPU path, released afterwards.</summary>
    private void WithGpuVision(int rowId, Action<VisionFeatures> body)
    {
        var vision = fx.Gpu.VisionForward(fx.Pixels(TestData.Dev.Single(r => r.Id == rowId).Image));
        try { body(vision); }
        finally { vision.Device!.Release(); }
    }

    /// <summary>
    /// AutoPrune's selection before the LLM ([CLS] attention with coverage over the vision keys) on the device keeps the
    /// patches the host code keeps on the same features, and the rows it projects are the same.
    /// </summary>
    [Theory]
    [InlineData(128, 3)]
    [InlineData(96, 6)]
    public void AutoPruneSelectsBeforeTheLlmOnTheDeviceAsTheHostCodeDoes(double budget, int rowId)
    {
        var policy = (AutoPrunePolicy)PruningPolicies.Create(Shape, new PruningOptions { Method = PruningMethod.AutoPrune, Budget = budget });
        WithGpuVision(rowId, vision =>
        {
            policy.OnVision(vision);
            var image = fx.Image(vision);
            policy.OnImage(image);
            var host = policy.SelectBeforeLlm(image)!;
            using var device = AutoPruneOnDevice.SelectBeforeLlm(fx.Gpu, policy, vision)!;
            Assert.Equal(policy.Initial.Entering, device.Rows);
            Assert.Equal(host.VisualIndex, fx.GpuBackend.DownloadInts(device.Visual!.First(device.Rows)));
            Assert.Equal(host.Projected, device.ToHost());
            Assert.True(device.OriginalPositions);
        });
    }

    /// <summary>
    /// DivPrune on the device: cosines from one fp16 GEMM instead of the host's fp32 one, quantized to 1/1024 the same way,
    /// so the greedy choices agree except where a distance sits on a rounding boundary; measured here.
    /// </summary>
    [Theory]
    [InlineData(128, 3)]
    [InlineData(64, 6)]
    public void DivPruneOnTheDeviceKeepsWhatTheHostCodeKeepsUpToDistanceRounding(double budget, int rowId)
    {
        var policy = (DivPrunePolicy)PruningPolicies.Create(Shape, new PruningOptions { Method = PruningMethod.DivPrune, Budget = budget });
        WithGpuVision(rowId, vision =>
        {
            var host = policy.SelectBeforeLlm(fx.Image(vision));
            int k = policy.PatchesToKeep(vision);
            using var device = DivPruneOnDevice.Select(fx.Gpu, vision, k, originalPositions: false);
            var kept = fx.GpuBackend.DownloadInts(device.Visual!.First(device.Rows));
            Assert.Equal(k, kept.Length);
            Assert.Equal(kept.Order(), kept);
            double overlap = (double)host.VisualIndex.Intersect(kept).Count() / k;
            output.WriteLine($"divprune@{budget} row {rowId}: {overlap:P1} of the kept patches agree");
            Assert.True(overlap >= 0.9, $"only {overlap:P1} agree");
        });
    }

    /// <summary>Counts what the device is asked to do before and after each layer's prune.</summary>
    private sealed class CountingHook(PruningSession session, Diagnostics.DeviceCounterSet counters) : IPrefillHook
    {
        public List<(int Layer, long Before, long After, bool Pruned)> Layers { get; } = [];
        /// <summary>The rows each layer ran on.</summary>
        public List<int> Rows { get; } = [];
        public bool ReadsAttention(int layer) => session.ReadsAttention(layer);
        public PruneAction? AfterLayer(LayerView view)
        {
            long before = counters.Snapshot().Enqueued;
            Rows.Add(view.State.Length);
            var action = session.AfterLayer(view);
            Layers.Add((view.Layer, before, counters.Snapshot().Enqueued, action is not null));
            return action;
        }
    }

    /// <summary>
    /// A prune after layer 2 or later is three launches for AutoPrune, as for FastV: the text rows' attention over the
    /// visual columns, one kernel for their mean, the unit hidden rows and the coverage selection, and the gather. Layer
    /// 1 adds the MI launch (one group per head, the last to finish sums them; its value is the prefill's one extra wait):
    /// three in all, the target. The layers themselves cost what unpruned ones do.
    /// </summary>
    [Theory]
    [InlineData(128, 3)]
    [InlineData(96, 6)]
    public void AutoPrunePrunesAfterLayerOneInThreeLaunches(double budget, int rowId)
    {
        CountingHook? hook = null;
        Run(TestData.Dev.Single(r => r.Id == rowId), Options(PruningMethod.AutoPrune, budget), onDevice: true, (session, counters) => hook = new CountingHook(session, counters));
        var layers = hook!.Layers;
        output.WriteLine(string.Join("; ", layers.Select(l => $"layer {l.Layer}: hook {l.After - l.Before}{(l.Pruned ? " + gather" : "")}")));
        long layerCost = layers[1].Before - layers[0].After - 1; // layer 1's own work (after layer 0's gather)
        for (int i = 2; i < layers.Count; i++)
        {
            var (layer, before, after, pruned) = layers[i];
            Assert.True(pruned, $"the curve prunes after layer {layer} here");
            Assert.Equal(2, after - before); // window, then text mean + unit rows + coverage + plan; the gather follows
            Assert.Equal(layerCost, before - layers[i - 1].After - 1);
        }
        Assert.Equal(2 + 1, layers[1].After - layers[1].Before); // + MI with its bound
        // Layer 0: the text rows' attention, MI (one launch, written straight into the buffer the final readback brings
        // back: no copy), and the first selection in one (the text mean, the pre-selection score with the [CLS] mean and
        // MI0, the unit rows and the coverage).
        Assert.Equal(3, layers[0].After - layers[0].Before);
    }

    /// <summary>
    /// What a prune costs beyond the layers around it, per method: the launches and cuBLAS calls its hook enqueues, plus
    /// the gather, plus what the next layer then costs, minus what that layer costs unprepared on the same rows (9:
    /// attention is one launch, fused or tiled). The gather writes the next layer's input norm, or gathers the q|k|v a prune
    /// computed for it (PDrop), so the next layer skips that work. The issue's target is at most 3: FastV, AutoPrune
    /// (after layer 1), DART, PDrop and AdaptPrune (the next layer's norm and key GEMM, then the NMS, which computes the
    /// last row's attention itself) and SparseVLM with recycling (one launch for the relevance and the text rows' attention
    /// whose last group to finish chooses the raters, the top k and the rows to recycle; the distances; the clusters with
    /// the merged rows) meet it.
    /// </summary>
    [Theory]
    [InlineData(PruningMethod.FastV, 128, 2)]
    [InlineData(PruningMethod.AutoPrune, 128, 2)]
    [InlineData(PruningMethod.Dart, 128, 3)]
    [InlineData(PruningMethod.PDrop, 128, 3)]
    [InlineData(PruningMethod.AdaptPrune, 128, 3)]
    [InlineData(PruningMethod.SparseVLM, 192, 3)]
    public void APruneCostsThisManyLaunchesBeyondItsLayers(PruningMethod method, double budget, int launches)
    {
        CountingHook? hook = null;
        Run(TestData.Dev.Single(r => r.Id == 3), Options(method, budget), onDevice: true, (session, counters) => hook = new CountingHook(session, counters));
        var layers = hook!.Layers;
        // Attention is one launch at any length here: fused on short rows, tiled on the tensor cores on long ones.
        Assert.True(fx.GpuBackend.TiledAttention && fx.GpuBackend.Ops.TiledAttentionRuns(fx.Gpu.Decoder.Layout.HeadDim));
        const long Unprepared = 9;
        var costs = Enumerable.Range(0, layers.Count - 1)
            .Where(i => layers[i].Pruned && (method != PruningMethod.AutoPrune || layers[i].Layer >= 2))
            .Select(i => (layers[i].Layer, Cost: layers[i + 1].Before - layers[i].Before - Unprepared))
            .ToArray();
        output.WriteLine($"{method}: " + string.Join("; ", costs.Select(c => $"after layer {c.Layer}: {c.Cost}")));
        Assert.NotEmpty(costs);
        Assert.All(costs, c => Assert.Equal(launches, c.Cost));
    }
}
