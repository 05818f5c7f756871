using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Models.Llava;

using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>The fixture model on both backends: the CPU one and the GPU code path on ILGPU's CPU accelerator.</summary>
public sealed class TwoBackendFixture : IDisposable
{
    internal LlavaModel Cpu { get; }
    /// <summary>The CPU backend computing with the device's precision (<see cref="CpuPrecision.MatchDevice"/>).</summary>
    internal LlavaModel CpuMatched { get; }
    internal LlavaModel Gpu { get; }
    internal CudaBackend GpuBackend => (CudaBackend)Gpu.Backend;
    internal ImagePreprocessor Images { get; }

    public TwoBackendFixture()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        Cpu = new LlavaModel(store, config);
        CpuMatched = new LlavaModel(store, config, precision: CpuPrecision.MatchDevice);
        Gpu = LlavaModel.Create(store, config, CudaDevice.CreateForTests());
        Images = ImagePreprocessor.Load(TestData.ModelDir);
    }

    internal float[] Pixels(string image) => Images.PreprocessFile(TestData.Image(image), false);

    /// <summary>The image as pruning sees it, from the GPU path's vision features (LLaVA-1.5's square grid).</summary>
    internal VisualImage Image(VisionFeatures vision)
        => VisualImage.FromVision(vision, VisualTokenMap.Square(Gpu.Grid, cls: false), Gpu.Hidden, (f, n) => Gpu.Project(f, n));

    /// <summary>The request path's prompt on a backend: tower, projector and sequence (on a GPU all on the device; its buffers released).</summary>
    internal static SequenceState Sequence(ILlavaBackend model, int[] ids, float[] pixels)
    {
        var vision = model.VisionForward(pixels);
        try
        {
            using var rows = model.ProjectImage(vision);
            return model.BuildSequence(ids, [rows]);
        }
        finally { vision.Device?.Release(); }
    }

    /// <summary>Prefill logits and <paramref name="steps"/> greedy decode-step logits on one backend.</summary>
    internal static List<float[]> Run(ILlavaBackend model, int[] ids, float[] pixels, int steps, IPrefillHook? hook = null)
    {
        var state = Sequence(model, ids, pixels);
        using var gen = model.StartGeneration(steps);
        var all = new List<float[]> { gen.Prefill(state, hook, CancellationToken.None) };
        for (int i = 0; i < steps; i++) all.Add(gen.Step(CpuOps.ArgMax(all[^1])));
        return all;
    }

    public void Dispose()
    {
        Gpu.Dispose();
        Cpu.Dispose();
        CpuMatched.Dispose();
    }
}

