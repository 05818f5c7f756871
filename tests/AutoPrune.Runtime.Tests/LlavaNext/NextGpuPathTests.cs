using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>
/// The GPU code path (ILGPU's CPU accelerator, <c>ilgpu-cpu</c>) runs LLaVA-NeXT's views through its own vision tower
/// and projector, the tokens assembled on the host as on the CPU backend: logits within 2e-2 of transformers (fp16
/// weights and GEMM inputs on that path), the same greedy tokens. ILGPU's CPU accelerator is slow (about 10 s an
/// image here), so two images run by default; <c>AUTOPRUNE_FULL_NEXT=1</c> runs all eight on both models.
/// </summary>
public class NextGpuPathTests(ITestOutputHelper output)
{
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        if (Environment.GetEnvironmentVariable("AUTOPRUNE_FULL_NEXT") == "1")
        {
            foreach (var variant in new[] { "llama", "mistral" })
                foreach (var r in NextFixture.References(variant)) data.Add(variant, r.Image);
        }
        else
        {
            data.Add("llama", "images/06_50x60.png");
            data.Add("mistral", "images/01_640x480.png");
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task The_gpu_code_path_runs_the_tiles(string variant, string image)
    {
        using var model = VisionLanguageModel.Load(NextFixture.Model(variant), new ModelOptions { Device = "ilgpu-cpu" });
        var r = NextFixture.References(variant).Single(x => x.Image == image);
        var request = VisionRequest.Create(r.Question, ImageInput.FromFile(NextFixture.Image(r.Image))) with
        { Generation = new GenerationOptions { MaxNewTokens = 5 } };
        var (answer, logits) = await model.AskWithLogitsAsync(request);
        Assert.Equal(r.ImageTokens, answer.VisualTokens);
        double max = 0;
        for (int i = 0; i < logits.Length; i++) max = Math.Max(max, Math.Abs(logits[i] - r.LastLogits[i]));
        output.WriteLine($"{variant} {image} on {answer.Device}: max |Δlogit| {max:E2}, {answer.Timings.TotalMs:F0} ms");
        Assert.True(max <= 2e-2, $"max |Δlogit| {max}");
        Assert.Equal(r.GreedyIds, answer.TokenIds);
    }
}
