using System.Text;
using System.Text.Json;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>One entry of <c>tokenizer.json</c>'s <c>added_tokens</c>.</summary>
internal sealed record Qwen2AddedToken(int Id, string Content, bool Special, bool SingleWord, bool LStrip, bool RStrip, bool Normalized);

/// <summary>
/// Reads the parts of a Hugging Face <c>tokenizer.json</c> a Qwen2 byte-level BPE needs, in bounded time and memory: a
/// first pass counts the vocabulary, merges and added tokens without building anything, so an oversized file (millions of
/// entries) is refused before any table exists; a second pass builds them. The pipeline must be Qwen2's: NFC normalizer
/// (or none), the <see cref="Qwen2PreTokenizer.Pattern"/> Split (Isolated) followed by ByteLevel without its own regex,
/// a BPE model without byte fallback, continuing-subword prefix, end-of-word suffix or ignore_merges, and the ByteLevel
/// decoder. Anything else is refused with a message naming the file and the field.
/// </summary>
internal sealed class Qwen2TokenizerJson
{
    /// <summary>Most vocabulary entries accepted (Qwen2 has 151,643; the largest released vocabularies about 262,000).</summary>
    public const int MaxVocabEntries = 1_000_000;

    /// <summary>Most merges accepted (Qwen2 has 151,387).</summary>
    public const int MaxMerges = 1_000_000;

    /// <summary>Most added tokens accepted (Qwen2.5 has 22).</summary>
    public const int MaxAddedTokens = 100_000;

    /// <summary>Longest token or added-token text accepted, in characters.</summary>
    public const int MaxTokenChars = 1024;

    public required Dictionary<string, int> Vocab { get; init; }
    public required List<(string Left, string Right)> Merges { get; init; }
    public required List<Qwen2AddedToken> Added { get; init; }
    public required bool Nfc { get; init; }

    /// <exception cref="ModelLoadException">Not valid JSON, over a limit, or not a Qwen2 byte-level BPE, naming <paramref name="path"/>.</exception>
    public static Qwen2TokenizerJson Parse(byte[] json, string path)
    {
        try
        {
            Count(json, path);
            return Build(json, path);
        }
        catch (JsonException ex)
        {
            string where = ex.LineNumber is long line ? $"line {line + 1}" : "unknown line";
            if (ex.BytePositionInLine is long col) where += $", byte {col + 1}";
            throw new ModelLoadException($"Tokenizer file '{path}' is not valid JSON ({where}): {ex.Message}", path, null, ex);
        }
        catch (InvalidOperationException ex)
        {
            // A string that is not text (a lone surrogate escape) or a number that does not fit.
            throw new ModelLoadException($"Tokenizer file '{path}' holds a value that cannot be read: {ex.Message}", path, null, ex);
        }
    }

    private static ModelLoadException Bad(string path, string what) => new($"Tokenizer file '{path}': {what}", path);

    private static JsonReaderOptions ReaderOptions => new() { CommentHandling = JsonCommentHandling.Disallow, AllowTrailingCommas = false, MaxDepth = 64 };

    // ------------------------------------------------------------------ pass 1: counts only

