using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>
/// Both LLaVA-NeXT fixture models (Llama/Vicuna and Mistral with GQA, rope_theta 1e6 and a sliding window) on every
/// fixture image, through the public API on the CPU backend, against Hugging Face transformers: the same prompt ids
/// and image-token count, last-position logits within 1e-3, the same 5 greedy tokens.
/// </summary>
public class NextParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> Variants => new() { "llama", "mistral" };

    [Theory]
    [MemberData(nameof(Variants))]
    public async Task Every_image_matches_transformers_on_the_cpu(string variant)
    {
        using var model = VisionLanguageModel.Load(NextFixture.Model(variant), new ModelOptions { Device = "cpu", DefaultPruning = null });
        Assert.Equal("llava_next", model.Info.ModelType);
        Assert.Equal(variant, model.Info.TextModelType);
        Assert.Equal(variant == "mistral" ? PromptFormat.Mistral : PromptFormat.Vicuna, model.Info.PromptFormat);
        Assert.Equal(2928, model.Info.VisualTokensPerImage); // the most any image can take: a 672x672 canvas
        double worst = 0;
        foreach (var r in NextFixture.References(variant))
        {
            var request = VisionRequest.Create(r.Question, ImageInput.FromFile(NextFixture.Image(r.Image))) with
            { Generation = new GenerationOptions { MaxNewTokens = 5 } };
            Assert.Equal(r.InputIds, model.PromptIds(request));
            var (answer, logits) = await model.AskWithLogitsAsync(request);
            Assert.Equal(r.ImageTokens, answer.VisualTokens);
            Assert.Equal(r.InputIds.Length, answer.PromptTokens);
            double max = 0;
            for (int i = 0; i < logits.Length; i++) max = Math.Max(max, Math.Abs(logits[i] - r.LastLogits[i]));
            output.WriteLine($"{variant} {r.Image}: {r.ImageTokens} image tokens, max |Δlogit| {max:E2}, greedy {string.Join(",", answer.TokenIds)}");
            worst = Math.Max(worst, max);
            Assert.True(max <= 1e-3, $"{r.Image}: max |Δlogit| {max}");
            Assert.Equal(r.Top5Ids, answer.TopLogits.Select(t => t.Id));
            Assert.Equal(r.GreedyIds, answer.TokenIds);
            // Unpruned: every layer processed every visual patch; the image_newline rows (one per row of the tile grid) are
            // image tokens of the prompt but not visual tokens.
            Assert.Equal(Pruning.PruningMethod.None, answer.Report.Method);
            var layout = new AutoPrune.Loading.Images.AnyResGrid(
                [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)], 336, 14).Plan(r.Width, r.Height);
            Assert.Equal(r.ImageTokens, layout.Patches + layout.FeatureRows);
            Assert.All(answer.Report.VisualTokensPerLayer, n => Assert.Equal(layout.Patches, n));
        }
        output.WriteLine($"{variant}: worst max |Δlogit| {worst:E2}");
    }
}
