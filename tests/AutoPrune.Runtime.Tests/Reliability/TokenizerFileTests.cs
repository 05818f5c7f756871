using System.Text;
using AutoPrune.Loading;
using AutoPrune.Loading.Text;
using AutoPrune.Tests.TokenizerAndImages;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>
/// Issue 28, item 13: tokenizer files are refused early, with a message naming the file and what is wrong: an empty
/// tokenizer.model (was "Object reference not set..."), <c>{}</c> as tokenizer.json (was "The given key was not
/// present..."), and a 40 MB tokenizer.json with 2,000,000 vocabulary entries (took 1.1 GB and 6.7 s to refuse), which is
/// now refused by counting its entries against the model's vocab_size before any piece is built.
/// </summary>
public sealed class TokenizerFileTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A copy of the fixture whose tokenizer is only <paramref name="tokenizerJson"/> (no tokenizer.model).</summary>
    private static ModelFolder WithTokenizerJson(byte[] tokenizerJson)
    {
        var m = new ModelFolder();
        File.Delete(m.File("tokenizer.model"));
        File.WriteAllBytes(m.File("tokenizer.json"), tokenizerJson);
        return m;
    }

    private static ModelLoadException LoadFails(ModelFolder m) =>
        Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(m.Path, new ModelOptions { Device = "cpu" }).Dispose());

    [Fact]
    public void An_empty_tokenizer_model_is_named_as_empty()
    {
        using var m = new ModelFolder();
        File.WriteAllBytes(m.File("tokenizer.model"), []);
        var e = LoadFails(m);
        Assert.Contains("tokenizer.model is not a usable SentencePiece model: the file is empty (0 bytes)", e.Message);
        Assert.Contains(m.File("tokenizer.model"), e.Message + e.FilePath);
        Assert.DoesNotContain("Object reference", e.Message);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF, 0xFF, 0xFF }, "is not a protobuf field")]
    [InlineData(new byte[] { 0x0A, 0x40, 0x01 }, "field 1 at byte 2 is longer than the file")]
    [InlineData(new byte[] { 0x10, 0x01 }, "it has no pieces (protobuf field 1)")]
    public void A_tokenizer_model_that_is_not_a_ModelProto_says_what_is_wrong(byte[] bytes, string expected)
    {
        using var m = new ModelFolder();
        File.WriteAllBytes(m.File("tokenizer.model"), bytes);
        Assert.Contains(expected, LoadFails(m).Message);
    }

    [Theory]
    [InlineData("{}", "it has no \"model\" object")]
    [InlineData("[]", "expected a JSON object (a Hugging Face tokenizer.json), got array")]
    [InlineData("""{"model": {"type": "BPE"}}""", "\"model.vocab\" is missing or not an object of piece -> id")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": "zero"}}}""", "the id of piece 'a' in \"model.vocab\" is not an integer")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [7]}}""", "merge 0 in \"model.merges\" is neither")]
    public void A_tokenizer_json_without_its_fields_names_the_missing_field(string json, string expected)
    {
        using var m = WithTokenizerJson(Encoding.UTF8.GetBytes(json));
        var e = LoadFails(m);
        Assert.Contains("tokenizer.json cannot be used: " + expected, e.Message);
        Assert.DoesNotContain("given key was not present", e.Message);
    }

    [Fact]
    public void A_40_MB_tokenizer_json_with_two_million_entries_is_refused_before_it_is_built()
    {
        var sb = new StringBuilder("""{"model": {"type": "BPE", "byte_fallback": true, "vocab": {""", 41_000_000);
        for (int i = 0; i < 2_000_000; i++) sb.Append(i == 0 ? "" : ",").Append("\"piece").Append(i).Append("\":").Append(i);
        sb.Append("}, \"merges\": []}}");
        var bytes = Encoding.UTF8.GetBytes(sb.ToString());
        Assert.InRange(bytes.Length, 38_000_000, 45_000_000);
        using var m = WithTokenizerJson(bytes);
        bytes = null!;
        sb = null!;

        // The model says vocab_size = 402: entries past 2 x 402 + 1024 are refused before a piece is built.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (allocated, error) = SpecialFiles.Allocated(() => LlavaTokenizer.Load(m.Path, 400, modelVocabSize: 402));
        output.WriteLine($"refused in {clock.ElapsedMilliseconds} ms, {allocated:N0} bytes allocated");
        var e = Assert.IsType<ModelLoadException>(error);
        Assert.Contains("tokenizer.json cannot be used: \"model.vocab\" has more than 1,828 entries, far more than config.json's text_config.vocab_size = 402", e.Message);
        // The file's bytes (40 MB) and a forward-only count that stops at the limit: no document of two million
        // entries, no dictionary of their strings, no SentencePiece model (1.1 GB before).
        Assert.True(allocated < 60_000_000, $"allocated {allocated:N0} bytes");

        // Through the public load, which knows the model's vocab_size from config.json.
        Assert.Contains("has more than 1,828 entries", LoadFails(m).Message);
    }

    [Fact]
    public void Without_the_models_vocab_size_the_limit_is_a_million_pieces()
    {
        Assert.Equal(1 << 20, LlavaTokenizer.MaxVocabulary);
        var fixture = File.ReadAllBytes(Path.Combine(TestData.ModelDir, "tokenizer.model"));
        Assert.Null(LlavaTokenizer.CheckSentencePieceModel(fixture, LlavaTokenizer.MaxVocabulary));
        Assert.Equal(1_048_576, LlavaTokenizer.PieceLimit(null));
        Assert.Equal(2 * 32_064 + 1024, LlavaTokenizer.PieceLimit(32_064));
        Assert.Contains("more than 100 pieces, far more than config.json's text_config.vocab_size = 30", LlavaTokenizer.CheckSentencePieceModel(fixture, 100, 30));
        // The fixture as tokenizer.json still converts (the limits are far above a real vocabulary).
        var json = HfTokenizerJson.FromSentencePieceModel(Path.Combine(TestData.ModelDir, "tokenizer.model"), new() { ["<image>"] = 400, ["<pad>"] = 401 });
        Assert.NotEmpty(TokenizerJsonConverter.Convert(Encoding.UTF8.GetBytes(json)).SentencePieceModel);
    }
}
