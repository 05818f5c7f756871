using System.Text.Json;
using AutoPrune.Loading;
using Xunit;
using Xunit.Abstractions;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

public class LlavaPresetsTests(ITestOutputHelper output)
{
    private static string Json(LlavaConfig c) => JsonSerializer.Serialize(c);

    [Fact]
    public void Tiny_test_preset_equals_the_fixture_config()
    {
        var fixture = LlavaConfig.Load(TestData.ModelDir);
        var preset = LlavaPresets.TinyTest();
        Assert.Equal(Json(fixture), Json(preset));
        Assert.Equal((fixture.ResolvedFeatureLayerIndex, fixture.NumImageTokens, fixture.TextConfig.HeadDim, fixture.TextConfig.RopeTheta),
                     (preset.ResolvedFeatureLayerIndex, preset.NumImageTokens, preset.TextConfig.HeadDim, preset.TextConfig.RopeTheta));
    }

    [Fact]
    public void Llava15_7B_is_the_llava_hf_config()
    {
        var c = LlavaPresets.Llava15_7B();
        Assert.Equal("llava", c.ModelType);
        Assert.Equal((32000, -2, 23, "default", "gelu", true, false, 576, 576),
            (c.ImageTokenIndex, c.VisionFeatureLayer, c.ResolvedFeatureLayerIndex, c.VisionFeatureSelectStrategy, c.ProjectorHiddenAct,
             c.MultimodalProjectorBias, c.TieWordEmbeddings, c.ImageSeqLength, c.NumImageTokens));

        var v = c.VisionConfig;
        Assert.Equal(("clip_vision_model", 1024, 4096, 24, 16, 64, 3, 336, 14, 24, 577, "quick_gelu", 768),
            (v.ModelType, v.HiddenSize, v.IntermediateSize, v.NumHiddenLayers, v.NumAttentionHeads, v.HeadDim, v.NumChannels,
             v.ImageSize, v.PatchSize, v.GridSize, v.NumPositions, v.HiddenAct, v.ProjectionDim));
        Assert.Equal(1e-5, v.LayerNormEps);

        var t = c.TextConfig;
        Assert.Equal(("llama", 4096, 11008, 32, 32, 32, 128, 1, 32064, 4096, "silu"),
            (t.ModelType, t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim,
             t.NumKeyValueGroups, t.VocabSize, t.MaxPositionEmbeddings, t.HiddenAct));
        Assert.Equal(1e-5, t.RmsNormEps);
        Assert.Equal(10000.0, t.RopeTheta);
        Assert.Equal((1, 32001, false, false, false), (t.BosTokenId, t.PadTokenId, t.TieWordEmbeddings, t.AttentionBias, t.MlpBias));
        Assert.Equal(new[] { 2 }, t.EosTokenIds);
    }

    [Fact]
    public void Llava15_13B_differs_only_in_the_llama_sizes()
    {
        var c13 = LlavaPresets.Llava15_13B();
        var t = c13.TextConfig;
        Assert.Equal((5120, 40, 40, 40, 128, 13824, 32064), (t.HiddenSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.IntermediateSize, t.VocabSize));

        var c7 = LlavaPresets.Llava15_7B();
        c7.TextConfig.HiddenSize = 5120;
        c7.TextConfig.NumHiddenLayers = 40;
        c7.TextConfig.NumAttentionHeads = 40;
        c7.TextConfig.ExplicitNumKeyValueHeads = 40;
        c7.TextConfig.IntermediateSize = 13824;
        Assert.Equal(Json(c7), Json(c13));
    }

    [Theory]
    [InlineData("llava-1.5-7b", 4096)]
    [InlineData("LLaVA-1.5-7B", 4096)]
    [InlineData(" llava-1.5-13b ", 5120)]
    [InlineData("Tiny-Test", 192)]
    public void By_name_is_case_insensitive(string name, int hidden)
        => Assert.Equal(hidden, LlavaPresets.ByName(name).TextConfig.HiddenSize);

    [Theory]
    [InlineData("llava-1.5-70b")]
    [InlineData("")]
    [InlineData(null)]
    public void By_name_rejects_unknown_names_listing_the_known_ones(string? name)
    {
        var ex = Assert.Throws<ArgumentException>(() => LlavaPresets.ByName(name!));
        foreach (var known in LlavaPresets.Names) Assert.Contains(known, ex.Message);
        Assert.Contains($"'{name}'", ex.Message);
    }

    [Fact]
    public void Each_call_returns_a_new_config()
    {
        var a = LlavaPresets.ByName("llava-1.5-7b");
        a.TextConfig.NumHiddenLayers = 2;
        Assert.Equal(32, LlavaPresets.ByName("llava-1.5-7b").TextConfig.NumHiddenLayers);
    }

