using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using Xunit;
using Xunit.Abstractions;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>LLaVA-NeXT preprocessing against what Hugging Face's LlavaNextImageProcessor produced for the fixture images.</summary>
public class AnyResPreprocessingTests(ITestOutputHelper output)
{
    private static AnyResImageProcessor Processor(string variant = "llama")
        => AnyResImageProcessor.Load(NextFixture.Model(variant), LlavaConfig.Load(NextFixture.Model(variant)));

    [Fact]
    public void Pixel_values_of_the_640x480_image_match_elementwise()
    {
        var (shape, expected) = NextFixture.PixelValues640x480();
        var p = Processor().Preprocess(File.ReadAllBytes(NextFixture.Image("images/01_640x480.png")));
        Assert.Equal([5, 3, 336, 336], shape);
        Assert.Equal(expected.Length, p.Pixels.Length);
        int plane = 3 * 336 * 336;
        for (int v = 0; v < 5; v++)
        {
            double max = 0;
            for (int i = v * plane; i < (v + 1) * plane; i++) max = Math.Max(max, Math.Abs(expected[i] - p.Pixels[i]));
            output.WriteLine($"view {v}: max |Δ| {max:E2}");
        }
        double worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - p.Pixels[i]));
        Assert.True(worst <= 1e-4, $"max |Δpixel| {worst}");
    }

    public static TheoryData<string> Variants => new() { "llama", "mistral" };

    /// <summary>Mean, standard deviation and sum of |x| of every view of every image, and the image-token count.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void Every_views_statistics_and_the_token_count_match(string variant)
    {
        var processor = Processor(variant);
        double worst = 0;
        foreach (var r in NextFixture.References(variant))
        {
            var p = processor.Preprocess(File.ReadAllBytes(NextFixture.Image(r.Image)));
            Assert.Equal((r.Width, r.Height), (p.Layout.ImageWidth, p.Layout.ImageHeight));
            Assert.Equal([r.Height, r.Width], r.ImageSizes);
            Assert.Equal(r.PixelValuesShape[1], p.Layout.Views);
            Assert.Equal(r.ImageTokens, p.Layout.TokenCount);
            Assert.Equal(r.ImageTokens, processor.Plan(r.Width, r.Height).TokenCount);
            for (int v = 0; v < p.Layout.Views; v++)
            {
                var x = p.View(v);
                double sum = 0, abs = 0;
                foreach (float f in x) { sum += f; abs += Math.Abs(f); }
                double mean = sum / x.Length, ss = 0;
                foreach (float f in x) ss += (f - mean) * (f - mean);
                double std = Math.Sqrt(ss / (x.Length - 1)); // torch.std: unbiased
                var e = r.PixelValuesPatches[v];
                double d = Math.Max(Math.Max(Math.Abs(mean - e.Mean), Math.Abs(std - e.Std)), Math.Abs(abs - e.AbsSum) / e.AbsSum);
                worst = Math.Max(worst, d);
                Assert.True(d <= 1e-4, $"{r.Image} view {v}: mean {mean} vs {e.Mean}, std {std} vs {e.Std}, sum|x| {abs} vs {e.AbsSum}");
            }
        }
        output.WriteLine($"{variant}: largest difference in a view's mean or std (or relative in sum |x|): {worst:E2}");
    }
}