    private static void Count(byte[] json, string path)
    {
        var r = new Utf8JsonReader(json, ReaderOptions);
        if (!r.Read() || r.TokenType != JsonTokenType.StartObject)
            throw Bad(path, $"expected a JSON object at the top level but found {r.TokenType}.");
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            if (r.ValueTextEquals("model"u8))
            {
                r.Read();
                if (r.TokenType != JsonTokenType.StartObject) { r.Skip(); continue; }
                while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
                {
                    if (r.ValueTextEquals("vocab"u8)) CountEntries(ref r, path, "model.vocab", MaxVocabEntries, JsonTokenType.StartObject);
                    else if (r.ValueTextEquals("merges"u8)) CountEntries(ref r, path, "model.merges", MaxMerges, JsonTokenType.StartArray);
                    else { r.Read(); r.Skip(); }
                }
            }
            else if (r.ValueTextEquals("added_tokens"u8)) CountEntries(ref r, path, "added_tokens", MaxAddedTokens, JsonTokenType.StartArray);
            else { r.Read(); r.Skip(); }
        }
    }

    private static void CountEntries(ref Utf8JsonReader r, string path, string field, int max, JsonTokenType container)
    {
        r.Read();
        if (r.TokenType != container) { r.Skip(); return; } // the second pass names the wrong type
        int depth = r.CurrentDepth, count = 0;
        while (r.Read() && !(r.CurrentDepth == depth && r.TokenType is JsonTokenType.EndObject or JsonTokenType.EndArray))
        {
            if (container == JsonTokenType.StartObject) r.Read(); // property name, then its value
            r.Skip();
            if (++count > max)
                throw Bad(path, $"{field} has more than {max:N0} entries, the most accepted; the file is not a usable tokenizer (Qwen2 has about 151,000).");
        }
    }

    // ------------------------------------------------------------------ pass 2: the tables

    private static Qwen2TokenizerJson Build(byte[] json, string path)
    {
        var r = new Utf8JsonReader(json, ReaderOptions);
        r.Read();
        Dictionary<string, int>? vocab = null;
        List<(string, string)>? merges = null;
        var added = new List<Qwen2AddedToken>();
        bool sawModel = false, sawPre = false, sawDecoder = false, nfc = false;
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            string name = r.GetString()!;
            r.Read();
            switch (name)
            {
                case "model":
                    if (r.TokenType != JsonTokenType.StartObject) throw Bad(path, $"'model' must be an object but is {r.TokenType}.");
                    sawModel = true;
                    (vocab, merges) = ReadModel(ref r, path);
                    break;
                case "added_tokens":
                    if (r.TokenType == JsonTokenType.Null) break;
                    if (r.TokenType != JsonTokenType.StartArray) throw Bad(path, $"'added_tokens' must be an array but is {r.TokenType}.");
                    ReadAdded(ref r, path, added);
                    break;
                case "normalizer":
                    using (var doc = JsonDocument.ParseValue(ref r)) nfc = CheckNormalizer(doc.RootElement, path);
                    break;
                case "pre_tokenizer":
                    sawPre = true;
                    using (var doc = JsonDocument.ParseValue(ref r)) CheckPreTokenizer(doc.RootElement, path);
                    break;
                case "decoder":
                    sawDecoder = true;
                    using (var doc = JsonDocument.ParseValue(ref r)) CheckDecoder(doc.RootElement, path);
                    break;
                default:
                    r.Skip();
                    break;
            }
        }
        if (!sawModel)
            throw Bad(path, "there is no 'model' object; a Qwen2 tokenizer.json has \"model\": {\"type\": \"BPE\", \"vocab\": {...}, \"merges\": [...]}, a 'pre_tokenizer' (Split + ByteLevel) and a ByteLevel 'decoder'.");
        if (vocab is null) throw Bad(path, "'model' has no 'vocab' object (token -> id).");
        if (merges is null) throw Bad(path, "'model' has no 'merges' list.");
        if (!sawPre) throw Bad(path, "there is no 'pre_tokenizer'; Qwen2's is a Sequence of Split (its regex, Isolated) and ByteLevel.");
        if (!sawDecoder) throw Bad(path, "there is no 'decoder'; Qwen2's is ByteLevel.");
        return new Qwen2TokenizerJson { Vocab = vocab, Merges = merges, Added = added, Nfc = nfc };
    }

    private static (Dictionary<string, int>?, List<(string, string)>?) ReadModel(ref Utf8JsonReader r, string path)
    {
        Dictionary<string, int>? vocab = null;
        List<(string, string)>? merges = null;
        string? type = null;
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            string name = r.GetString()!;
            r.Read();
            switch (name)
            {
                case "type":
                    type = r.TokenType == JsonTokenType.String ? r.GetString() : throw Bad(path, $"model.type must be a string but is {r.TokenType}.");
                    if (type != "BPE") throw Bad(path, $"model.type is '{type}'; a Qwen2 tokenizer is a byte-level 'BPE'.");
                    break;
                case "vocab":
                    vocab = ReadVocab(ref r, path);
                    break;
                case "merges":
                    merges = ReadMerges(ref r, path);
                    break;
                case "byte_fallback":
                case "ignore_merges":
                case "fuse_unk":
                    if (r.TokenType is not (JsonTokenType.True or JsonTokenType.False or JsonTokenType.Null))
                        throw Bad(path, $"model.{name} must be true or false but is {r.TokenType}.");
                    if (r.TokenType == JsonTokenType.True && name != "fuse_unk")
                        throw Bad(path, name == "byte_fallback"
                            ? "model.byte_fallback is true; a byte-level BPE (Qwen2) needs no byte fallback, and SentencePiece-style tokenizers are not read by this loader."
                            : "model.ignore_merges is true (whole words looked up before merging, as in Llama 3); Qwen2's tokenizer merges every word, and this loader supports only that.");
                    break;
                case "continuing_subword_prefix":
                case "end_of_word_suffix":
                    if (r.TokenType == JsonTokenType.String && r.GetString() is { Length: > 0 } affix)
                        throw Bad(path, $"model.{name} is '{affix}'; a byte-level BPE (Qwen2) has none.");
                    if (r.TokenType is not (JsonTokenType.String or JsonTokenType.Null))
                        throw Bad(path, $"model.{name} must be a string or null but is {r.TokenType}.");
                    break;
                case "dropout":
                    if (r.TokenType == JsonTokenType.Number && r.GetDouble() != 0)
                        throw Bad(path, "model.dropout is set; BPE dropout is for training, and inference needs null.");
                    r.Skip();
                    break;
                default:
                    r.Skip();
                    break;
            }
        }
        if (type is null) throw Bad(path, "model.type is missing; expected \"BPE\".");
        return (vocab, merges);
    }

    private static Dictionary<string, int> ReadVocab(ref Utf8JsonReader r, string path)
    {
        if (r.TokenType != JsonTokenType.StartObject) throw Bad(path, $"model.vocab must be an object of token -> id but is {r.TokenType}.");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, string>();
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            string token = r.GetString()!;
            r.Read();
            if (r.TokenType != JsonTokenType.Number || !r.TryGetInt32(out int id) || id < 0 || id >= 10_000_000)
                throw Bad(path, $"model.vocab entry '{Show(token)}' has id {Raw(ref r)}; expected an integer in [0, 10,000,000).");
            if (token.Length == 0) throw Bad(path, $"model.vocab has an empty token (id {id}).");
            if (token.Length > MaxTokenChars) throw Bad(path, $"model.vocab token with id {id} is {token.Length} characters long; at most {MaxTokenChars} are accepted.");
            if (!vocab.TryAdd(token, id)) throw Bad(path, $"model.vocab lists token '{Show(token)}' twice.");
            if (!byId.TryAdd(id, token)) throw Bad(path, $"model.vocab gives id {id} to both '{Show(byId[id])}' and '{Show(token)}'.");
        }
        if (vocab.Count == 0) throw Bad(path, "model.vocab is empty.");
        return vocab;
    }

    private static List<(string, string)> ReadMerges(ref Utf8JsonReader r, string path)
    {
        if (r.TokenType != JsonTokenType.StartArray) throw Bad(path, $"model.merges must be an array but is {r.TokenType}.");
        var merges = new List<(string, string)>();
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
            int index = merges.Count;
            if (r.TokenType == JsonTokenType.String)
            {
                string s = r.GetString()!;
                int sp = s.IndexOf(' ');
                if (sp <= 0 || sp == s.Length - 1 || s.IndexOf(' ', sp + 1) >= 0)
                    throw Bad(path, $"model.merges[{index}] is '{Show(s)}'; expected two tokens separated by one space (\"a b\").");
                merges.Add((s[..sp], s[(sp + 1)..]));
            }
            else if (r.TokenType == JsonTokenType.StartArray)
            {
                var parts = new List<string>(2);
                while (r.Read() && r.TokenType != JsonTokenType.EndArray)
                {
                    if (r.TokenType != JsonTokenType.String || parts.Count == 2)
                        throw Bad(path, $"model.merges[{index}] must be a pair of token strings [\"a\", \"b\"].");
                    parts.Add(r.GetString()!);
                }
                if (parts.Count != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                    throw Bad(path, $"model.merges[{index}] must be a pair of non-empty token strings [\"a\", \"b\"].");
                merges.Add((parts[0], parts[1]));
            }
            else
            {
                throw Bad(path, $"model.merges[{index}] is {r.TokenType}; expected \"a b\" or [\"a\", \"b\"].");
            }
        }
        return merges;
    }

    private static void ReadAdded(ref Utf8JsonReader r, string path, List<Qwen2AddedToken> added)
    {
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
            int index = added.Count;
            if (r.TokenType != JsonTokenType.StartObject) throw Bad(path, $"added_tokens[{index}] must be an object but is {r.TokenType}.");
            int? id = null;
            string? content = null;
            bool special = false, single = false, lstrip = false, rstrip = false, normalized = false;
            while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
            {
                string name = r.GetString()!;
                r.Read();
                switch (name)
                {
                    case "id":
                        if (r.TokenType != JsonTokenType.Number || !r.TryGetInt32(out int v) || v < 0 || v >= 10_000_000)
                            throw Bad(path, $"added_tokens[{index}].id is {Raw(ref r)}; expected an integer in [0, 10,000,000).");
                        id = v;
                        break;
                    case "content":
                        content = r.TokenType == JsonTokenType.String ? r.GetString() : throw Bad(path, $"added_tokens[{index}].content must be a string but is {r.TokenType}.");
                        break;
                    case "special": special = Bool(ref r, path, index, name); break;
                    case "single_word": single = Bool(ref r, path, index, name); break;
                    case "lstrip": lstrip = Bool(ref r, path, index, name); break;
                    case "rstrip": rstrip = Bool(ref r, path, index, name); break;
                    case "normalized": normalized = Bool(ref r, path, index, name); break;
                    default: r.Skip(); break;
                }
            }
            if (id is null) throw Bad(path, $"added_tokens[{index}] has no 'id'.");
            if (string.IsNullOrEmpty(content)) throw Bad(path, $"added_tokens[{index}] (id {id}) has no 'content'.");
            if (content.Length > MaxTokenChars) throw Bad(path, $"added_tokens[{index}] (id {id}) is {content.Length} characters long; at most {MaxTokenChars} are accepted.");
            added.Add(new Qwen2AddedToken(id.Value, content, special, single, lstrip, rstrip, normalized));
        }
    }

    private static bool Bool(ref Utf8JsonReader r, string path, int index, string name) => r.TokenType switch
    {
        JsonTokenType.True => true,
        JsonTokenType.False or JsonTokenType.Null => false,
        _ => throw Bad(path, $"added_tokens[{index}].{name} must be true or false but is {r.TokenType}."),
    };

    private static string Raw(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.Number or JsonTokenType.True or JsonTokenType.False or JsonTokenType.Null => Encoding.UTF8.GetString(r.ValueSpan),
        JsonTokenType.String => "\"" + Show(r.GetString()!) + "\"",
        _ => r.TokenType.ToString(),
    };

    /// <summary>A token for a message: at most 40 characters.</summary>
    internal static string Show(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static string TypeOf(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : e.ValueKind.ToString();

    private static bool CheckNormalizer(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Null) return false;
        string type = TypeOf(e);
        if (type == "NFC") return true;
        if (type == "Sequence" && e.TryGetProperty("normalizers", out var list) && list.ValueKind == JsonValueKind.Array)
        {
            var types = list.EnumerateArray().Select(TypeOf).ToArray();
            if (types.Length == 0) return false;
            if (types is ["NFC"]) return true;
            throw Bad(path, $"normalizer is a Sequence of [{string.Join(", ", types)}]; Qwen2's is NFC (or none).");
        }
        throw Bad(path, $"normalizer is '{type}'; Qwen2's is NFC (or none).");
    }

    private static void CheckPreTokenizer(JsonElement e, string path)
    {
        const string expected = "Qwen2's pre_tokenizer is a Sequence of Split (its regex, behavior Isolated, invert false) and ByteLevel (add_prefix_space false, use_regex false)";
        if (TypeOf(e) != "Sequence" || !e.TryGetProperty("pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
            throw Bad(path, $"pre_tokenizer is '{TypeOf(e)}'; {expected}.");
        var items = list.EnumerateArray().ToArray();
        if (items.Length != 2 || TypeOf(items[0]) != "Split" || TypeOf(items[1]) != "ByteLevel")
            throw Bad(path, $"pre_tokenizer is a Sequence of [{string.Join(", ", items.Select(TypeOf))}]; {expected}.");
        var split = items[0];
        string? pattern = split.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object && p.TryGetProperty("Regex", out var rx) && rx.ValueKind == JsonValueKind.String ? rx.GetString() : null;
        if (pattern != Qwen2PreTokenizer.Pattern)
            throw Bad(path, $"pre_tokenizer Split pattern is {(pattern is null ? "not a Regex" : "'" + Show(pattern) + "'")}; only Qwen2's pattern {Qwen2PreTokenizer.Pattern} is supported.");
        if (!split.TryGetProperty("behavior", out var b) || b.ValueKind != JsonValueKind.String || b.GetString() != "Isolated")
            throw Bad(path, $"pre_tokenizer Split behavior is {(split.TryGetProperty("behavior", out var bb) ? bb.GetRawText() : "missing")}; {expected}.");
        if (split.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True)
            throw Bad(path, $"pre_tokenizer Split has invert true; {expected}.");
        var bl = items[1];
        foreach (var flag in new[] { "add_prefix_space", "use_regex" })
            if (bl.TryGetProperty(flag, out var f) && f.ValueKind == JsonValueKind.True)
                throw Bad(path, $"pre_tokenizer ByteLevel has {flag} true; {expected}.");
    }

    private static void CheckDecoder(JsonElement e, string path)
    {
        if (TypeOf(e) != "ByteLevel")
            throw Bad(path, $"decoder is '{TypeOf(e)}'; Qwen2's is ByteLevel.");
    }
}
