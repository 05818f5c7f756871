using AutoPrune.Compute.Cpu;
using AutoPrune.Models.Qwen2VL;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Qwen;

/// <summary>The released Qwen2.5-VL sizes as presets, and the generated weights a speed measurement runs on.</summary>
public class Qwen2VLPresetTests(ITestOutputHelper output)
{
    /// <summary>Parameters of a config, counted from its shapes as the model loads them.</summary>
    private static long Parameters(Qwen2VLConfig c)
    {
        var v = c.Vision;
        var t = c.Text;
        long vh = v.HiddenSize, vi = v.IntermediateSize, m = vh * v.MergeUnit;
        long block = 2 * vh + (3 * vh * vh + 3 * vh) + (vh * vh + vh) + 2 * (vh * vi + vi) + (vi * vh + vh);
        long vision = vh * v.PatchValues + v.Depth * block + vh + (m * m + m) + (m * v.OutHiddenSize + v.OutHiddenSize);
        long h = t.HiddenSize, kv = t.KvDim, inter = t.IntermediateSize;
        long layer = 2 * h + (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter;
        long text = t.VocabSize * h * (t.TieWordEmbeddings ? 1 : 2) + t.NumHiddenLayers * layer + h;
        return vision + text;
    }

    [Fact]
    public void The_presets_have_the_released_sizes()
    {
        var b3 = Qwen2VLPresets.ByName("Qwen2.5-VL-3B");
        var b7 = Qwen2VLPresets.ByName(Qwen2VLPresets.Qwen25VL7BName);
        output.WriteLine($"3B: {Parameters(b3):N0} parameters; 7B: {Parameters(b7):N0}");
        Assert.Equal((36, 2048, 16, 2, 11008, 151936, true), (b3.Text.NumHiddenLayers, b3.Text.HiddenSize, b3.Text.NumAttentionHeads, b3.Text.NumKeyValueHeads, b3.Text.IntermediateSize, b3.Text.VocabSize, b3.Text.TieWordEmbeddings));
        Assert.Equal((28, 3584, 28, 4, 18944, 152064, false), (b7.Text.NumHiddenLayers, b7.Text.HiddenSize, b7.Text.NumAttentionHeads, b7.Text.NumKeyValueHeads, b7.Text.IntermediateSize, b7.Text.VocabSize, b7.Text.TieWordEmbeddings));
        foreach (var c in new[] { b3, b7 })
        {
            Assert.Equal([16, 24, 24], c.Text.MropeSection);
            Assert.Equal(128, c.Text.HeadDim);
            Assert.Equal((32, 1280, 16, 3420, 80), (c.Vision.Depth, c.Vision.HiddenSize, c.Vision.NumHeads, c.Vision.IntermediateSize, c.Vision.HeadDim));
            Assert.Equal([7, 15, 23, 31], c.Vision.FullAttBlockIndexes!);
            Assert.Equal(c.Text.HiddenSize, c.Vision.OutHiddenSize);
            Assert.Equal(151655, c.ImageTokenId);
        }
        // The model cards' counts: 3.75B and 8.29B parameters.
        Assert.InRange(Parameters(b3), 3.70e9, 3.80e9);
        Assert.InRange(Parameters(b7), 8.25e9, 8.35e9);
        Assert.Equal(2, Qwen2VLPresets.ByName(Qwen2VLPresets.Qwen25VL7BName, decoderLayers: 2).Text.NumHiddenLayers);
        Assert.Contains("qwen2.5-vl-3b, qwen2.5-vl-7b", Assert.Throws<ArgumentException>(() => Qwen2VLPresets.ByName("qwen2-vl-7b")).Message);
    }

    [Fact]
    public void Generated_weights_make_every_norm_one_and_tie_the_3b_head()
    {
        var b3 = Qwen2VLPresets.Qwen25VL3B();
        var source = new Qwen2VLRandomTensorSource(b3, seed: 1);
        Assert.All(source.ReadFloat32("model.visual.merger.ln_q.weight", 1280), x => Assert.Equal(1f, x));
        Assert.All(source.ReadFloat32("model.visual.blocks.0.norm1.weight", 1280), x => Assert.Equal(1f, x));
        Assert.All(source.ReadFloat32("model.visual.blocks.0.attn.qkv.bias", 3840), x => Assert.Equal(0f, x));
        var w = source.ReadFloat32("model.visual.blocks.0.attn.qkv.weight", 3840, 1280);
        Assert.InRange(w.Select(x => (double)x * x).Average(), 0.00035, 0.00045); // std 0.02
        Assert.False(source.Contains("lm_head.weight"));
        Assert.True(new Qwen2VLRandomTensorSource(Qwen2VLPresets.Qwen25VL7B(), 1).Contains("lm_head.weight"));
        // The same values every time, as both forwards of a measurement read them.
        Assert.Equal(w, new Qwen2VLRandomTensorSource(b3, seed: 1).ReadFloat32("model.visual.blocks.0.attn.qkv.weight", 3840, 1280));
    }

    [Fact]
    public void A_model_on_generated_weights_runs_and_its_synthetic_image_has_the_typical_size()
    {
        // The fixture's sizes with generated weights: the path a speed measurement takes, small.
        var config = Qwen2VLConfig.Load(QwenFixture.Model(QwenFixture.Current));
        using var model = new Qwen2VLModel(new CpuBackend(), new Qwen2VLRandomTensorSource(config, 3), config);
        var image = Qwen2VLPresets.SyntheticImage(config, 100, 60);
        Assert.Equal((1, 4, 8), image.Grid);
        int[] ids = [1, config.VisionStartTokenId, .. Enumerable.Repeat(config.ImageTokenId, image.MergedTokens), config.VisionEndTokenId, 2, 3];
        var r = QwenBackendFixture.Run(model, ids, [image], 3);
        Assert.All(r.Logits[0], x => Assert.True(float.IsFinite(x)));
        Assert.Equal(3, r.Greedy.Length);
        var typical = Qwen2VLPresets.SyntheticImage(Qwen2VLPresets.Qwen25VL7B(), Qwen2VLPresets.TypicalImageSize, Qwen2VLPresets.TypicalImageSize);
        Assert.Equal((1024, 256), (typical.Patches, typical.MergedTokens));
    }
}
