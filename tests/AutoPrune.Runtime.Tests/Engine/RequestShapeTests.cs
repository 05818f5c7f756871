using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>
/// Requests of every shape through the public API: a question without an image, several images, and what a default
/// or an explicitly requested pruning method does with each.
/// </summary>
public sealed class RequestShapeTests(PublicModelFixture fx, LongContextModelFixture wide)
    : IClassFixture<PublicModelFixture>, IClassFixture<LongContextModelFixture>
{
    private const string Question = "How many objects are there?";
    private static readonly PruningOptions FastV = new() { Method = PruningMethod.FastV, Budget = 128 };
    private static ImageInput Image(int i) => ImageInput.FromFile(TestData.Image($"images/{i:0000}.png"));

    [Fact]
    public async Task A_question_without_an_image_answers_with_an_unpruned_report_of_zero_visual_tokens()
    {
        var answer = await fx.Model.AskAsync(VisionRequest.Create(Question) with { Generation = new GenerationOptions { MaxNewTokens = 4 } });
        var r = answer.Report;
        Assert.Equal(PruningMethod.None, r.Method);
        Assert.Equal(0, answer.VisualTokens);
        Assert.All(r.VisualTokensPerLayer, n => Assert.Equal(0, n));
        Assert.Equal(fx.Model.Info.DecoderLayers, r.VisualTokensPerLayer.Length);
        Assert.Equal(0, r.AvgVisualTokensProcessed);
        Assert.Equal(0, r.BudgetAsked);
        Assert.Equal(r.UnprunedPrefillFlops, r.PrefillFlops);
        Assert.Equal(1.0, r.FlopsRatio);
        Assert.Contains(r.Notes, n => n.Contains("no image", StringComparison.Ordinal));
        Assert.InRange(answer.PromptTokens, 5, 40); // the question and the conversation format, no visual tokens
        Assert.Equal(5, answer.TopLogits.Count);
        Assert.True(answer.TokenIds.Count > 0 || answer.FinishReason == AnswerFinishReason.Stop);

        // The same text with an image costs the image's 576 visual tokens more in every layer.
        var withImage = await fx.Model.AskAsync(VisionRequest.Create(Question, Image(0)) with { Generation = new GenerationOptions { MaxNewTokens = 1 } });
        Assert.InRange(withImage.PromptTokens - answer.PromptTokens, 576, 580); // plus the newline after the image
    }

    [Fact]
    public async Task A_question_without_an_image_streams_like_any_other()
    {
        var chunks = new List<AnswerChunk>();
        await foreach (var c in fx.Model.StreamAsync(VisionRequest.Create(Question) with { Generation = new GenerationOptions { MaxNewTokens = 4 } }))
            chunks.Add(c);
        var answer = Assert.Single(chunks, c => c.Answer is not null).Answer!;
        Assert.Same(answer, chunks[^1].Answer);
        Assert.Equal(answer.Text, string.Concat(chunks.Select(c => c.Text)));
    }

    [Fact]
    public async Task A_default_method_that_cannot_serve_a_text_only_request_falls_back_to_none_and_says_why()
    {
        var answer = await fx.Model.AskAsync(VisionRequest.Create(Question) with
        {
            DefaultPruning = FastV,
            Generation = new GenerationOptions { MaxNewTokens = 2 },
        });
        Assert.Equal(PruningMethod.None, answer.Report.Method);
        Assert.Contains(answer.Report.Notes, n => n.Contains("'fastv'", StringComparison.Ordinal) && n.Contains("no image", StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_model_default_method_falls_back_the_same_way_and_still_prunes_one_image()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", DefaultPruning = FastV });
        var text = await model.AskAsync(VisionRequest.Create(Question) with { Generation = new GenerationOptions { MaxNewTokens = 2 } });
        Assert.Equal(PruningMethod.None, text.Report.Method);
        Assert.Contains(text.Report.Notes, n => n.Contains("'fastv'", StringComparison.Ordinal));

        var pruned = await model.AskAsync(VisionRequest.Create(Question, Image(1)) with { Generation = new GenerationOptions { MaxNewTokens = 2 } });
        Assert.Equal(PruningMethod.FastV, pruned.Report.Method);
        Assert.InRange(pruned.Report.AvgVisualTokensProcessed, 127, 128);
        Assert.DoesNotContain(pruned.Report.Notes, n => n.Contains("default method", StringComparison.Ordinal));
    }

    [Fact]
    public async Task An_explicit_method_that_cannot_serve_a_text_only_request_is_an_error_naming_it_and_why()
    {
        var e = await Assert.ThrowsAsync<NotSupportedException>(() => fx.Model.AskAsync(VisionRequest.Create(Question) with { Pruning = FastV }));
        Assert.Contains("'fastv'", e.Message);
        Assert.Contains("no image", e.Message);
        // An explicit None is fine.
        var ok = await fx.Model.AskAsync(VisionRequest.Create(Question) with
        {
            Pruning = new PruningOptions { Method = PruningMethod.None },
            Generation = new GenerationOptions { MaxNewTokens = 1 },
        });
        Assert.Equal(PruningMethod.None, ok.Report.Method);
    }

    [Fact]
    public async Task Two_images_run_unpruned_and_the_report_counts_both()
    {
        var answer = await wide.Model.AskAsync(VisionRequest.Create(Question, Image(2), Image(6)) with { Generation = new GenerationOptions { MaxNewTokens = 3 } });
        var r = answer.Report;
        Assert.Equal(PruningMethod.None, r.Method);
        Assert.Equal(1152, answer.VisualTokens);
        Assert.All(r.VisualTokensPerLayer, n => Assert.Equal(1152, n));
        Assert.Equal(1152, r.BudgetAsked);
        Assert.Equal(1.0, r.FlopsRatio);
        Assert.All(r.KeptIndicesPerLayer, kept => Assert.Equal(Enumerable.Range(0, 1152), kept));
    }

    [Fact]
    public async Task Two_images_with_a_default_method_fall_back_and_an_explicit_one_is_an_error()
    {
        var request = VisionRequest.Create(Question, Image(2), Image(6)) with { Generation = new GenerationOptions { MaxNewTokens = 3 } };
        var fallback = await wide.Model.AskAsync(request with { DefaultPruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 } });
        Assert.Equal(PruningMethod.None, fallback.Report.Method);
        Assert.Contains(fallback.Report.Notes, n => n.Contains("'autoprune'", StringComparison.Ordinal) && n.Contains("has 2", StringComparison.Ordinal));
        var unpruned = await wide.Model.AskAsync(request);
        Assert.Equal(unpruned.Text, fallback.Text);
        Assert.Equal(unpruned.TopLogits, fallback.TopLogits);

        var e = await Assert.ThrowsAsync<NotSupportedException>(() => wide.Model.AskAsync(request with { Pruning = FastV }));
        Assert.Contains("'fastv'", e.Message);
        Assert.Contains("has 2", e.Message);
    }

    [Fact]
    public void An_infeasible_default_budget_fails_at_load_naming_the_smallest_feasible_one()
    {
        var options = new ModelOptions { Device = "cpu", DefaultPruning = new PruningOptions { Method = PruningMethod.SparseVLM, Budget = 96 } };
        var e = Assert.Throws<ArgumentException>(() => VisionLanguageModel.Load(TestData.ModelDir, options));
        Assert.Contains("DefaultPruning", e.Message);
        Assert.Contains("smallest feasible budget", e.Message);
    }

    [Fact]
    public void Validate_names_each_configuration_problem_without_loading_weights()
    {
        Assert.Empty(VisionLanguageModel.Validate(TestData.ModelDir, new ModelOptions { Device = "cpu", DefaultPruning = FastV }));
        var problems = VisionLanguageModel.Validate(TestData.ModelDir, new ModelOptions
        {
            Device = "cuda",
            DefaultPruning = new PruningOptions { Method = PruningMethod.SparseVLM, Budget = 96 },
        });
        Assert.Equal(2, problems.Count);
        Assert.Contains(problems, p => p.Contains("'cuda'", StringComparison.Ordinal) && p.Contains("cannot be used", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("SparseVLM", StringComparison.Ordinal) && p.Contains("smallest feasible budget", StringComparison.Ordinal));
        var missing = Path.Combine(Path.GetTempPath(), "autoprune-no-such-model");
        Assert.Contains(missing, Assert.Single(VisionLanguageModel.Validate(missing, new ModelOptions { Device = "cpu" })));
        Assert.Contains("tpu", Assert.Single(VisionLanguageModel.Validate(TestData.ModelDir, new ModelOptions { Device = "tpu" })));
    }
}
