using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Tests.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>llava_next configs (Llama and Mistral text models) and the hostile ones that must fail naming their field.</summary>
public class NextConfigTests
{
    private static JsonObject FixtureJson(string variant = "mistral")
        => JsonNode.Parse(File.ReadAllText(Path.Combine(NextFixture.Model(variant), "config.json")))!.AsObject();

    private static LlavaConfig Load(JsonObject json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());
        return LlavaConfig.Load(dir.Path);
    }

    private static string Fails(Action<JsonObject> edit, params string[] mustContain)
    {
        var j = FixtureJson();
        edit(j);
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), j.ToJsonString());
        var ex = Assert.Throws<ModelLoadException>(() => LlavaConfig.Load(dir.Path));
        Assert.Contains(dir.File("config.json"), ex.Message);
        foreach (var s in mustContain) Assert.Contains(s, ex.Message);
        return ex.Message;
    }

    [Fact]
    public void Fixture_configs_load_with_their_text_models()
    {
        var llama = LlavaConfig.Load(NextFixture.Model("llama"));
        Assert.True(llama.IsAnyRes);
        Assert.Equal("llama", llama.TextConfig.ModelType);
        Assert.Equal((4, 4, 10000.0), (llama.TextConfig.NumAttentionHeads, llama.TextConfig.NumKeyValueHeads, llama.TextConfig.RopeTheta));
        Assert.Null(llama.TextConfig.SlidingWindow);
        Assert.Equal([(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)], llama.GridPinpoints);

        var mistral = LlavaConfig.Load(NextFixture.Model("mistral"));
        Assert.True(mistral.TextConfig.IsMistral);
        Assert.Equal((4, 2, 2, 1e6), (mistral.TextConfig.NumAttentionHeads, mistral.TextConfig.NumKeyValueHeads, mistral.TextConfig.NumKeyValueGroups, mistral.TextConfig.RopeTheta));
        Assert.Equal(4096, mistral.TextConfig.SlidingWindow);
        Assert.False(LlavaConfig.Load(TestData.ModelDir).IsAnyRes);
    }

    [Fact]
    public void Rope_theta_in_either_field_and_mistral_defaults()
    {
        var j = FixtureJson();
        var t = j["text_config"]!.AsObject();
        t.Remove("rope_parameters");
        t["rope_theta"] = 1e6;
        Assert.Equal(1e6, Load(j).TextConfig.RopeTheta);

        // Fields a Mistral text_config leaves out take MistralConfig's defaults, not LlamaConfig's.
        var minimal = Load(JsonNode.Parse("""{"model_type": "llava_next", "text_config": {"model_type": "mistral"}}""")!.AsObject()).TextConfig;
        Assert.Equal((14336, 8, 131072, 4096), (minimal.IntermediateSize, minimal.NumKeyValueHeads, minimal.MaxPositionEmbeddings, minimal.SlidingWindow));
        var llama = Load(JsonNode.Parse("""{"model_type": "llava_next", "text_config": {"model_type": "llama", "sliding_window": 64}}""")!.AsObject());
        Assert.Equal((11008, 32, 2048), (llama.TextConfig.IntermediateSize, llama.TextConfig.NumKeyValueHeads, llama.TextConfig.MaxPositionEmbeddings));
        Assert.Null(llama.TextConfig.SlidingWindow); // Llama has no window: the key means nothing there
        Assert.Equal(LlavaConfig.DefaultImageGridPinpoints().Select(p => (p[0], p[1])), llama.GridPinpoints);
        Assert.Equal(24, llama.VisionConfig.GridSize);

        t["sliding_window"] = null;
        Assert.Null(Load(j).TextConfig.SlidingWindow);
    }

    [Fact]
    public void Pinpoints_that_are_not_multiples_of_the_tile_size_are_refused()
        => Fails(x => x["image_grid_pinpoints"] = JsonNode.Parse("[[336, 672], [336, 600]]"), "image_grid_pinpoints[1]", "[336, 600]", "336");

    [Fact]
    public void An_empty_pinpoint_list_is_refused()
        => Fails(x => x["image_grid_pinpoints"] = new JsonArray(), "image_grid_pinpoints", "non-empty");

    [Fact]
    public void Malformed_pinpoints_are_refused()
    {
        Fails(x => x["image_grid_pinpoints"] = JsonNode.Parse("[[336, 672, 336]]"), "image_grid_pinpoints[0]", "[height, width]");
        Fails(x => x["image_grid_pinpoints"] = JsonNode.Parse("[[0, 336]]"), "image_grid_pinpoints[0]");
        Fails(x => x["image_grid_pinpoints"] = JsonNode.Parse("[[336, 672.5]]"), "image_grid_pinpoints");
        Fails(x => x["image_grid_pinpoints"] = JsonNode.Parse("[[6720, 336]]"), "image_grid_pinpoints[0]", "at most 16 tiles");
    }

    [Fact]
    public void A_patch_size_that_does_not_divide_the_image_size_is_refused()
        => Fails(x => x["vision_config"]!["patch_size"] = 15, "vision_config.image_size", "patch_size");

    [Fact]
    public void The_full_feature_strategy_is_refused_for_llava_next()
        => Fails(x => x["vision_feature_select_strategy"] = "full", "vision_feature_select_strategy", "'full'", "llava_next");

    [Fact]
    public void A_bad_sliding_window_is_refused()
        => Fails(x => x["text_config"]!["sliding_window"] = 0, "text_config.sliding_window");

    [Fact]
    public void Processor_pinpoints_must_agree_with_the_model_and_tiles_must_be_the_tower_size()
    {
        using var dir = new TempDir();
        foreach (var f in Directory.GetFiles(NextFixture.Model("llama"))) File.Copy(f, dir.File(Path.GetFileName(f)));
        var pre = dir.File("preprocessor_config.json");
        string original = File.ReadAllText(pre);
        var config = LlavaConfig.Load(dir.Path);
        Assert.NotNull(AnyResImageProcessor.Load(dir.Path, config));

        var j = JsonNode.Parse(original)!.AsObject();
        j["image_grid_pinpoints"] = JsonNode.Parse("[[336, 672]]");
        File.WriteAllText(pre, j.ToJsonString());
        var ex = Assert.Throws<ModelLoadException>(() => AnyResImageProcessor.Load(dir.Path, config));
        Assert.Contains("image_grid_pinpoints", ex.Message);
        Assert.Equal(pre, ex.FilePath);

        j = JsonNode.Parse(original)!.AsObject();
        j["crop_size"] = JsonNode.Parse("""{"height": 224, "width": 224}""");
        File.WriteAllText(pre, j.ToJsonString());
        Assert.Contains("crop_size", Assert.Throws<ModelLoadException>(() => AnyResImageProcessor.Load(dir.Path, config)).Message);

        j = JsonNode.Parse(original)!.AsObject();
        j["resample"] = 1;
        File.WriteAllText(pre, j.ToJsonString());
        Assert.Contains("resample", Assert.Throws<ModelLoadException>(() => AnyResImageProcessor.Load(dir.Path, config)).Message);
    }
}