/// <summary>
/// The CUDA backend's model code (fp16 weights and GEMM inputs, fp32 accumulation, kernels, cuBLAS argument mapping)
/// run on ILGPU's CPU accelerator with the host reference GEMM, against the CPU backend and transformers' logits.
/// What this cannot show: that the same code runs on a GPU (the cuBLAS and kernel launches there).
/// </summary>
public sealed class CudaModelTests(TwoBackendFixture fx, ITestOutputHelper output) : IClassFixture<TwoBackendFixture>
{
    private static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = MathF.Max(m, MathF.Abs(a[i] - b[i]));
        return m;
    }

    [Fact]
    public void VisionTowerAndProjectorMatchTheCpuBackend()
    {
        var pixels = fx.Pixels(TestData.Dev[0].Image);
        var c = fx.Cpu.VisionForward(pixels);
        var g = fx.Gpu.VisionForward(pixels);
        Assert.Equal(c.Tokens, g.Tokens);
        float scale = c.Features.Max(MathF.Abs);
        float dFeat = MaxAbsDiff(c.Features, g.Features);
        float dCls = MaxAbsDiff(c.ClsAttention!, g.ClsAttention!);
        float dKeys = MaxAbsDiff(c.PatchKeys!, g.PatchKeys!);
        var pc = fx.Cpu.Project(c.Features, c.Tokens);
        var pg = fx.Gpu.Project(c.Features, c.Tokens);
        float dProj = MaxAbsDiff(pc, pg);
        // The request path: the tower's output projected where it is, on the device.
        using (var onDevice = fx.Gpu.ProjectImage(g)) Assert.True(MaxAbsDiff(pc, onDevice.ToHost()) <= 2e-2f * Math.Max(1f, pc.Max(MathF.Abs)));
        g.Device!.Release();
        output.WriteLine($"max |features| {scale:F3}; max |Δ| features {dFeat:E2}, CLS attention {dCls:E2}, patch keys {dKeys:E2}, projector {dProj:E2}");
        Assert.True(dFeat <= 2e-2f * Math.Max(1f, scale), $"features differ by {dFeat}");
        Assert.True(dCls <= 1e-3f, $"CLS attention differs by {dCls}");
        Assert.True(dKeys <= 2e-2f * Math.Max(1f, c.PatchKeys!.Max(MathF.Abs)), $"patch keys differ by {dKeys}");
        Assert.True(dProj <= 2e-2f * Math.Max(1f, pc.Max(MathF.Abs)), $"projector output differs by {dProj}");
    }

    public static TheoryData<int> ReferenceIds => new(TestData.References.Select(r => r.Id));

    /// <summary>The bar for fp16: last-position logits within 2e-2 of the fp32 paths (CPU and transformers).</summary>
    [Theory]
    [MemberData(nameof(ReferenceIds))]
    public void PrefillAndDecodeLogitsWithin2e2OfCpuAndTransformers(int id)
    {
        var reference = TestData.References.Single(r => r.Id == id);
        var row = TestData.Dev.Single(r => r.Id == id);
        var pixels = fx.Pixels(row.Image);
        var cpu = TwoBackendFixture.Run(fx.Cpu, reference.InputIds, pixels, steps: 2);
        var gpu = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 2);
        float dHf = MaxAbsDiff(reference.LastLogits, gpu[0]);
        output.WriteLine($"row {id}: max |Δ| vs transformers {dHf:E2}; vs CPU prefill {MaxAbsDiff(cpu[0], gpu[0]):E2}, steps {MaxAbsDiff(cpu[1], gpu[1]):E2} {MaxAbsDiff(cpu[2], gpu[2]):E2}");
        Assert.True(dHf <= 2e-2f, $"row {id}: logits differ from transformers by {dHf}");
        for (int s = 0; s < cpu.Count; s++)
        {
            float d = MaxAbsDiff(cpu[s], gpu[s]);
            Assert.True(d <= 2e-2f, $"row {id}, step {s}: logits differ from the CPU backend by {d}");
            Assert.Equal(CpuOps.ArgMax(cpu[s]), CpuOps.ArgMax(gpu[s]));
        }
    }

    [Fact]
    public void ChunkedAttentionEqualsOneBlock()
    {
        var reference = TestData.References[0];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        var whole = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 1);
        long saved = fx.GpuBackend.AttentionBlockElements;
        try
        {
            fx.GpuBackend.AttentionBlockElements = 4L * 600 * 37; // 37 query rows per block: many uneven chunks
            var chunked = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 1);
            for (int s = 0; s < whole.Count; s++)
                Assert.True(MaxAbsDiff(whole[s], chunked[s]) <= 1e-5f, $"step {s}: chunked attention differs by {MaxAbsDiff(whole[s], chunked[s])}");
        }
        finally { fx.GpuBackend.AttentionBlockElements = saved; }
    }

    [Fact]
    public void DeviceMemoryIsReturnedWhenAGenerationEnds()
    {
        long before = ((CudaBackend)fx.Gpu.Backend).Memory.CurrentBytes;
        var reference = TestData.References[1];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 1);
        Assert.Equal(before, ((CudaBackend)fx.Gpu.Backend).Memory.CurrentBytes);
        Assert.True(((CudaBackend)fx.Gpu.Backend).Memory.PeakBytes > before, "the peak must include the request's caches and scratch");
    }

    /// <summary>
    /// On CUDA an allocation costs tens of microseconds and a free synchronises the device: a repeated request must be
    /// served from the pool. Size classes let a slightly different prompt length reuse the same buffers.
    /// </summary>
    [Fact]
    public void RepeatedRequestsAllocateNothingNew()
    {
        var reference = TestData.References[2];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 2);
        long allocations = ((CudaBackend)fx.Gpu.Backend).Memory.Allocations;
        var again = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 2);
        Assert.Equal(allocations, ((CudaBackend)fx.Gpu.Backend).Memory.Allocations);
        int[] longer = [.. reference.InputIds[..^1], reference.InputIds[^2], reference.InputIds[^1]]; // one more text token
        TwoBackendFixture.Run(fx.Gpu, longer, pixels, steps: 2);
        Assert.Equal(allocations, ((CudaBackend)fx.Gpu.Backend).Memory.Allocations);
        Assert.Equal(CpuOps.ArgMax(again[0]), CpuOps.ArgMax(TwoBackendFixture.Run(fx.Cpu, reference.InputIds, pixels, steps: 0)[0]));
    }

    [Theory]
    [InlineData(1, 256)]
    [InlineData(257, 512)]
    [InlineData(1 << 20, 1 << 20)]
    [InlineData((1 << 20) + 1, 2 << 20)]
    [InlineData((5 << 20) + 7, 6 << 20)]
    public void SizeClassesArePowersOfTwoThen2MiBSteps(long bytes, long expected) => Assert.Equal(expected, AutoPrune.Compute.SizeClasses.Bytes(bytes));

    /// <summary>Greedy steps return only the id, computed on the device: the same token as the host argmax of the logits.</summary>
    [Fact]
    public void GreedyStepsEqualTheArgmaxOfTheLogits()
    {
        var reference = TestData.References[3];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        var withLogits = TwoBackendFixture.Run(fx.Gpu, reference.InputIds, pixels, steps: 3);
        var state = TwoBackendFixture.Sequence(fx.Gpu, reference.InputIds, pixels);
        using var gen = fx.Gpu.StartGeneration(3);
        int next = CpuOps.ArgMax(gen.Prefill(state, null, CancellationToken.None));
        for (int s = 1; s <= 3; s++)
        {
            next = gen.StepGreedy(next);
            Assert.Equal(CpuOps.ArgMax(withLogits[s]), next);
        }
    }

    [Fact]
    public void AGenerationRejectsMisuse()
    {
        using var gen = fx.Gpu.StartGeneration(1);
        Assert.Throws<InvalidOperationException>(() => gen.Step(1)); // no prefill yet
    }
}

