using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Loading;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>Qwen2.5-VL config.json in both styles, and the hostile ones that must fail naming the file and field.</summary>
public class Qwen2VLConfigTests
{
    private static JsonObject FixtureJson(string checkpoint = QwenFixture.Current)
        => JsonNode.Parse(File.ReadAllText(Path.Combine(QwenFixture.Model(checkpoint), "config.json")))!.AsObject();

    private static Qwen2VLConfig Load(JsonObject json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());
        return Qwen2VLConfig.Load(dir.Path);
    }

    private static string Fails(JsonObject json, params string[] mustContain)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());
        var ex = Assert.Throws<ModelLoadException>(() => Qwen2VLConfig.Load(dir.Path));
        Assert.Contains(dir.File("config.json"), ex.Message);
        foreach (var s in mustContain) Assert.Contains(s, ex.Message);
        return ex.Message;
    }

    private static string Fails(Action<JsonObject> edit, params string[] mustContain)
    {
        var j = FixtureJson();
        edit(j);
        return Fails(j, mustContain);
    }

    [Theory]
    [InlineData(QwenFixture.Current)]
    [InlineData(QwenFixture.Legacy)]
    public void Both_fixture_styles_resolve_to_the_same_model(string checkpoint)
    {
        var c = Qwen2VLConfig.Load(QwenFixture.Model(checkpoint));
        var t = c.Text;
        Assert.Equal((96, 192, 4, 4, 2, 24, 570), (t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.VocabSize));
        Assert.Equal([2, 5, 5], t.MropeSection);
        Assert.Equal(1e6, t.RopeTheta);
        Assert.Equal(1e-6, t.RmsNormEps);
        Assert.False(t.TieWordEmbeddings);
        Assert.Equal([564], t.EosTokenIds);
        var v = c.Vision;
        Assert.Equal((4, 64, 128, 4, 16, 3, 14, 2, 2, 112, 96), (v.Depth, v.HiddenSize, v.IntermediateSize, v.NumHeads, v.HeadDim, v.InChannels, v.PatchSize, v.SpatialMergeSize, v.TemporalPatchSize, v.WindowSize, v.OutHiddenSize));
        Assert.Equal(4, v.WindowMergedTokens);
        Assert.Equal(1176, v.PatchValues);
        Assert.Equal([1, 3], v.FullAttBlockIndexes!);
        Assert.True(v.IsFullAttention(1) && v.IsFullAttention(3) && !v.IsFullAttention(0) && !v.IsFullAttention(2));
        Assert.Equal((568, 569, 565, 566), (c.ImageTokenId, c.VideoTokenId, c.VisionStartTokenId, c.VisionEndTokenId));
    }

    [Fact]
    public void Nested_text_config_alone_is_enough()
    {
        var j = FixtureJson();
        foreach (var k in new[] { "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rope_scaling", "rope_theta", "vocab_size", "rms_norm_eps" })
            j.Remove(k);
        var c = Load(j);
        Assert.Equal((96, 2, 570), (c.Text.HiddenSize, c.Text.NumKeyValueHeads, c.Text.VocabSize));
        Assert.Equal([2, 5, 5], c.Text.MropeSection);
        Assert.Equal(1e6, c.Text.RopeTheta);
    }

    [Fact]
    public void Flat_rope_scaling_with_rope_type_spelling_is_read()
    {
        var j = FixtureJson(QwenFixture.Legacy);
        j["rope_scaling"] = JsonNode.Parse("""{"rope_type": "default", "mrope_section": [4, 4, 4]}""");
        Assert.Equal([4, 4, 4], Load(j).Text.MropeSection);
    }

    [Fact]
    public void Tie_word_embeddings_is_read_from_either_level()
    {
        var j = FixtureJson(QwenFixture.Legacy);
        j["tie_word_embeddings"] = true;
        Assert.True(Load(j).Text.TieWordEmbeddings);
    }

    [Theory]
    [InlineData("qwen2_vl", "Qwen2-VL")]
    [InlineData("qwen3_vl", "Qwen3-VL")]
    [InlineData("qwen3_vl_moe", "Qwen3-VL-MoE")]
    public void Other_qwen_families_are_named_as_not_supported_yet(string type, string name)
        => Fails(j => j["model_type"] = type, $"model_type '{type}' ({name}) is not supported yet", "qwen2_5_vl");

    [Fact]
    public void Another_model_type_is_refused()
        => Fails(j => j["model_type"] = "llava", "model_type is 'llava'", "qwen2_5_vl");

    [Fact]
    public void Text_config_and_flat_fields_must_agree()
        => Fails(j => j["text_config"]!["hidden_size"] = 128, "text_config.hidden_size = 128", "top-level hidden_size (96)");

    [Fact]
    public void Mrope_section_must_sum_to_half_the_head_dim()
        => Fails(j => j["text_config"]!["rope_parameters"]!["mrope_section"] = new JsonArray(2, 5, 6), "text_config.rope_parameters.mrope_section", "head_dim / 2 = 12");

    [Fact]
    public void Missing_mrope_section_is_named()
    {
        var j = FixtureJson(QwenFixture.Legacy);
        j["rope_scaling"] = JsonNode.Parse("""{"type": "mrope"}""");
        Fails(j, "rope_scaling.mrope_section", "three positive integers");
        j.Remove("rope_scaling");
        Fails(j, "rope_scaling", "mrope_section");
    }

    [Fact]
    public void Scaled_rope_is_refused()
    {
        var j = FixtureJson(QwenFixture.Legacy);
        j["rope_scaling"] = JsonNode.Parse("""{"type": "yarn", "mrope_section": [2, 5, 5], "factor": 4}""");
        Fails(j, "rope_scaling.type = 'yarn'");
    }

    [Fact]
    public void Rope_theta_in_two_places_must_agree()
        => Fails(j => j["text_config"]!["rope_parameters"]!["rope_theta"] = 10000.0, "rope_parameters.rope_theta", "rope_theta (1000000)");

    [Fact]
    public void In_chans_and_in_channels_must_agree()
        => Fails(j => j["vision_config"]!["in_chans"] = 4, "vision_config.in_channels = 3", "in_chans (4)");

    [Fact]
    public void Merger_output_must_be_the_text_width()
        => Fails(j => j["vision_config"]!["out_hidden_size"] = 64, "vision_config.out_hidden_size = 64", "hidden_size (96)");

    [Fact]
    public void Full_attention_blocks_must_exist()
        => Fails(j => j["vision_config"]!["fullatt_block_indexes"] = new JsonArray(1, 4), "vision_config.fullatt_block_indexes = 4", "depth is 4");

    [Fact]
    public void Window_must_be_whole_merged_tokens()
        => Fails(j => j["vision_config"]!["window_size"] = 100, "vision_config.window_size = 100", "multiple of patch_size * spatial_merge_size = 28");

    [Fact]
    public void Vision_head_dim_must_split_into_rows_and_columns()
        => Fails(j => { j["vision_config"]!["hidden_size"] = 72; j["vision_config"]!["num_heads"] = 4; }, "vision_config.num_heads", "divisible by 4");

    [Fact]
    public void Sliding_window_attention_is_refused()
        => Fails(j => { j["use_sliding_window"] = true; j["text_config"]!["use_sliding_window"] = true; }, "use_sliding_window = True");

    [Fact]
    public void Token_ids_must_be_in_the_vocabulary_and_distinct()
    {
        Fails(j => j["image_token_id"] = 570, "image_token_id = 570", "570-token vocabulary");
        Fails(j => j["video_token_id"] = 568, "video_token_id = 568", "different from image_token_id");
    }

    [Fact]
    public void Gqa_heads_must_divide()
        => Fails(j => { j["num_key_value_heads"] = 3; j["text_config"]!["num_key_value_heads"] = 3; }, "num_key_value_heads = 3", "divisor of num_attention_heads (4)");

    [Fact]
    public void Malformed_json_names_line_and_field()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), """{"model_type": "qwen2_5_vl", "hidden_size": "big"}""");
        var ex = Assert.Throws<ModelLoadException>(() => Qwen2VLConfig.Load(dir.Path));
        Assert.Contains("hidden_size", ex.Message);
        Assert.Contains(dir.File("config.json"), ex.Message);
    }

    [Fact]
    public void Defaults_are_the_7B_model()
    {
        var c = Qwen2VLConfig.Parse("""{"model_type": "qwen2_5_vl", "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "num_hidden_layers": 28}""", "config.json");
        Assert.Equal((3584, 128, 152064, 1e6), (c.Text.HiddenSize, c.Text.HeadDim, c.Text.VocabSize, c.Text.RopeTheta));
        Assert.Equal((32, 3584, 16, 112), (c.Vision.Depth, c.Vision.OutHiddenSize, c.Vision.NumHeads, c.Vision.WindowSize));
        Assert.Equal([7, 15, 23, 31], c.Vision.FullAttBlockIndexes!);
        Assert.Equal(151655, c.ImageTokenId);
    }
}
