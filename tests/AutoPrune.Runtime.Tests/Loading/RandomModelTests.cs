using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using Xunit;

namespace AutoPrune.Tests.Loading;

/// <summary>The tiny architecture with generated weights, end to end on the CPU (the 7B one is never built here: 28 GB).</summary>
public class RandomModelTests
{
    private static float[] RandomPixels(LlavaConfig c, int seed)
    {
        var rng = new Random(seed);
        var pixels = new float[c.VisionConfig.NumChannels * c.VisionConfig.ImageSize * c.VisionConfig.ImageSize];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rng.NextDouble() * 4 - 2); // roughly CLIP-normalized range
        return pixels;
    }

    /// <summary>BOS, a few text tokens, one image's placeholder run, a few more text tokens.</summary>
    private static int[] Prompt(LlavaModel model)
        => [1, 273, 364, 359, .. Enumerable.Repeat(model.Config.ImageTokenIndex, model.TokensPerImage), 13, 304, 278, 373, 275];

    private static (float[] Prefill, float[] Step) Run(LlavaModel model, float[] pixels)
    {
        var vision = model.Vision.Forward(pixels);
        Assert.Equal(model.TokensPerImage, vision.Tokens);
        Assert.All(vision.Features, v => Assert.True(float.IsFinite(v)));
        var projected = model.ProjectImage(vision);
        Assert.Equal(model.TokensPerImage * model.Decoder.Hidden, projected.ToHost().Length);

        var ids = Prompt(model);
        var state = model.BuildSequence(ids, [projected]);
        using var generation = model.StartGeneration(4);
        var logits = generation.Prefill(state, null, CancellationToken.None);
        Assert.Equal(ids.Length, generation.CachedTokensPerLayer()[^1]);

        int next = Array.IndexOf(logits, logits.Max());
        var step = generation.Step(next);
        return (logits, step);
    }

    private static void AssertUsableLogits(float[] logits, int vocab)
    {
        Assert.Equal(vocab, logits.Length);
        Assert.All(logits, v => Assert.True(float.IsFinite(v), $"logit {v}"));
        Assert.True(logits.Max() > logits.Min(), "all logits equal");
    }

    [Fact]
    public void Tiny_random_model_runs_vision_and_prefill_on_the_cpu()
    {
        var config = LlavaPresets.ByName("tiny-test");
        var source = new RandomTensorSource(config, 123);
        var model = new LlavaModel(source, config);
        Assert.Empty(LlavaModel.UnexpectedTensors(source, config));
        Assert.Equal(576, model.TokensPerImage);

        // The manifest lists exactly what the model read, in order.
        var manifest = LlavaTensorManifest.Tensors(config);
        Assert.Equal(manifest.Select(t => t.Name), source.Requests.Select(r => r.Name));
        Assert.Equal(manifest.Select(t => t.Shape), source.Requests.Select(r => r.Shape));
        Assert.Equal(LlavaTensorManifest.ParameterCount(config), source.ElementsGenerated);

        var (prefill, step) = Run(model, RandomPixels(config, 1));
        AssertUsableLogits(prefill, config.TextConfig.VocabSize);
        AssertUsableLogits(step, config.TextConfig.VocabSize);
    }

    [Fact]
    public void Same_seed_gives_the_same_model_and_another_seed_a_different_one()
    {
        var config = LlavaPresets.TinyTest();
        var pixels = RandomPixels(config, 2);
        var a = Run(new LlavaModel(new RandomTensorSource(config, 5), config), pixels).Prefill;
        var b = Run(new LlavaModel(new RandomTensorSource(config, 5), config), pixels).Prefill;
        var c = Run(new LlavaModel(new RandomTensorSource(config, 6), config), pixels).Prefill;
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Tied_embeddings_reuse_the_embedding_matrix_as_lm_head()
    {
        var config = LlavaPresets.TinyTest();
        config.TextConfig.TieWordEmbeddings = true;
        var source = new RandomTensorSource(config, 8);
        var model = new LlavaModel(source, config);
        Assert.DoesNotContain(source.Requests, r => r.Name.Contains("lm_head", StringComparison.Ordinal));
        Assert.Equal(LlavaTensorManifest.Tensors(config).Select(t => t.Name), source.Requests.Select(r => r.Name));
        var (prefill, _) = Run(model, RandomPixels(config, 3));
        AssertUsableLogits(prefill, config.TextConfig.VocabSize);
    }

    [Fact]
    public void Tiny_llava_next_manifest_lists_what_the_model_and_the_anyres_assembly_read()
    {
        var config = LlavaPresets.TinyNextTest();
        var source = new RandomTensorSource(config, 7);
        var model = new LlavaModel(source, config);
        _ = new AnyResAssembler(source, config.TextConfig.HiddenSize);
        Assert.Empty(LlavaModel.UnexpectedTensors(source, config));
        var manifest = LlavaTensorManifest.Tensors(config);
        Assert.Equal("image_newline", manifest[^1].Name);
        Assert.Equal(manifest.Select(t => t.Name), source.Requests.Select(r => r.Name));
        Assert.Equal(manifest.Select(t => t.Shape), source.Requests.Select(r => r.Shape));
    }
}