/// <summary>
/// CUDA graphs (ModelOptions.CudaGraphs) replay the static-shape decode step and the vision tower; on ILGPU's CPU
/// accelerator they are emulated (<see cref="CudaGraphModelTests"/>). The CPU backend refuses the option, saying why.
/// What a graph needs is also tested on the ungraphed path: every decode step after the first enqueues exactly the same
/// work (cache length and position come from device memory), and its tokens are the CPU backend's.
/// </summary>
public sealed class CudaGraphOptionTests(TwoBackendFixture fx) : IClassFixture<TwoBackendFixture>
{
    [Fact]
    public void CudaGraphsAreRefusedClearlyOnTheCpuBackend()
    {
        var e = Assert.Throws<NotSupportedException>(() => VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", CudaGraphs = true }));
        Assert.Contains("CUDA graphs", e.Message);
        Assert.Contains("need the GPU code path", e.Message);
        var b = Assert.Throws<NotSupportedException>(() => AutoPrune.Diagnostics.SpeedBenchmark.Run(new AutoPrune.Diagnostics.SpeedBenchmarkOptions
        {
            Architecture = "tiny-test", Device = "cpu", CudaGraphs = true,
        }));
        Assert.Contains("need the GPU code path", b.Message);
    }

    [Fact]
    public void EveryDecodeStepEnqueuesTheSameWorkAndFollowsTheCpu()
    {
        var reference = TestData.References[4];
        var pixels = fx.Pixels(TestData.Dev.Single(r => r.Id == reference.Id).Image);
        var cpu = TwoBackendFixture.Run(fx.Cpu, reference.InputIds, pixels, steps: 5);
        var state = TwoBackendFixture.Sequence(fx.Gpu, reference.InputIds, pixels);
        using var gen = fx.Gpu.StartGeneration(5);
        int next = CpuOps.ArgMax(gen.Prefill(state, null, CancellationToken.None));
        var perStep = new List<AutoPrune.Diagnostics.DeviceCounters>();
        for (int s = 1; s <= 5; s++)
        {
            var set = new AutoPrune.Diagnostics.DeviceCounterSet();
            using (AutoPrune.Diagnostics.DeviceCounterSet.BeginRequest(set)) next = gen.StepGreedy(next);
            perStep.Add(set.Snapshot());
            Assert.Equal(CpuOps.ArgMax(cpu[s]), next);
        }
        Assert.All(perStep.Skip(1), c => Assert.Equal(perStep[1], c));
        Assert.Equal(1, perStep[1].HostSyncs);
        Assert.Equal(0, perStep[1].H2DBytes);
    }
}