    [Fact]
    public void Checkpoint_manifest_matches_the_fixture_checkpoint()
    {
        using var store = TensorNames.Open(TestData.ModelDir);
        var inCheckpoint = store.Names
            .Select(n => $"{n} {TensorInfo.FormatShape(store.GetInfo(n).Shape)}").Order(StringComparer.Ordinal).ToList();
        var manifest = LlavaTensorManifest.Tensors(LlavaPresets.TinyTest(), checkpoint: true)
            .Select(t => $"{t.Name} {TensorInfo.FormatShape(t.Shape)}").Order(StringComparer.Ordinal).ToList();
        Assert.Equal(inCheckpoint, manifest);
    }

    [Fact]
    public void Llava15_7B_parameter_count_is_7_06_billion()
    {
        var c = LlavaPresets.Llava15_7B();
        long used = LlavaTensorManifest.ParameterCount(c);
        long checkpoint = LlavaTensorManifest.ParameterCount(c, checkpoint: true);
        output.WriteLine($"llava-1.5-7b: {used:N0} parameters read by the model, {checkpoint:N0} in a full checkpoint");
        Assert.InRange(used, 7.06e9 * 0.99, 7.06e9 * 1.01);
        // A full checkpoint adds the last CLIP layer (12,596,224) and post_layernorm (2,048), which LLaVA does not use.
        Assert.Equal(7_063_427_072L, checkpoint);
        Assert.Equal(12_596_224L + 2_048L, checkpoint - used);
        // 28 GB as fp32: why the 7B model is never built on the CPU in tests.
        Assert.True(used * 4 > 28e9);

        long used13 = LlavaTensorManifest.ParameterCount(LlavaPresets.Llava15_13B());
        output.WriteLine($"llava-1.5-13b: {used13:N0} parameters read by the model");
        Assert.InRange(used13, 13.35e9 * 0.99, 13.35e9 * 1.01);
    }

    [Fact]
    public void Tiny_next_test_preset_equals_the_llava_next_fixture_config()
    {
        var fixture = LlavaConfig.Load(Path.Combine(TestData.RepoRoot, "tests", "data", "llava-next-tiny", "llava-next-tiny-mistral"));
        Assert.Equal(Json(fixture), Json(LlavaPresets.TinyNextTest()));
        Assert.Equal(Json(fixture), Json(LlavaPresets.ByName("Tiny-Next-Test")));
    }

    [Fact]
    public void Llava16_presets_are_the_llava_hf_configs()
    {
        var vicuna = LlavaPresets.ByName("llava-1.6-vicuna-7b");
        var mistral = LlavaPresets.ByName("llava-1.6-mistral-7b");
        foreach (var c in new[] { vicuna, mistral })
        {
            Assert.Equal("llava_next", c.ModelType);
            Assert.Equal([(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)], c.GridPinpoints);
            Assert.Equal((32000, 23, 1024, 336, 14), (c.ImageTokenIndex, c.ResolvedFeatureLayerIndex, c.VisionConfig.HiddenSize, c.VisionConfig.ImageSize, c.VisionConfig.PatchSize));
        }
        var v = vicuna.TextConfig;
        Assert.Equal(("llama", 4096, 11008, 32, 32, 32, 32064, 4096, 10000.0), (v.ModelType, v.HiddenSize, v.IntermediateSize, v.NumHiddenLayers, v.NumAttentionHeads, v.NumKeyValueHeads, v.VocabSize, v.MaxPositionEmbeddings, v.RopeTheta));
        Assert.Null(v.SlidingWindow);
        var m = mistral.TextConfig;
        Assert.Equal(("mistral", 4096, 14336, 32, 32, 8, 32064, 32768, 1e6), (m.ModelType, m.HiddenSize, m.IntermediateSize, m.NumHiddenLayers, m.NumAttentionHeads, m.NumKeyValueHeads, m.VocabSize, m.MaxPositionEmbeddings, m.RopeTheta));
        Assert.Null(m.SlidingWindow); // Mistral-7B-Instruct v0.2 has none

        // LLaVA-1.6 Vicuna is LLaVA-1.5's parameters plus the image_newline vector; Mistral's MLP is larger, its K/V smaller.
        long v16 = LlavaTensorManifest.ParameterCount(vicuna), m16 = LlavaTensorManifest.ParameterCount(mistral);
        output.WriteLine($"llava-1.6-vicuna-7b: {v16:N0} parameters read, llava-1.6-mistral-7b: {m16:N0}");
        Assert.Equal(LlavaTensorManifest.ParameterCount(LlavaPresets.Llava15_7B()) + 4096, v16);
        Assert.InRange(m16, 7.56e9 * 0.995, 7.56e9 * 1.005);
    }
}
