using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>
/// The library's one default: a model loaded with default <see cref="ModelOptions"/> prunes a request that names no
/// pruning with <see cref="PruningOptions.Default"/> (AutoPrune at 128 visual tokens), the same default every other
/// surface uses.
/// </summary>
public sealed class DefaultPruningTests
{
    [Fact]
    public void The_default_is_autoprune_at_128_visual_tokens_and_ModelOptions_starts_with_it()
    {
        Assert.Equal(PruningMethod.AutoPrune, PruningOptions.Default.Method);
        Assert.Equal(128, PruningOptions.Default.Budget);
        Assert.Equal(128, PruningOptions.DefaultBudget);
        Assert.Same(PruningOptions.Default, new ModelOptions().DefaultPruning);
        // Everything but the method and budget is a new PruningOptions' (the constants every method starts from).
        Assert.Equal(new PruningOptions { Method = PruningMethod.AutoPrune }, PruningOptions.Default);
    }

    [Fact]
    public async Task A_model_loaded_with_default_options_prunes_with_autoprune_at_128_and_a_text_question_runs_unpruned()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu" });
        var image = ImageInput.FromFile(TestData.Image("images/0002.png"));
        var generation = new GenerationOptions { MaxNewTokens = 4 };
        var byDefault = await model.AskAsync(VisionRequest.Create("How many blue objects are there?", image) with { Generation = generation });
        Assert.Equal(PruningMethod.AutoPrune, byDefault.Report.Method);
        Assert.Equal(128, byDefault.Report.BudgetAsked);
        Assert.Equal(128, byDefault.Report.AvgVisualTokensProcessed, 0.5);
        Assert.DoesNotContain(byDefault.Report.Notes, n => n.Contains("unpruned", StringComparison.Ordinal));
        var asked = await model.AskAsync(VisionRequest.Create("How many blue objects are there?", image) with
        {
            Generation = generation,
            Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 },
        });
        Assert.Equal(asked.TokenIds, byDefault.TokenIds);
        Assert.Equal(asked.Report.VisualTokensPerLayer, byDefault.Report.VisualTokensPerLayer);

        var text = await model.AskAsync(VisionRequest.Create("What shape has three sides?") with { Generation = generation });
        Assert.Equal(PruningMethod.None, text.Report.Method);
        Assert.Contains(text.Report.Notes, n => n.Contains("'autoprune'", StringComparison.Ordinal) && n.Contains("no image", StringComparison.Ordinal));

        // Null is still "no pruning".
        using var unpruned = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", DefaultPruning = null });
        var none = await unpruned.AskAsync(VisionRequest.Create("How many blue objects are there?", image) with { Generation = generation });
        Assert.Equal(PruningMethod.None, none.Report.Method);
        Assert.Equal(576, none.Report.AvgVisualTokensProcessed);
    }
}
