using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>
/// The CPU backend's KV caches and prefill rows come from the model's <see cref="HostMemoryPool"/> and go back to it when
/// the request ends: a repeated request, or a shorter one, asks the system for nothing, and nothing stays out.
/// </summary>
public sealed class HostMemoryPoolTests
{
    private static (LlavaModel Model, AutoPrune.Loading.Images.ImagePreprocessor Images) Load()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        return (new LlavaModel(store, config), AutoPrune.Loading.Images.ImagePreprocessor.Load(TestData.ModelDir));
    }

    private static float[] Answer(LlavaModel model, int[] ids, float[] pixels, int steps)
    {
        var vision = model.VisionForward(pixels);
        using var rows = model.ProjectImage(vision);
        var state = model.BuildSequence(ids, [rows]);
        using var gen = model.StartGeneration(steps);
        var logits = gen.Prefill(state, null, CancellationToken.None);
        for (int s = 0; s < steps; s++) logits = gen.Step(CpuOps.ArgMax(logits));
        return logits;
    }

    [Fact]
    public void RepeatedAndShorterRequestsReuseTheBlocksAndGiveEverythingBack()
    {
        var (model, images) = Load();
        using (model)
        {
            var pool = ((AutoPrune.Compute.Cpu.CpuBackend)model.Backend).Memory;
            var reference = TestData.References[0];
            var pixels = images.PreprocessFile(TestData.Image(TestData.Dev.Single(r => r.Id == reference.Id).Image), false);
            var first = Answer(model, reference.InputIds, pixels, 2);
            long allocations = pool.Allocations;
            Assert.True(allocations >= 2 * model.Decoder.Layers, "every layer's keys and values come from the pool");
            Assert.Equal(0, pool.OutstandingBytes);
            Assert.InRange(pool.PooledBytes, 1, pool.PeakBytes);

            var again = Answer(model, reference.InputIds, pixels, 2);
            Assert.Equal(first, again); // reused memory changes nothing (in the tests it is NaN-filled when handed out)
            // Four fewer text tokens: smaller caches and rows, served from the blocks the longer prompt gave back.
            int[] shorter = [.. reference.InputIds[..^5], reference.InputIds[^1]];
            Assert.All(Answer(model, shorter, pixels, 1), l => Assert.True(float.IsFinite(l)));
            Assert.Equal(allocations, pool.Allocations);
            Assert.Equal(0, pool.OutstandingBytes);
        }
        Assert.Equal(0, ((AutoPrune.Compute.Cpu.CpuBackend)model.Backend).Memory.PooledBytes); // the model's disposal freed what the pool kept
    }

    [Fact]
    public void ThePoolKeepsNoMoreThanWasEverOutAtOnceAndFreesLateReturns()
    {
        var pool = new HostMemoryPool();
        var a = pool.Rent(1000);
        var b = pool.Rent(300_000);
        long peak = pool.PeakBytes;
        Assert.Equal(4096 + (2L << 20), peak); // 4,000 B in the 4 KiB class, 1.2 MB in the first 2 MiB step
        a.Dispose();
        b.Dispose();
        Assert.Equal(peak, pool.PooledBytes);
        // A small request takes the smallest kept block that holds it; a new block only when none does.
        using (var c = pool.Rent(10)) Assert.Equal(10, c.Length);
        using (var d = pool.Rent(2000)) Assert.Equal(2000, d.Span.Length);
        Assert.Equal(2, pool.Allocations);
        var e = pool.Rent(1 << 20); // 4 MiB: bigger than anything kept
        Assert.Equal(3, pool.Allocations);
        pool.Dispose();
        Assert.Equal(0, pool.PooledBytes);
        e.Dispose(); // given back after the pool was disposed: freed
        Assert.Equal(0, pool.OutstandingBytes);
        Assert.Throws<ObjectDisposedException>(() => e.Span.Length);
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(1));
    }
}
