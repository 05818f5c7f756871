using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Loading;
using CsCheck;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>The Qwen2 byte-level BPE against the fixture's ids, its decoders, and the files it must refuse.</summary>
public class Qwen2TokenizerTests
{
    private static readonly Qwen2Tokenizer Tok = QwenFixture.Tokenizer(QwenFixture.Current);

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void Prompt_text_encodes_to_the_reference_ids(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var tok = checkpoint == QwenFixture.Current ? Tok : QwenFixture.Tokenizer(checkpoint);
        Assert.Equal(c.InputIds, tok.Encode(c.PromptText));
    }

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void Template_and_image_pad_expansion_give_the_reference_ids(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var parts = c.Image is null ? new[] { Qwen2VLPart.OfText(c.Question) } : new[] { Qwen2VLPart.Image, Qwen2VLPart.OfText(c.Question) };
        string prompt = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(parts)]);
        var ids = Tok.EncodePrompt(prompt, c.Image is null ? [] : [c.NumImageTokens]);
        Assert.Equal(c.InputIds, ids);
        // The processor's count: grid_t * grid_h * grid_w / 4.
        if (c.GridThw is { } g) Assert.Equal(g[0] * g[1] * g[2] / 4, ids.Count(i => i == Tok.ImageTokenId));
    }

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void Greedy_ids_decode_to_the_reference_text(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        Assert.Equal(c.GreedyText, Tok.Decode(c.GreedyIds, skipSpecialTokens: false));
        // Streaming gives the same text, delta by delta.
        var dec = Tok.CreateStreamingDecoder(skipSpecialTokens: false);
        var sb = new StringBuilder();
        foreach (int id in c.GreedyIds) sb.Append(dec.Push(id));
        sb.Append(dec.Flush());
        Assert.Equal(c.GreedyText, sb.ToString());
    }

    [Fact]
    public void Special_tokens_and_ids_come_from_the_files()
    {
        Assert.Equal(570, Tok.VocabSize);
        Assert.Equal([564, 562], Tok.EosIds); // generation_config.json
        Assert.Equal(564, Tok.EosId);
        Assert.Equal(562, Tok.PadId);
        Assert.Equal((568, 569, 565, 566), (Tok.ImageTokenId, Tok.VideoTokenId, Tok.VisionStartId, Tok.VisionEndId));
        Assert.Equal(563, Tok.AddedTokenId("<|im_start|>"));
        Assert.Equal("<|image_pad|>".Length + 3, Tok.LongestTokenChars); // "<|vision_start|>" is the longest
        Assert.True(Tok.IsSpecial(568) && !Tok.IsSpecial(232));
        Assert.Equal("an", Tok.Decode([568, 290]));
    }

    [Fact]
    public void Without_generation_config_the_end_token_comes_from_config_json()
    {
        using var dir = new TempDir();
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "config.json" })
            File.Copy(Path.Combine(QwenFixture.Model(QwenFixture.Current), f), dir.File(f));
        Assert.Equal([564], Qwen2Tokenizer.Load(dir.Path, Qwen2VLConfig.Load(dir.Path)).EosIds);
        File.Delete(dir.File("config.json"));
        Assert.Equal([564], Qwen2Tokenizer.Load(dir.Path).EosIds); // tokenizer_config.json's eos_token
    }

    [Fact]
    public void A_character_split_over_tokens_is_streamed_whole()
    {
        // "é" = C3 A9 and "😀" = F0 9F 98 80: encoded text-wise they may merge, so push the byte tokens themselves.
        static int B(byte b) => ByteToken(b);
        var dec = Tok.CreateStreamingDecoder();
        Assert.Equal("", dec.Push(B(0xC3)));
        Assert.Equal("é", dec.Push(B(0xA9)));
        Assert.Equal("", dec.Push(B(0xF0)));
        Assert.Equal("", dec.Push(B(0x9F)));
        Assert.Equal("", dec.Push(B(0x98)));
        Assert.Equal("😀", dec.Push(B(0x80)));
        // A lone continuation byte can never complete: U+FFFD at once; an unfinished lead byte becomes one at the end.
        Assert.Equal("\uFFFD", dec.Push(B(0xA9)));
        Assert.Equal("", dec.Push(B(0xE2)));
        Assert.Equal("\uFFFD", dec.Flush());
    }

    /// <summary>The id of the single-byte token of <paramref name="b"/> (every byte has one).</summary>
    private static int ByteToken(byte b)
    {
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(QwenFixture.Model(QwenFixture.Current), "tokenizer.json")))!["model"]!["vocab"]!.AsObject();
        return vocab[ByteLevelAlphabet.CharOf(b).ToString()]!.GetValue<int>();
    }

    [Fact]
    public void Streaming_equals_decoding_all_ids()
    {
        Gen.Int[0, Tok.VocabSize - 1].Array[0, 40].Sample(ids =>
        {
            foreach (bool skip in new[] { true, false })
            {
                var dec = Tok.CreateStreamingDecoder(skip);
                var sb = new StringBuilder();
                foreach (int id in ids)
                {
                    string delta = dec.Push(id);
                    Assert.False(delta.Length > 0 && char.IsHighSurrogate(delta[^1]), "a delta ended in half a surrogate pair");
                    sb.Append(delta);
                }
                sb.Append(dec.Flush());
                Assert.Equal(Tok.Decode(ids, skip), sb.ToString());
            }
        }, iter: 300);
    }

    private static readonly Gen<string> Texts = Gen.OneOf(
        Gen.Char["a\u00e9e\u0301 \t\r\n'sStTrReEvVmMlLdD0123456789.,!?-_()\u00a0\u3000\u2028\u4e2d\u6587\u0301\u05d0\u00bd\u2167"],
        Gen.Char[(char)0x20, (char)0x2FF],
        Gen.Char['\u4E00', '\u4E20']).Array[0, 30].Select(a => new string(a));

    [Fact]
    public void Decoding_an_encoding_gives_the_NFC_text_back()
    {
        var all = Gen.OneOf(Texts, Gen.String[Gen.Char.AlphaNumeric, 0, 20].Select(s => s + "😀𝐀" + s));
        all.Sample(s => Assert.Equal(s.Normalize(NormalizationForm.FormC), Tok.Decode(Tok.Encode(s))), iter: 500);
    }

    [Fact]
    public void NFC_is_applied_to_text_but_not_to_added_tokens()
    {
        Assert.Equal(Tok.Encode("caf\u00e9?"), Tok.Encode("cafe\u0301?"));
        Assert.Equal([563, 564], Tok.Encode("<|im_start|><|im_end|>"));
        // Leftmost added token wins; the text around it is ordinary text.
        Assert.Equal(Tok.Encode("a").Concat([565]).Concat(Tok.Encode("b")).ToArray(), Tok.Encode("a<|vision_start|>b"));
        Assert.Equal(Tok.Encode("<|im_sta"), Tok.Encode("<|im_sta"));
    }

    private static readonly Regex Reference = new(Qwen2PreTokenizer.Pattern, RegexOptions.CultureInvariant);

    [Fact]
    public void Pre_tokenizer_equals_the_regex_on_basic_multilingual_plane_text()
    {
        // On text without surrogates .NET's regex and the code-point scanner must split identically (the regex then
        // works on whole characters too); this checks the scanner's reading of every alternative and its order.
        Texts.Sample(s =>
        {
            var expected = Reference.Matches(s).Select(m => (m.Index, m.Length)).ToList();
            Assert.Equal(expected, Qwen2PreTokenizer.Split(s));
        }, iter: 3000);
    }

    [Fact]
    public void Pre_tokenizer_keeps_letters_and_digits_outside_the_BMP_whole()
    {
        // U+1D400 MATHEMATICAL BOLD CAPITAL A is a letter (Lu), U+1D7CF a digit (Nd): Rust's regex keeps "x𝐀𝐁y" one word.
        string s = "x𝐀𝐁y 𝟏𝟐!";
        var pieces = Qwen2PreTokenizer.Split(s).Select(p => s.Substring(p.Offset, p.Length)).ToArray();
        Assert.Equal(["x𝐀𝐁y", " ", "𝟏", "𝟐", "!"], pieces);
        // (?i:'s) also matches "'ſ": U+017F LATIN SMALL LETTER LONG S case-folds to s (Unicode CaseFolding.txt), as in
        // Oniguruma's case-insensitive matching.
        string t = "'sſ'ſt x'ſ";
        Assert.Equal(["'s", "ſ", "'ſ", "t", " x", "'ſ"], Qwen2PreTokenizer.Split(t).Select(p => t.Substring(p.Offset, p.Length)).ToArray());
    }

    [Fact]
    public void Unpaired_surrogates_are_refused_with_their_position()
    {
        var e = Assert.Throws<ArgumentException>(() => Tok.Encode("ab\uD800c"));
        Assert.Contains("(U+D800) at index 2", e.Message);
    }

    [Fact]
    public void EncodePrompt_checks_images_and_refuses_video()
    {
        string one = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.Image, Qwen2VLPart.OfText("q"))]);
        Assert.Contains("1 <|image_pad|> placeholder(s) but 2 image(s)", Assert.Throws<ArgumentException>(() => Tok.EncodePrompt(one, [4, 4])).Message);
        Assert.Contains("more <|image_pad|> placeholders than the 0 image(s)", Assert.Throws<ArgumentException>(() => Tok.EncodePrompt(one, [])).Message);
        Assert.Contains("video inputs are not supported yet", Assert.Throws<ArgumentException>(() => Tok.EncodePrompt("<|vision_start|><|video_pad|><|vision_end|>", [])).Message);
        Assert.Throws<ArgumentException>(() => Tok.EncodePrompt(one, [0]));
        Assert.Equal(7, Tok.EncodePrompt(one, [7]).Count(i => i == 568));
    }

    [Fact]
    public void Ids_beyond_the_model_vocabulary_are_refused_and_padding_rows_decode_to_nothing()
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(QwenFixture.Model(QwenFixture.Current), "config.json")))!.AsObject();
        json["vocab_size"] = 600; json["text_config"]!["vocab_size"] = 600;
        using var dir = new TempDir();
        File.Copy(Path.Combine(QwenFixture.Model(QwenFixture.Current), "tokenizer.json"), dir.File("tokenizer.json"));
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());
        var tok = Qwen2Tokenizer.Load(dir.Path, Qwen2VLConfig.Load(dir.Path));
        Assert.Equal("", tok.Decode([599]));
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([600]));
        // A model vocabulary smaller than the tokenizer's ids is refused at load.
        json["vocab_size"] = 569; json["text_config"]!["vocab_size"] = 569;
        json["video_token_id"] = 1;
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());
        var e = Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path, Qwen2VLConfig.Load(dir.Path)));
        Assert.Contains("vocab_size = 569", e.Message);
        Assert.Contains("ids up to 569", e.Message);
    }

    // ------------------------------------------------------------------ hostile files

    private static JsonObject FixtureTokenizerJson()
        => JsonNode.Parse(File.ReadAllText(Path.Combine(QwenFixture.Model(QwenFixture.Current), "tokenizer.json")))!.AsObject();

    private static string Refused(string tokenizerJson, params string[] mustContain)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), tokenizerJson);
        var e = Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path));
        Assert.Contains(dir.File("tokenizer.json"), e.Message);
        foreach (var s in mustContain) Assert.Contains(s, e.Message);
        return e.Message;
    }

    private static string Refused(Action<JsonObject> edit, params string[] mustContain)
    {
        var j = FixtureTokenizerJson();
        edit(j);
        return Refused(j.ToJsonString(), mustContain);
    }

    [Fact]
    public void Empty_object_says_what_is_missing()
        => Refused("{}", "no 'model' object", "\"type\": \"BPE\"", "pre_tokenizer");

    [Theory]
    [InlineData("[]", "top level")]
    [InlineData("{\"model\": ", "not valid JSON")]
    [InlineData("{\"model\": {\"type\": \"WordPiece\"}}", "model.type is 'WordPiece'")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}}}", "model.vocab entry 'a' has id -1")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}}}", "gives id 0 to both 'a' and 'b'")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"\\ud800\"}}}", "cannot be read")]
    public void Malformed_files_are_refused_naming_the_problem(string json, string expected) => Refused(json, expected);

    [Fact]
    public void A_huge_vocabulary_is_refused_by_counting_before_anything_is_built()
    {
        // 2,000,000 entries, about 40 MB: under the 64 MiB file limit, over the entry limit.
        var sb = new StringBuilder(42_000_000);
        sb.Append("{\"model\": {\"type\": \"BPE\", \"vocab\": {");
        for (int i = 0; i < 2_000_000; i++) sb.Append(i == 0 ? "" : ",").Append("\"t").Append(i).Append("\":").Append(i);
        sb.Append("}, \"merges\": []}}");
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), sb.ToString());
        sb.Clear();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Contains("model.vocab has more than 1,000,000 entries", e.Message);
        // The file's bytes (~40 MB) are read once; no vocabulary table is built.
        Assert.True(allocated < 60_000_000, $"refusing the file allocated {allocated:N0} bytes");
    }

    [Fact]
    public void Another_pre_tokenizer_is_refused()
    {
        Refused(j => j["pre_tokenizer"] = JsonNode.Parse("""{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}"""), "pre_tokenizer is 'ByteLevel'", "Split");
        Refused(j => j["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!["Regex"] = "\\w+", "Split pattern is '\\w+'");
        Refused(j => j["pre_tokenizer"]!["pretokenizers"]![0]!["behavior"] = "Removed", "behavior is \"Removed\"");
    }

    [Fact]
    public void Other_pipeline_parts_are_refused()
    {
        Refused(j => j["normalizer"] = JsonNode.Parse("""{"type": "NFKC"}"""), "normalizer is 'NFKC'");
        Refused(j => j["decoder"] = JsonNode.Parse("""{"type": "Metaspace"}"""), "decoder is 'Metaspace'");
        Refused(j => j["model"]!["byte_fallback"] = true, "model.byte_fallback is true");
        Refused(j => j["model"]!["ignore_merges"] = true, "model.ignore_merges is true");
        Refused(j => j["model"]!["continuing_subword_prefix"] = "##", "model.continuing_subword_prefix is '##'");
    }

    [Fact]
    public void Tables_that_do_not_fit_together_are_refused()
    {
        Refused(j => j["model"]!["merges"]!.AsArray().Add("Ġ zz"), "'zz' is not in model.vocab");
        Refused(j => j["model"]!["merges"]!.AsArray().Add("a b c"), "two tokens separated by one space");
        Refused(j => j["model"]!["vocab"]!.AsObject().Remove("Ġ"), "no token for byte 0x20 ('Ġ')");
        Refused(j => j["model"]!["vocab"]!["a b"] = 9999, "has the character U+0020", "byte-level alphabet");
        Refused(j => j["added_tokens"]![0]!["id"] = 563, "added_tokens lists id 563 twice");
        Refused(j => j["added_tokens"]![0]!["id"] = 5, "has the id of vocabulary token");
        Refused(j => j["added_tokens"]![0]!["lstrip"] = true, "lstrip, rstrip or single_word");
        Refused(j => j["added_tokens"]![0]!["normalized"] = true, "normalized: true");
        Refused(j => j["added_tokens"]!.AsArray().RemoveAt(6), "no added token <|image_pad|>");
    }

    [Fact]
    public void Tokenizer_config_must_agree_with_tokenizer_json()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(QwenFixture.Model(QwenFixture.Current), "tokenizer.json"), dir.File("tokenizer.json"));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(QwenFixture.Model(QwenFixture.Current), "tokenizer_config.json")))!.AsObject();
        cfg["added_tokens_decoder"]!["568"]!["content"] = "<|video_pad|>";
        File.WriteAllText(dir.File("tokenizer_config.json"), cfg.ToJsonString());
        var e = Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path));
        Assert.Contains("gives '<|video_pad|>' id 568", e.Message);
        Assert.Contains("gives it id 569", e.Message);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "<|nope|>"}""");
        Assert.Contains("eos_token '<|nope|>' is not a token", Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path)).Message);
        File.WriteAllText(dir.File("tokenizer_config.json"), "{}");
        File.WriteAllText(dir.File("generation_config.json"), """{"eos_token_id": "564"}""");
        Assert.Contains("eos_token_id is \"564\"", Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path)).Message);
    }

    [Fact]
    public void Missing_tokenizer_json_is_named()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("vocab.json"), "{}");
        var e = Assert.Throws<ModelLoadException>(() => Qwen2Tokenizer.Load(dir.Path));
        Assert.Contains("'tokenizer.json' not found", e.Message);
        Assert.Contains("vocab.json and merges.txt alone are not read", e.Message);
    }
}

internal static partial class QwenFixture
{
    /// <summary>The tokenizer of a checkpoint with its config.</summary>
    public static Qwen2Tokenizer Tokenizer(string checkpoint)
        => Qwen2Tokenizer.Load(Model(checkpoint), Qwen2VLConfig.Load(Model(checkpoint)));
}
