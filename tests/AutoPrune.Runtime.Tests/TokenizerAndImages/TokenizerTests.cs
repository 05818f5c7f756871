using System.Text;
using System.Text.Json;
using AutoPrune.Loading;
using AutoPrune.Loading.Text;
using Xunit;

namespace AutoPrune.Tests.TokenizerAndImages;

public class TokenizerTests
{
    private const int ImageTokenId = 400;
    private const int ImageTokens = 576;
    private static readonly Lazy<LlavaTokenizer> s_tok = new(() => LlavaTokenizer.Load(RepoPaths.TinyModel, ImageTokenId));
    private static LlavaTokenizer Tok => s_tok.Value;

    internal static List<JsonElement> DevRows() =>
        File.ReadLines(Path.Combine(RepoPaths.DevSet, "dev.jsonl")).Where(l => l.Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    private static string Prompt(string question) =>
        LlavaTokenizer.FormatConversation(new[] { ("user", question) });

    [Fact]
    public void Properties_match_the_fixture()
    {
        Assert.Equal(1, Tok.BosId);
        Assert.Equal(2, Tok.EosId);
        Assert.Equal(0, Tok.UnknownId);
        Assert.Equal(400, Tok.ImageTokenId);
        Assert.Equal(401, Tok.PadId);
        Assert.Equal(402, Tok.VocabSize);
        Assert.Equal("<image>", Tok.ImageToken);
    }

    [Fact]
    public void Reproduces_all_reference_input_ids()
    {
        var questions = DevRows().ToDictionary(r => r.GetProperty("id").GetInt32(), r => r.GetProperty("question").GetString()!);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(RepoPaths.DevSet, "reference_logits.json")));
        int n = 0;
        foreach (var row in doc.RootElement.EnumerateArray())
        {
            int id = row.GetProperty("id").GetInt32();
            int[] expected = row.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            int[] actual = Tok.EncodePrompt(Prompt(questions[id]), ImageTokens);
            Assert.Equal(expected, actual);
            n++;
        }
        Assert.Equal(8, n);
    }

    [Fact]
    public void Prompt_lengths_match_all_dev_rows()
    {
        var rows = DevRows();
        Assert.Equal(208, rows.Count);
        foreach (var r in rows)
        {
            int[] ids = Tok.EncodePrompt(Prompt(r.GetProperty("question").GetString()!), ImageTokens);
            Assert.True(r.GetProperty("prompt_len").GetInt32() == ids.Length, $"row {r.GetProperty("id")}: expected {r.GetProperty("prompt_len")}, got {ids.Length}");
        }
    }

    [Fact]
    public void Dummy_prefix_only_before_the_first_special_token()
    {
        int[] ids = Tok.EncodePrompt("USER: <image>\nHi ASSISTANT:", 3);
        Assert.Equal(new[] { "<s>", "▁USER", ":", "▁" }, ids.Take(4).Select(Piece));
        Assert.Equal(new[] { 400, 400, 400 }, ids.Skip(4).Take(3));
        Assert.Equal("<0x0A>", Piece(ids[7]));
        // A prompt that starts with the placeholder: no dummy prefix anywhere.
        int[] ids2 = Tok.EncodePrompt("<image>\nHi", 2);
        Assert.Equal(new[] { 1, 400, 400 }, ids2.Take(3));
        Assert.Equal("<0x0A>", Piece(ids2[3]));
        // No image tokens requested: the placeholder disappears.
        Assert.DoesNotContain(400, Tok.EncodePrompt("USER: <image>\nHi", 0));
        // "</s>" in the text is the EOS token, as in HF.
        Assert.Contains(2, Tok.EncodePrompt("USER: a ASSISTANT: b</s>USER: c ASSISTANT:", 0));
    }

    private static string Piece(int id) => Tok.IdToPiece(id)!;

    [Theory]
    [InlineData("How many red circles are there?")]
    [InlineData("héllo wörld, 日本語 ✓ 12 345")]
    [InlineData("  two  spaces\tand\ttabs\n")]
    public void Decode_round_trips_and_skips_special_tokens(string text)
    {
        int[] ids = Tok.EncodePrompt(text, 0);
        Assert.Equal(1, ids[0]);
        Assert.Equal(text, Tok.Decode(ids));
        var withSpecials = new List<int> { 1, 400, 400 };
        withSpecials.AddRange(ids.Skip(1));
        withSpecials.Add(401);
        withSpecials.Add(2);
        Assert.Equal(text, Tok.Decode(withSpecials));
    }

    [Fact]
    public void Decode_answer_tokens()
    {
        // Generated answers: digits come out as ▁, 3; words as ▁yes.
        int[] three = Tok.EncodeText(" 3", atStart: false);
        Assert.Equal("3", Tok.Decode(three));
        Assert.Equal("yes", Tok.Decode(Tok.EncodeText("yes", atStart: true).Append(2).ToArray()));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tok.Decode(new[] { 402 }));
    }

    [Theory]
    [InlineData("The answer is 3.")]
    [InlineData("日本語 and émojis 🎉 too")]
    [InlineData("a\nb\n\nc")]
    public void Streaming_decoder_matches_full_decode(string text)
    {
        int[] ids = Tok.EncodeText(text, atStart: true);
        var dec = Tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        dec.Push(Tok.BosId);
        foreach (int id in ids)
        {
            string delta = dec.Push(id);
            Assert.DoesNotContain('\uFFFD', delta);
            sb.Append(delta);
        }
        Assert.Equal("", dec.Push(Tok.EosId));
        sb.Append(dec.Flush());
        Assert.Equal(text, sb.ToString());
        Assert.Equal(Tok.Decode(ids), sb.ToString());
    }

    [Fact]
    public void Streaming_decoder_holds_back_incomplete_utf8()
    {
        // "日" is three byte-fallback tokens in this tiny vocabulary.
        int[] ids = Tok.EncodeText("日", atStart: false);
        Assert.Equal(3, ids.Length);
        var dec = Tok.CreateStreamingDecoder();
        Assert.Equal("", dec.Push(ids[0]));
        Assert.Equal("", dec.Push(ids[1]));
        Assert.Equal("日", dec.Push(ids[2]));
    }

    [Fact]
    public void Conversation_template()
    {
        Assert.Equal("USER: <image>\nWhat is it? ASSISTANT:", LlavaTokenizer.FormatConversation(new[] { ("user", "What is it?") }));
        Assert.Equal("USER: <image>\nWhat is it? ASSISTANT:", LlavaTokenizer.FormatConversation(new[] { ("user", "<image>\nWhat is it?") }));
        Assert.Equal("USER: What is it? ASSISTANT:", LlavaTokenizer.FormatConversation(new[] { ("user", "What is it?") }, imageCount: 0));
        Assert.Equal("Be brief. USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT:",
            LlavaTokenizer.FormatConversation(new[] { ("user", "q1"), ("assistant", "a1"), ("user", "q2") }, systemText: "Be brief."));
        Assert.Equal("Sys USER: <image>\nq1 ASSISTANT: a1</s>",
            LlavaTokenizer.FormatConversation(new[] { ("system", "Sys"), ("user", "q1"), ("assistant", "a1") }));
        Assert.Throws<ArgumentException>(() => LlavaTokenizer.FormatConversation(new[] { ("tool", "x") }));
    }

    [Fact]
    public void Missing_or_corrupt_tokenizer_throws_ModelLoadException()
    {
        string dir = RepoPaths.NewTempDir();
        try
        {
            var ex = Assert.Throws<ModelLoadException>(() => LlavaTokenizer.Load(dir, ImageTokenId));
            Assert.Contains("tokenizer.model", ex.Message);
            File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), Encoding.ASCII.GetBytes("this is not a protobuf \xff\xff\xff"));
            ex = Assert.Throws<ModelLoadException>(() => LlavaTokenizer.Load(dir, ImageTokenId));
            Assert.EndsWith("tokenizer.model", ex.FilePath);
            File.Delete(Path.Combine(dir, "tokenizer.model"));
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{ not json");
            ex = Assert.Throws<ModelLoadException>(() => LlavaTokenizer.Load(dir, ImageTokenId));
            Assert.EndsWith("tokenizer.json", ex.FilePath);
            Assert.Throws<ModelLoadException>(() => LlavaTokenizer.Load(Path.Combine(dir, "nope"), ImageTokenId));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Tokenizer_json_gives_the_same_ids_as_tokenizer_model()
    {
        string dir = RepoPaths.NewTempDir();
        try
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), HfTokenizerJson.FromSentencePieceModel(Path.Combine(RepoPaths.TinyModel, "tokenizer.model"), new() { ["<image>"] = 400, ["<pad>"] = 401 }));
            var fromJson = LlavaTokenizer.Load(dir, ImageTokenId);
            Assert.Equal(402, fromJson.VocabSize);
            Assert.Equal(1, fromJson.BosId);
            Assert.Equal(2, fromJson.EosId);
            var texts = DevRows().Select(r => Prompt(r.GetProperty("question").GetString()!)).ToList();
            texts.Add("héllo wörld, 日本語 ✓ 12 345 purple TRIANGLES squares?!");
            texts.Add("  two  spaces\tand\ttabs\n");
            foreach (string t in texts)
            {
                int[] expected = Tok.EncodePrompt(t, ImageTokens);
                Assert.Equal(expected, fromJson.EncodePrompt(t, ImageTokens));
                Assert.Equal(Tok.Decode(expected), fromJson.Decode(expected));
            }
        }
        finally { Directory.Delete(dir, true); }
    }
}
