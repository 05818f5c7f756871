using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>The fixture with <c>vision_feature_select_strategy: "full"</c> (its [CLS] token goes to the decoder too).</summary>
public sealed class FullStrategyFixture : IDisposable
{
    private readonly ModelFolder _folder = new ModelFolder().EditJson("config.json", c => c["vision_feature_select_strategy"] = "full");
    public FullStrategyFixture() => Model = VisionLanguageModel.Load(_folder.Path, new ModelOptions { Device = "cpu" });
    public VisionLanguageModel Model { get; }
    public string Folder => _folder.Path;
    public void Dispose() { Model.Dispose(); _folder.Dispose(); }
}

/// <summary>Issue 16, row 8: both documented feature strategies work with every pruning method.</summary>
public sealed class FeatureStrategyTests(FullStrategyFixture fx) : IClassFixture<FullStrategyFixture>
{
    private static readonly TestData.DevRow Row = TestData.Dev[3];

    private static VisionRequest Ask(PruningMethod method, double budget) =>
        VisionRequest.Create(Row.Question, ImageInput.FromFile(TestData.Image(Row.Image))) with
        {
            Generation = new() { MaxNewTokens = 2 },
            Pruning = new PruningOptions { Method = method, Budget = budget },
        };

    public static TheoryData<PruningMethod> Methods => new(Enum.GetValues<PruningMethod>());

    [Theory]
    [MemberData(nameof(Methods))]
    public async Task Every_method_answers_with_the_cls_token_among_the_visual_tokens(PruningMethod method)
    {
        Assert.Equal(577, fx.Model.Shape.VisualTokens);
        double budget = method == PruningMethod.None ? 577 : Math.Max(192, Math.Ceiling(Budget.MinimumFeasible(method, BudgetAccounting.Processed, fx.Model.Shape)));
        var a = await fx.Model.AskAsync(Ask(method, budget));
        Assert.Equal(Row.PromptLen + 1, a.PromptTokens); // 577 visual tokens instead of 576
        Assert.Equal(577, a.VisualTokens);
        Assert.NotEmpty(a.TokenIds);
        var r = a.Report;
        Assert.Equal(method, r.Method);
        // Kept indices are patches of the 24 x 24 grid; the [CLS] token is counted but has no patch.
        Assert.All(r.KeptIndicesPerLayer, kept => Assert.All(kept, k => Assert.InRange(k, 0, 575)));
        if (method == PruningMethod.None) Assert.All(r.VisualTokensPerLayer, n => Assert.Equal(577, n));
        else Assert.InRange(r.AvgVisualTokensProcessed, budget - 1, budget + 1);
        if (method is PruningMethod.AdaptPrune)
            Assert.Equal(r.VisualTokensPerLayer[^1], r.KeptIndicesPerLayer[^1].Length + 1); // the [CLS] token is kept
    }

    [Fact]
    public async Task The_gpu_code_path_agrees_with_the_cpu_on_the_full_strategy()
    {
        using var gpu = VisionLanguageModel.Load(fx.Folder, new ModelOptions { Device = "ilgpu-cpu" });
        foreach (var method in new[] { PruningMethod.AdaptPrune, PruningMethod.AutoPrune })
        {
            var cpu = await fx.Model.AskAsync(Ask(method, 192));
            var dev = await gpu.AskAsync(Ask(method, 192));
            Assert.Equal(cpu.TopLogits[0].Id, dev.TopLogits[0].Id);
            Assert.Equal(cpu.Report.VisualTokensPerLayer, dev.Report.VisualTokensPerLayer);
        }
    }
}
