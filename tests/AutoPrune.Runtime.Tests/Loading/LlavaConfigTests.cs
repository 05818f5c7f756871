using System.Text.Json.Nodes;
using AutoPrune.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

public class LlavaConfigTests
{
    private static JsonObject FixtureJson()
        => JsonNode.Parse(File.ReadAllText(Path.Combine(LoadingPaths.FixtureModel, "config.json")))!.AsObject();

    private static LlavaConfig LoadJson(string json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json);
        return LlavaConfig.Load(dir.Path);
    }

    private static ModelLoadException Fails(string json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json);
        var ex = Assert.Throws<ModelLoadException>(() => LlavaConfig.Load(dir.Path));
        Assert.Contains(dir.File("config.json"), ex.Message);
        Assert.Equal(dir.File("config.json"), ex.FilePath);
        return ex;
    }

    private static ModelLoadException FailsWith(Action<JsonObject> edit, params string[] mustContain)
    {
        var j = FixtureJson();
        edit(j);
        var ex = Fails(j.ToJsonString());
        foreach (var s in mustContain) Assert.Contains(s, ex.Message);
        return ex;
    }

    private static JsonObject Text(JsonObject j) => j["text_config"]!.AsObject();
    private static JsonObject Vision(JsonObject j) => j["vision_config"]!.AsObject();

    [Fact]
    public void Minimal_config_takes_huggingface_defaults()
    {
        var c = LoadJson("""{"model_type": "llava"}""");
        var t = c.TextConfig;
        Assert.Equal((4096, 11008, 32, 32, 32, 128, 32000, 2048), (t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.VocabSize, t.MaxPositionEmbeddings));
        Assert.Equal(1e-6, t.RmsNormEps);
        Assert.Equal(10000.0, t.RopeTheta);
        Assert.Equal(1, t.BosTokenId);
        Assert.Equal(new[] { 2 }, t.EosTokenIds);
        Assert.Null(t.PadTokenId);
        Assert.False(t.AttentionBias);
        Assert.False(t.MlpBias);
        Assert.Equal("silu", t.HiddenAct);
        // Without vision_config, HF LlavaConfig builds CLIP ViT-L/14-336.
        var v = c.VisionConfig;
        Assert.Equal((1024, 4096, 24, 16, 336, 14), (v.HiddenSize, v.IntermediateSize, v.NumHiddenLayers, v.NumAttentionHeads, v.ImageSize, v.PatchSize));
        Assert.Equal((32000, -2, "default", "gelu", true, false, 576), (c.ImageTokenIndex, c.VisionFeatureLayer, c.VisionFeatureSelectStrategy, c.ProjectorHiddenAct, c.MultimodalProjectorBias, c.TieWordEmbeddings, c.ImageSeqLength));
        Assert.Equal(23, c.ResolvedFeatureLayerIndex);
        Assert.Equal(24, c.GridSize);
        Assert.Equal(576, c.NumPatches);
    }

    [Fact]
    public void Empty_vision_config_takes_clip_defaults()
    {
        var c = LoadJson("""{"model_type": "llava", "vision_config": {}, "text_config": {}}""");
        var v = c.VisionConfig;
        Assert.Equal((768, 3072, 12, 12, 224, 32, 3, "quick_gelu"), (v.HiddenSize, v.IntermediateSize, v.NumHiddenLayers, v.NumAttentionHeads, v.ImageSize, v.PatchSize, v.NumChannels, v.HiddenAct));
        Assert.Equal(1e-5, v.LayerNormEps);
        Assert.Equal(64, v.HeadDim);
        Assert.Equal(7, c.GridSize);
        Assert.Equal(49, c.NumPatches);
        Assert.Equal(11, c.ResolvedFeatureLayerIndex);
        Assert.Equal(4096, c.TextConfig.HiddenSize);
    }

    [Fact]
    public void Real_llava_1_5_7b_hf_config_loads()
    {
        // config.json of llava-hf/llava-1.5-7b-hf: text_config omits most Llama fields.
        var c = LoadJson("""
        {
          "architectures": ["LlavaForConditionalGeneration"],
          "ignore_index": -100,
          "image_token_index": 32000,
          "model_type": "llava",
          "pad_token_id": 32001,
          "projector_hidden_act": "gelu",
          "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064
          },
          "tie_word_embeddings": false,
          "torch_dtype": "float16",
          "transformers_version": "4.36.0.dev0",
          "vision_config": {
            "hidden_size": 1024,
            "image_size": 336,
            "intermediate_size": 4096,
            "model_type": "clip_vision_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "projection_dim": 768,
            "vocab_size": 32000
          },
          "vision_feature_layer": -2,
          "vision_feature_select_strategy": "default",
          "vocab_size": 32064
        }
        """);
        var t = c.TextConfig;
        Assert.Equal((4096, 11008, 32, 32, 32, 128, 32064, 4096), (t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.VocabSize, t.MaxPositionEmbeddings));
        Assert.Equal(1e-5, t.RmsNormEps);
        Assert.Equal(10000.0, t.RopeTheta);
        Assert.Equal("quick_gelu", c.VisionConfig.HiddenAct);
        Assert.Equal(23, c.ResolvedFeatureLayerIndex);
        Assert.Equal(576, c.NumImageTokens);
    }

    [Fact]
    public void Rope_theta_top_level_form()
    {
        var j = FixtureJson();
        Text(j).Remove("rope_parameters");
        Text(j)["rope_theta"] = 500000.0;
        Assert.Equal(500000.0, LoadJson(j.ToJsonString()).TextConfig.RopeTheta);
    }

    [Fact]
    public void Rope_parameters_form()
    {
        var j = FixtureJson();
        Text(j)["rope_parameters"]!["rope_theta"] = 1e6;
        Assert.Equal(1e6, LoadJson(j.ToJsonString()).TextConfig.RopeTheta);
    }

    [Fact]
    public void Llava_level_rope_theta_is_tolerated_and_used_as_fallback()
    {
        var j = FixtureJson();
        Text(j).Remove("rope_parameters");
        j["rope_theta"] = 250000.0;
        Assert.Equal(250000.0, LoadJson(j.ToJsonString()).TextConfig.RopeTheta);

        var k = FixtureJson(); // text_config's own value wins
        k["rope_theta"] = 250000.0;
        Assert.Equal(10000.0, LoadJson(k.ToJsonString()).TextConfig.RopeTheta);
    }

    [Fact]
    public void Both_rope_forms_agreeing_is_fine_conflicting_is_not()
    {
        var j = FixtureJson();
        Text(j)["rope_theta"] = 10000.0;
        Assert.Equal(10000.0, LoadJson(j.ToJsonString()).TextConfig.RopeTheta);
        FailsWith(x => Text(x)["rope_theta"] = 500000.0, "text_config.rope_theta", "500000");
    }

    [Theory]
    [InlineData("""{"type": "linear", "factor": 2.0}""", "linear")]
    [InlineData("""{"rope_type": "llama3", "factor": 8.0}""", "llama3")]
    [InlineData("""{"rope_type": "dynamic", "factor": 2.0}""", "dynamic")]
    [InlineData("""{"factor": 2.0}""", "no type")]
    public void Unsupported_rope_scaling_is_rejected(string scaling, string named)
        => FailsWith(x => Text(x)["rope_scaling"] = JsonNode.Parse(scaling), "text_config.rope_scaling", named);

    [Fact]
    public void Default_rope_scaling_and_null_are_accepted()
    {
        var j = FixtureJson();
        Text(j)["rope_scaling"] = null;
        LoadJson(j.ToJsonString());
        Text(j)["rope_scaling"] = JsonNode.Parse("""{"rope_type": "default"}""");
        LoadJson(j.ToJsonString());
    }

    [Fact]
    public void Unsupported_rope_parameters_type_is_rejected()
        => FailsWith(x => Text(x)["rope_parameters"]!["rope_type"] = "yarn", "rope_parameters.rope_type", "yarn");

    [Fact]
    public void Grouped_query_attention_config()
    {
        var j = FixtureJson();
        Text(j)["num_key_value_heads"] = 2;
        var t = LoadJson(j.ToJsonString()).TextConfig;
        Assert.Equal(4, t.NumAttentionHeads);
        Assert.Equal(2, t.NumKeyValueHeads);
        Assert.Equal(2, t.NumKeyValueGroups);
        Assert.Equal(48, t.HeadDim);

        var g = LoadJson("""{"model_type":"llava","text_config":{"hidden_size":4096,"num_attention_heads":32,"num_key_value_heads":8}}""").TextConfig;
        Assert.Equal((8, 4, 128), (g.NumKeyValueHeads, g.NumKeyValueGroups, g.HeadDim));
    }

    [Theory]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(0)]
    public void Bad_kv_heads(int kv)
        => FailsWith(x => Text(x)["num_key_value_heads"] = kv, "text_config.num_key_value_heads", $"= {kv}");

    [Fact]
    public void Explicit_head_dim_wins_and_heads_must_divide_hidden_without_it()
    {
        var j = FixtureJson();
        Text(j)["head_dim"] = 64;
        Assert.Equal(64, LoadJson(j.ToJsonString()).TextConfig.HeadDim);

        FailsWith(x => { Text(x).Remove("head_dim"); Text(x)["num_attention_heads"] = 5; }, "text_config.num_attention_heads", "= 5", "192");
        FailsWith(x => Text(x)["head_dim"] = 47, "text_config.head_dim", "47");
    }

    [Fact]
    public void Eos_may_be_a_list()
    {
        var j = FixtureJson();
        Text(j)["eos_token_id"] = new JsonArray(2, 399);
        Assert.Equal(new[] { 2, 399 }, LoadJson(j.ToJsonString()).TextConfig.EosTokenIds);
    }

    [Fact]
    public void Full_strategy_keeps_cls()
    {
        var j = FixtureJson();
        j["vision_feature_select_strategy"] = "full";
        j["vision_feature_layer"] = 4;
        var c = LoadJson(j.ToJsonString());
        Assert.Equal(577, c.NumImageTokens);
        Assert.False(c.DropClsToken);
        Assert.Equal(4, c.ResolvedFeatureLayerIndex);
    }

    [Theory]
    [InlineData(-5, 0)]
    [InlineData(-1, 4)]
    [InlineData(0, 0)]
    [InlineData(4, 4)]
    public void Feature_layer_resolution(int layer, int index)
    {
        var j = FixtureJson();
        j["vision_feature_layer"] = layer;
        Assert.Equal(index, LoadJson(j.ToJsonString()).ResolvedFeatureLayerIndex);
    }

    // ------------------------------------------------------------------ failures

    [Fact]
    public void Missing_config_file_lists_folder()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("model.safetensors"), "");
        var ex = Assert.Throws<ModelLoadException>(() => LlavaConfig.Load(dir.Path));
        Assert.Contains("config.json", ex.Message);
        Assert.Contains("model.safetensors", ex.Message);
        Assert.Throws<ModelLoadException>(() => LlavaConfig.Load(dir.File("nowhere")));
    }

    [Fact]
    public void Malformed_json_names_file_and_line()
    {
        var ex = Fails("{\n  \"model_type\": \"llava\",\n  \"text_config\": {\n    \"hidden_size\": 192,,\n  }\n}");
        Assert.Contains("line 4", ex.Message);
        Fails("null");
        Fails("");
    }

    [Fact]
    public void Wrong_json_type_names_the_field()
    {
        var ex = FailsWith(x => Text(x)["hidden_size"] = "big", "text_config.hidden_size");
        Assert.IsType<System.Text.Json.JsonException>(ex.InnerException);
        FailsWith(x => x["vision_feature_layer"] = new JsonArray(-2, -5), "vision_feature_layer");
        FailsWith(x => Text(x)["vocab_size"] = 1e12, "text_config.vocab_size");
    }

    [Theory]
    [InlineData("llava_onevision")]
    [InlineData("llama")]
    public void Wrong_model_type_says_what_is_supported(string type)
        => FailsWith(x => x["model_type"] = type, $"'{type}'", "'llava'", "'llava_next'");

    [Fact]
    public void Missing_model_type()
        => FailsWith(x => x.Remove("model_type"), "model_type", "(missing)", "'llava'");

    [Theory]
    [InlineData("hidden_size", 100000)]
    [InlineData("hidden_size", 0)]
    [InlineData("num_hidden_layers", 0)]
    [InlineData("num_hidden_layers", 2000)]
    [InlineData("vocab_size", 0)]
    [InlineData("vocab_size", 20000000)]
    [InlineData("intermediate_size", -1)]
    [InlineData("num_attention_heads", 0)]
    [InlineData("max_position_embeddings", 0)]
    public void Absurd_text_sizes(string field, int value)
        => FailsWith(x => Text(x)[field] = value, $"text_config.{field}", $"= {value}");

    [Theory]
    [InlineData("hidden_size", 70000)]
    [InlineData("num_hidden_layers", 0)]
    [InlineData("num_hidden_layers", 1025)]
    [InlineData("num_attention_heads", 3)]
    [InlineData("image_size", 335)]
    [InlineData("patch_size", 0)]
    [InlineData("num_channels", 0)]
    public void Absurd_vision_sizes(string field, int value)
        => FailsWith(x => Vision(x)[field] = value, $"vision_config.{field}", $"= {value}");

    [Fact]
    public void Eps_must_be_positive()
    {
        FailsWith(x => Text(x)["rms_norm_eps"] = 0, "text_config.rms_norm_eps");
        FailsWith(x => Vision(x)["layer_norm_eps"] = -1e-5, "vision_config.layer_norm_eps");
    }

    [Theory]
    [InlineData(-6)]
    [InlineData(5)]
    public void Feature_layer_out_of_range(int layer)
        => FailsWith(x => x["vision_feature_layer"] = layer, "vision_feature_layer", $"= {layer}", "4 layers");

    [Fact]
    public void Unknown_strategies_and_activations()
    {
        FailsWith(x => x["vision_feature_select_strategy"] = "cls", "vision_feature_select_strategy", "'cls'", "'default', 'full'");
        FailsWith(x => x["projector_hidden_act"] = "tanh", "projector_hidden_act", "'tanh'");
        FailsWith(x => Vision(x)["hidden_act"] = "relu", "vision_config.hidden_act", "'relu'");
        FailsWith(x => Text(x)["hidden_act"] = "gelu", "text_config.hidden_act", "'gelu'", "'silu'");
        FailsWith(x => Text(x)["model_type"] = "qwen2", "text_config.model_type", "'qwen2'", "'mistral'");
        FailsWith(x => Vision(x)["model_type"] = "siglip_vision_model", "vision_config.model_type", "siglip");
    }

    [Fact]
    public void Negative_image_token()
        => FailsWith(x => x["image_token_index"] = -1, "image_token_index", "= -1");
}
