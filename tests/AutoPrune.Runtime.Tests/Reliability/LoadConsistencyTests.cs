using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Loading.Text;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Reliability;

/// <summary>Issue 16, rows 11, 12 and 16 (config side): a checkpoint whose files disagree is refused at load, naming both sides.</summary>
public sealed class LoadConsistencyTests
{
    private static ModelLoadException LoadFails(ModelFolder m) => Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(m.Path, new ModelOptions { Device = "cpu" }));

    [Fact]
    public void Row11_a_tensor_only_in_a_shard_header_is_refused()
    {
        using var m = new ModelFolder().EditJson("model.safetensors.index.json", i => i["weight_map"]!.AsObject().Remove("language_model.model.norm.weight"));
        var e = LoadFails(m);
        Assert.Contains("holds tensor 'language_model.model.norm.weight', which index", e.Message);
        Assert.Equal("language_model.model.norm.weight", e.TensorName);
    }

    [Fact]
    public void Row11_a_tensor_in_two_shards_is_refused()
    {
        using var m = new ModelFolder();
        // A third shard holding a copy of a tensor that lives in shard 2, plus one tensor of its own listed by the index.
        using (var store = TensorNames.Open(m.Path))
        {
            var norm = store.ReadFloat32("language_model.model.norm.weight");
            SafeTensorWriter.Write(m.File("model-extra.safetensors"),
                [("language_model.model.norm.weight", DType.F32, [norm.Length], norm), ("extra.weight", DType.F32, [1], [0f])]);
        }
        m.EditJson("model.safetensors.index.json", i => i["weight_map"]!["extra.weight"] = "model-extra.safetensors");
        var e = LoadFails(m);
        Assert.Contains("Tensor 'language_model.model.norm.weight' is in two shards", e.Message);
        Assert.Contains("model-extra.safetensors", e.Message);
    }

    [Fact]
    public void Row12_a_vocab_size_smaller_than_the_tokenizer_fails_at_load_not_at_the_first_prompt()
    {
        using var m = new ModelFolder().EditJson("config.json", c => c["text_config"]!["vocab_size"] = 300);
        var e = LoadFails(m);
        Assert.Contains("text_config.vocab_size = 300, but the tokenizer can produce id 401", e.Message);
    }

    /// <summary>
    /// llava-hf's own mismatch, scaled down: the embedding has more rows (402) than the tokenizer has ids (401, as 32064
    /// vs 32002): it loads, answers, and an id past the tokenizer decodes to no text instead of failing mid-answer.
    /// </summary>
    [Fact]
    public async Task Row12_a_vocab_size_larger_than_the_tokenizer_loads_and_its_extra_ids_decode_to_nothing()
    {
        using var m = new ModelFolder()
            .EditJson("tokenizer_config.json", t => t["added_tokens_decoder"]!.AsObject().Remove("401"))
            .EditJson("added_tokens.json", t => t.AsObject().Remove("<pad>"));
        var tokenizer = LlavaTokenizer.Load(m.Path, 400, modelVocabSize: 402);
        Assert.Equal(401, tokenizer.VocabSize);
        Assert.Equal(tokenizer.Decode([tokenizer.EncodeText("circle", atStart: true)[0]]), tokenizer.Decode([.. tokenizer.EncodeText("circle", atStart: true)[..1], 401]));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.Decode([402]));
        using var model = VisionLanguageModel.Load(m.Path, new ModelOptions { Device = "cpu" });
        var row = TestData.Dev[0];
        var a = await model.AskAsync(VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with { Generation = new() { MaxNewTokens = 2 } });
        Assert.Equal(row.Top5Ids[0], a.TopLogits[0].Id);
    }

    [Theory]
    [InlineData("eos_token_id", -1, "text_config.eos_token_id = -1 is not supported; expected a value in [0, 401]")]
    [InlineData("eos_token_id", 402, "text_config.eos_token_id = 402 is not supported")]
    [InlineData("bos_token_id", 5000, "text_config.bos_token_id = 5000 is not supported")]
    public void Row16_special_token_ids_outside_the_vocabulary_fail_at_load(string field, int id, string expected)
    {
        using var m = new ModelFolder().EditJson("config.json", c => c["text_config"]![field] = id);
        Assert.Contains(expected, LoadFails(m).Message);
    }

    [Theory]
    [InlineData("eos_token")]
    [InlineData("bos_token")]
    public void Row16_the_image_token_as_eos_or_bos_fails_at_load(string field)
    {
        using var m = new ModelFolder().EditJson("tokenizer_config.json", t => t[field] = "<image>");
        Assert.Contains($"The tokenizer's {field} is the image token '<image>' (id 400)", LoadFails(m).Message);
    }
}
