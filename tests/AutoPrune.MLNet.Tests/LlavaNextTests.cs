using AutoPrune.MLNet;
using Microsoft.ML;

namespace AutoPrune.MLNet.Tests;

/// <summary>The ML.NET transform over a LLaVA-NeXT checkpoint folder, unchanged, with image paths and with loaded images.</summary>
public sealed class LlavaNextTests
{
    private static readonly string Next = Path.Combine(RepoPaths.Root, "tests", "data", "llava-next-tiny");

    [Fact]
    public async Task Paths_and_loaded_images_answer_as_the_library_does()
    {
        var ml = new MLContext(seed: 1);
        string dir = Path.Combine(Next, "llava-next-tiny-llama");
        var options = new VisualQuestionOptions
        {
            Generation = new GenerationOptions { MaxNewTokens = 3 },
            ModelOptions = new ModelOptions { Device = "cpu" },
            ImageFolder = Next,
        };
        var rows = new[] { new VqaInput { ImagePath = "images/06_50x60.png", Question = "How many circles are there?" } };
        var data = ml.Data.LoadFromEnumerable(rows);
        using var byPath = ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", dir, options).Fit(data);
        var answered = Assert.Single(ml.Data.CreateEnumerable<VqaOutput>(byPath.Transform(data), reuseRowObject: false));
        Assert.Equal("", answered.Error);

        using var model = VisionLanguageModel.Load(dir, new ModelOptions { Device = "cpu" });
        var direct = await model.AskAsync(VisionRequest.Create(rows[0].Question, ImageInput.FromFile(Path.Combine(Next, rows[0].ImagePath))) with { Generation = options.Generation });
        Assert.Equal(direct.Text.Trim(), answered.Answer);
        // No pruning configured: the one default of every surface, AutoPrune at 128 of the 50x60 image's 1,056 patches.
        Assert.Equal(AutoPrune.Pruning.PruningMethod.AutoPrune, direct.Report.Method);
        Assert.Equal((float)direct.Report.AvgVisualTokensProcessed, answered.KeptVisualTokens, 3);
        Assert.Equal(128f, answered.KeptVisualTokens, 0.5f);

        var loaded = ml.Transforms.LoadImages("Image", Next, "ImagePath").Fit(data).Transform(data);
        using var byImage = ml.Transforms.AnswerVisualQuestion("Answer", "Image", "Question", model, options).Fit(loaded);
        var fromImage = Assert.Single(ml.Data.CreateEnumerable<VqaOutput>(byImage.Transform(loaded), reuseRowObject: false));
        Assert.Equal("", fromImage.Error);
        Assert.Equal(answered.KeptVisualTokens, fromImage.KeptVisualTokens);
    }

    [Fact]
    public void A_pruning_method_runs_on_llava_next_rows()
    {
        var ml = new MLContext(seed: 1);
        string dir = Path.Combine(Next, "llava-next-tiny-llama");
        var options = new VisualQuestionOptions
        {
            Generation = new GenerationOptions { MaxNewTokens = 1 },
            ModelOptions = new ModelOptions { Device = "cpu" },
            ImageFolder = Next,
            Pruning = new AutoPrune.Pruning.PruningOptions { Method = AutoPrune.Pruning.PruningMethod.FastV, Budget = 0.5 },
        };
        var data = ml.Data.LoadFromEnumerable(new[] { new VqaInput { ImagePath = "images/06_50x60.png", Question = "How many circles are there?" } });
        using var transformer = ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", dir, options).Fit(data);
        var row = Assert.Single(ml.Data.CreateEnumerable<VqaOutput>(transformer.Transform(data), reuseRowObject: false));
        Assert.Equal("", row.Error);
        Assert.Equal(528f, row.KeptVisualTokens); // half of the image's 1,056 patches, averaged over the layers
        Assert.True(row.FlopsRatio < 0.5f);
    }
}
