using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Models.Llava;
using AutoPrune.Pruning;
using CsCheck;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>The pruning policies running inside the real engine on the fixture model.</summary>
public sealed class PrunedEngineTests(PublicModelFixture fx) : IClassFixture<PublicModelFixture>
{
    private static readonly PruningMethod[] Pruned =
        [PruningMethod.FastV, PruningMethod.PDrop, PruningMethod.SparseVLM, PruningMethod.VisionZip, PruningMethod.AdaptPrune, PruningMethod.AutoPrune,
         PruningMethod.DivPrune, PruningMethod.Dart];

    private static VisionRequest Request(TestData.DevRow row, PruningOptions pruning, int maxNew = 1) =>
        VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = maxNew },
            Pruning = pruning,
        };

    [Fact]
    public async Task NoneIsBitForBitTheUnprunedModel()
    {
        var reference = TestData.References[0];
        var row = TestData.Dev.Single(r => r.Id == reference.Id);
        var answer = await fx.Model.AskAsync(Request(row, new PruningOptions { Method = PruningMethod.None }));
        var unpruned = new TinyModelFixture().PrefillLogits(reference.InputIds, TestData.Image(row.Image));
        var top = CpuOps.ArgMax(unpruned);
        Assert.Equal(top, answer.TopLogits[0].Id);
        foreach (var t in answer.TopLogits) Assert.Equal(unpruned[t.Id], t.Logit); // exact equality
        Assert.Equal(1.0, answer.Report.FlopsRatio);
        Assert.All(answer.Report.VisualTokensPerLayer, c => Assert.Equal(576, c));
    }

    public static TheoryData<PruningMethod, BudgetAccounting> MethodsAndAccountings()
    {
        var d = new TheoryData<PruningMethod, BudgetAccounting>();
        foreach (var m in Pruned) foreach (var a in Enum.GetValues<BudgetAccounting>()) d.Add(m, a);
        return d;
    }

    /// <summary>
    /// Property: for random feasible budgets from the method's minimum up to 288 and random dev images,
    /// the engine's measured per-layer visual counts meet the budget (within one token, never above).
    /// </summary>
    [Theory]
    [MemberData(nameof(MethodsAndAccountings))]
    public void EveryFeasibleBudgetIsMetOnRealImages(PruningMethod method, BudgetAccounting accounting)
    {
        var shape = fx.Model.Shape;
        double min = Math.Ceiling(Budget.MinimumFeasible(method, accounting, shape));
        Gen.Select(Gen.Int[(int)min, 288], Gen.Int[0, TestData.Dev.Count - 1]).Sample((budget, rowIndex) =>
        {
            var row = TestData.Dev[rowIndex];
            var answer = fx.Model.AskAsync(Request(row, new PruningOptions { Method = method, Budget = budget, Accounting = accounting })).GetAwaiter().GetResult();
            var r = answer.Report;
            double achieved = accounting == BudgetAccounting.Processed ? r.AvgVisualTokensProcessed : r.AvgVisualTokensPublished;
            // What the layers really processed (recorded by the engine, checked against the schedule inside it).
            Assert.Equal(r.AvgVisualTokensProcessed, r.VisualTokensPerLayer.Average(), 9);
            return achieved <= budget + 1e-9 && achieved > budget - 1 - 1e-9 && r.FlopsRatio < 1;
        }, iter: 6, threads: 1);
    }

    [Theory]
    [InlineData(PruningMethod.FastV, BudgetAccounting.Processed)]
    [InlineData(PruningMethod.PDrop, BudgetAccounting.Processed)]
    [InlineData(PruningMethod.SparseVLM, BudgetAccounting.Processed)]
    [InlineData(PruningMethod.AdaptPrune, BudgetAccounting.Processed)]
    [InlineData(PruningMethod.Dart, BudgetAccounting.Processed)]
    public async Task BelowTheMinimumIsAClearErrorNamingIt(PruningMethod method, BudgetAccounting accounting)
    {
        double min = Budget.MinimumFeasible(method, accounting, fx.Model.Shape);
        int smallest = (int)Math.Ceiling(min - 1e-9);
        var row = TestData.Dev[0];
        var e = await Assert.ThrowsAsync<InfeasibleBudgetException>(() =>
            fx.Model.AskAsync(Request(row, new PruningOptions { Method = method, Budget = smallest - 1, Accounting = accounting })));
        Assert.Contains($"smallest feasible budget is {smallest}", e.Message);
        Assert.Equal(min, e.MinimumFeasibleBudget, 6);
        // The model still answers afterwards.
        var ok = await fx.Model.AskAsync(Request(row, new PruningOptions { Method = method, Budget = smallest, Accounting = accounting }));
        Assert.NotNull(ok.Report);
    }

    /// <summary>FastV keeps exactly the top-k of layer K-1's last-token attention, recomputed independently in double precision.</summary>
    [Fact]
    public async Task FastVKeepsTheTopKOfLastTokenAttention()
    {
        var fx2 = new TinyModelFixture();
        var model = fx2.Model;
        foreach (var id in new[] { 0, 2 })
        {
            var reference = TestData.References.Single(r => r.Id == id);
            var row = TestData.Dev.Single(r => r.Id == id);
            var answer = await fx.Model.AskAsync(Request(row, new PruningOptions { Method = PruningMethod.FastV, Budget = 128 }));
            int K = Math.Max(1, (int)Math.Round(2.0 * model.Decoder.Layers / 32, MidpointRounding.AwayFromZero));
            int keep = answer.Report.VisualTokensPerLayer[K];

            // Independent: run unpruned, capture layer K-1's Q and K, compute the last row's softmax in double.
            var capture = new CaptureHook(K - 1);
            var pixels = fx2.Images.PreprocessFile(TestData.Image(row.Image), false);
            var vision = model.Vision.Forward(pixels);
            var state = fx2.Sequence(reference.InputIds, model.Project(vision.Features, vision.Tokens));
            using (var generation = model.StartGeneration(1)) generation.Prefill(state, capture, CancellationToken.None);
            int n = reference.InputIds.Length, heads = model.Decoder.Layout.Heads, kvHeads = model.Decoder.Layout.KvHeads, hd = model.Decoder.Layout.HeadDim;
            int prefix = Array.IndexOf(reference.InputIds, 400);
            var score = new double[576];
            for (int h = 0; h < heads; h++)
            {
                var logits = new double[n];
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += (double)capture.Q![(n - 1) * heads * hd + h * hd + d] * capture.K![j * kvHeads * hd + (h / (heads / kvHeads)) * hd + d];
                    logits[j] = s / Math.Sqrt(hd);
                }
                double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
                for (int v = 0; v < 576; v++) score[v] += Math.Exp(logits[prefix + v] - max) / sum / heads;
            }
            var expected = Enumerable.Range(0, 576).OrderByDescending(v => score[v]).ThenBy(v => v).Take(keep).Order().ToArray();
            Assert.Equal(expected, answer.Report.KeptIndicesPerLayer[K]);
            Assert.Equal(Enumerable.Range(0, 576), answer.Report.KeptIndicesPerLayer[K - 1]);
        }
    }

    private sealed class CaptureHook(int layer) : IPrefillHook
    {
        public float[]? Q, K;
        public PruneAction? AfterLayer(LayerView view)
        {
            var cpu = (CpuLayerView)view;
            if (view.Layer == layer) { Q = (float[])cpu.Queries.Clone(); K = (float[])cpu.Keys().Clone(); }
            return null;
        }
    }

    [Fact]
    public async Task AutoPrunePaperPresetReportsItsSignalsAndFollowsItsSchedule()
    {
        var row = TestData.Dev[3];
        var answer = await fx.Model.AskAsync(Request(row, PruningOptions.AutoPrunePaper(128), maxNew: 4));
        var r = answer.Report;
        foreach (var key in new[] { "mi0", "mi1", "k", "s", "n0" }) Assert.True(r.Signals.ContainsKey(key), key);
        Assert.Equal(576, r.VisualTokensPerLayer[0]);
        Assert.Equal(320, r.VisualTokensPerLayer[1]); // N0 = 2.5 * 128
        Assert.True(r.VisualTokensPerLayer[^1] < r.VisualTokensPerLayer[1]);
        for (int l = 2; l < r.VisualTokensPerLayer.Length; l++) Assert.True(r.VisualTokensPerLayer[l] <= r.VisualTokensPerLayer[l - 1]);
        Assert.InRange(r.AvgVisualTokensProcessed, 127, 128);
        Assert.True(r.FlopsRatio < 0.3, $"FLOPs ratio {r.FlopsRatio}");
        // The paper's slope on this model: MI1 ~ 3.5-5.4 summed over 4 heads, so k = max(0.4 - 0.2 * MI1 * 8, 0) = 0.
        Assert.Equal(0, r.Signals["k"]);
    }

    [Fact]
    public async Task AutoPrunePaperPresetBelowItsMinimumIsAClearErrorNamingIt()
    {
        var paper = PruningOptions.AutoPrunePaper(0);
        double min = Budget.MinimumFeasible(PruningMethod.AutoPrune, BudgetAccounting.Processed, fx.Model.Shape, paper);
        int smallest = (int)Math.Ceiling(min - 1e-9);
        Assert.Equal(73, smallest); // (576 + 7) / 8 = 72.9: layer 0 runs on all 576 tokens
        var e = await Assert.ThrowsAsync<InfeasibleBudgetException>(() => fx.Model.AskAsync(Request(TestData.Dev[0], paper with { Budget = smallest - 1 })));
        Assert.Contains($"smallest feasible budget is {smallest}", e.Message);
    }

    /// <summary>
    /// The default AutoPrune: layer 0 runs on a selection made before the LLM, the counts fall along one curve, the
    /// slope comes from the model folder's calibration (the fixture ships one) and lies in [0, k0], the budget is met.
    /// </summary>
    [Fact]
    public async Task AutoPruneDefaultSelectsBeforeTheLlmAndAdaptsItsSlope()
    {
        Assert.NotNull(fx.Model.ModelCalibration);
        var slopes = new HashSet<double>();
        foreach (var row in TestData.Dev.Take(12))
        {
            var answer = await fx.Model.AskAsync(Request(row, new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 }));
            var r = answer.Report;
            Assert.True(r.VisualTokensPerLayer[0] < 576, "layer 0 runs on the tokens chosen before the LLM");
            for (int l = 1; l < r.VisualTokensPerLayer.Length; l++) Assert.True(r.VisualTokensPerLayer[l] <= r.VisualTokensPerLayer[l - 1]);
            Assert.InRange(r.AvgVisualTokensProcessed, 127, 128);
            double k = r.Signals["k"];
            Assert.InRange(k, 0, 0.2);
            // The calibrated slope, kept to a hundredth of k0 (so an fp32 CPU and an fp16 GPU solve the same schedule).
            double calibrated = fx.Model.ModelCalibration!.Slope(r.Signals["mi1_normalized"], 0.2);
            Assert.Equal(Math.Round(calibrated / 0.002) * 0.002, k, 9);
            Assert.Contains(r.Notes, n => n.Contains("calibrated on"));
            Assert.All(r.KeptIndicesPerLayer[0], v => Assert.InRange(v, 0, 575)); // original patch indices
            slopes.Add(Math.Round(k, 4));
        }
        Assert.True(slopes.Count >= 8, $"only {slopes.Count} distinct slopes over 12 questions");
    }
}
