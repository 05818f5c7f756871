using AutoPrune.Compute.Cpu;
using AutoPrune.Models.Text;
using AutoPrune.Models.Llava;
using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>Pruned tokens leave later layers' KV caches, and decoding continues each layer's position numbering.</summary>
public sealed class PrunedCacheTests(TinyModelFixture fx) : IClassFixture<TinyModelFixture>
{
    private static readonly ModelShape Shape = new(8, 4, 192, 512, 576, 24);

    [Theory]
    [InlineData("fastv", false)]
    [InlineData("adaptprune", false)]
    [InlineData("pdrop", true)]
    [InlineData("sparsevlm", true)]
    [InlineData("dart", false)]
    [InlineData("autoprune-paper", true)]
    [InlineData("autoprune-in-llm", false)]
    public void CachesShrinkAndPositionsFollowTheMethod(string method, bool renumbered)
    {
        var reference = TestData.References[1];
        var row = TestData.Dev.Single(r => r.Id == reference.Id);
        var ids = reference.InputIds;
        int prefix = Array.IndexOf(ids, 400), text = ids.Length - prefix - 576;
        var model = fx.Model;
        var vision = model.Vision.Forward(fx.Images.PreprocessFile(TestData.Image(row.Image), false));
        var pruning = new PruningSession(Shape, AutoPrune.Runtime.Tests.Pruning.ScheduleTests.Options(method) with { Budget = 192 }, prefix);
        pruning.SetImage(VisualImage.FromVision(vision, VisualTokenMap.Square(model.Grid, cls: false), model.Hidden, (f, n) => model.Project(f, n)), vision);
        var state = fx.Sequence(ids, model.Project(vision.Features, vision.Tokens));
        using var generation = (DecoderGeneration)model.StartGeneration(3);
        var session = (CpuDecoderSession)generation.Session;
        generation.Prefill(state, pruning, CancellationToken.None);
        var report = pruning.Finish(state, text);

        var counts = generation.CachedTokensPerLayer();
        for (int l = 0; l < counts.Length; l++)
        {
            Assert.Equal(prefix + report.VisualTokensPerLayer[l] + text, counts[l]);
            int expectedNext = renumbered ? counts[l] : ids.Length; // original positions keep the last token's id
            Assert.Equal(expectedNext, ((CpuKvLayer)session.Cache(l)).NextPosition);
        }
        Assert.True(counts[^1] < counts[0]);
        long fullBytes = 8L * (ids.Length + 3) * 2 * 192 * 4;
        Assert.True(session.CacheBytes < fullBytes, $"pruned cache {session.CacheBytes} B vs unpruned {fullBytes} B");

        // Decode two tokens: every layer grows by one and advances its own numbering.
        generation.Step(319);
        generation.Step(2);
        var after = generation.CachedTokensPerLayer();
        for (int l = 0; l < after.Length; l++)
        {
            Assert.Equal(counts[l] + 2, after[l]);
            Assert.Equal((renumbered ? counts[l] : ids.Length) + 2, ((CpuKvLayer)session.Cache(l)).NextPosition);
        }
    }

    /// <summary>
    /// A request's KV cache is unmanaged memory given back when its generation ends (a 7B prompt's 656 MB would otherwise
    /// wait on the large-object heap): afterwards the cache holds nothing and a step is refused, not run on freed memory.
    /// </summary>
    [Fact]
    public void AGenerationGivesItsCacheBackWhenDisposedAndRefusesStepsAfterwards()
    {
        var reference = TestData.References[0];
        var row = TestData.Dev.Single(r => r.Id == reference.Id);
        var model = fx.Model;
        var vision = model.Vision.Forward(fx.Images.PreprocessFile(TestData.Image(row.Image), false));
        var state = fx.Sequence(reference.InputIds, model.Project(vision.Features, vision.Tokens));
        var generation = (DecoderGeneration)model.StartGeneration(2);
        var session = (CpuDecoderSession)generation.Session;
        generation.Prefill(state, null, CancellationToken.None);
        Assert.Equal(8L * (reference.InputIds.Length + 2) * 2 * 192 * 4, session.CacheBytes);
        var logits = generation.Step(319);
        Assert.All(logits, l => Assert.True(float.IsFinite(l)));
        generation.Dispose();
        Assert.Equal(0, session.CacheBytes);
        Assert.Throws<ObjectDisposedException>(() => generation.Step(2));
        Assert.Throws<ObjectDisposedException>(() => generation.Prefill(state, null, CancellationToken.None));
        generation.Dispose(); // twice is harmless
    }

    /// <summary>Exhaustive on the fixture's shape: every integer budget from each method's minimum to 288, both accountings.</summary>
    [Fact]
    public void EveryBudgetFromTheMinimumTo288IsMetOnTheFixtureShape()
    {
        foreach (var method in new[] { "fastv", "adaptprune", "pdrop", "sparsevlm", "visionzip", "divprune", "dart", "autoprune", "autoprune-paper", "autoprune-in-llm" })
            foreach (var accounting in Enum.GetValues<BudgetAccounting>())
            {
                var options = AutoPrune.Runtime.Tests.Pruning.ScheduleTests.Options(method) with { Accounting = accounting };
                int min = (int)Math.Ceiling(Budget.MinimumFeasible(options.Method, accounting, Shape, options) - 1e-9);
                if (min > 1) Assert.Throws<InfeasibleBudgetException>(() => ScheduleSolver.Solve(Shape, options with { Budget = min - 1 }, 0.5));
                for (int b = min; b <= 288; b++)
                    foreach (double mi1 in new[] { 0.0, 0.3, 2.0 })
                    {
                        var s = ScheduleSolver.Solve(Shape, options with { Budget = b }, mi1);
                        Assert.True(s.Achieved <= b + 1e-9 && s.Achieved > b - 1, $"{method} {accounting} B={b}: achieved {s.Achieved}");
                    }
            }
    }
}
