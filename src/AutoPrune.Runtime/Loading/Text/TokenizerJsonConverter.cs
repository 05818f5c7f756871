using System.Text;
using System.Text.Json;

namespace AutoPrune.Loading.Text;

/// <summary>
/// Turns a Hugging Face <c>tokenizer.json</c> of a Llama-style tokenizer (model type BPE with
/// <c>byte_fallback</c>, the ▁ whitespace convention) into the bytes of an equivalent SentencePiece
/// <c>ModelProto</c>, so that Microsoft.ML.Tokenizers' <c>SentencePieceTokenizer</c> does the merging.
/// <para>
/// Microsoft.ML.Tokenizers 2.0's own <c>BpeTokenizer</c> has no byte fallback, so it cannot encode
/// what a Llama tokenizer encodes; its SentencePiece BPE does. A SentencePiece BPE merges, at each
/// step, the adjacent pair whose concatenation is the piece with the highest score. HF's Llama
/// converter derives <c>merges</c> from exactly those scores, so the reverse is: the piece produced
/// by merge number r gets score -r (pieces no merge produces get scores below every merge). The
/// result is the same segmentation HF's BPE model produces (HF applies the lowest-rank merge first).
/// </para>
/// </summary>
internal static class TokenizerJsonConverter
{
    internal sealed record Result(byte[] SentencePieceModel, IReadOnlyList<(string Content, int Id, bool Special)> AddedTokens);

    // sentencepiece_model.proto piece types
    private const int TypeNormal = 1, TypeUnknown = 2, TypeControl = 3, TypeUserDefined = 4, TypeByte = 6;

    /// <summary>Merges allowed per vocabulary entry (Llama's tokenizer.json has about 2 for its 32,000 pieces).</summary>
    internal const int MaxMergesPerPiece = 16;

    /// <param name="tokenizerJson">The file's bytes (already bounded by <c>ModelOptions.FileLimits.TokenizerBytes</c>).</param>
    /// <param name="maxPieces">Most vocabulary entries accepted (<see cref="LlavaTokenizer.PieceLimit"/> of the model's
    /// <c>vocab_size</c>: every piece needs an embedding row). Counted on the parsed document before any piece is materialised, so
    /// a file with millions of entries is refused in a fraction of a second instead of being built.</param>
    /// <exception cref="FormatException">A missing or malformed field, named.</exception>
    public static Result Convert(byte[] tokenizerJson, int maxPieces = LlavaTokenizer.MaxVocabulary, int? modelVocabSize = null)
    {
        CheckVocabularySize(tokenizerJson, maxPieces, modelVocabSize);
        using var doc = JsonDocument.Parse(tokenizerJson);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            throw new FormatException($"expected a JSON object (a Hugging Face tokenizer.json), got {root.ValueKind.ToString().ToLowerInvariant()}");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new FormatException("it has no \"model\" object; a Hugging Face tokenizer.json holds the tokenizer in \"model\" (type, vocab, merges)");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() ?? "" : "BPE";
        if (type != "BPE")
            throw new NotSupportedException($"tokenizer.json model type '{type}' is not supported; a Llama tokenizer (BPE with byte fallback) is expected.");
        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        string? unkToken = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;

        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new FormatException("\"model.vocab\" is missing or not an object of piece -> id");
        int entries = 0;
        foreach (var _ in vocab.EnumerateObject())
            if (++entries > maxPieces)
                throw new FormatException($"\"model.vocab\" has more than {maxPieces:N0} entries, {LlavaTokenizer.VocabularyLimitReason(maxPieces, modelVocabSize)}");
        if (model.TryGetProperty("merges", out var mergeList))
        {
            if (mergeList.ValueKind != JsonValueKind.Array) throw new FormatException("\"model.merges\" is not an array");
            long maxMerges = (long)MaxMergesPerPiece * Math.Max(entries, 1);
            if (mergeList.GetArrayLength() > maxMerges)
                throw new FormatException($"\"model.merges\" has {mergeList.GetArrayLength():N0} entries for {entries:N0} pieces; at most {maxMerges:N0} ({MaxMergesPerPiece} per piece) are accepted");
        }
        int maxId = -1;
        var pieces = new Dictionary<int, string>();
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id))
                throw new FormatException($"the id of piece '{p.Name}' in \"model.vocab\" is not an integer");
            if (id < 0) throw new FormatException($"negative id for piece '{p.Name}'");
            if (!pieces.TryAdd(id, p.Name)) throw new FormatException($"id {id} is used by two pieces");
            maxId = Math.Max(maxId, id);
        }
        if (pieces.Count == 0) throw new FormatException("the vocabulary is empty");
        if (pieces.Count != maxId + 1) throw new FormatException($"the vocabulary ids are not contiguous (count {pieces.Count}, max id {maxId})");

        // Scores from merge ranks.
        var scores = new Dictionary<string, float>(StringComparer.Ordinal);
        int rank = 0;
        if (model.TryGetProperty("merges", out var merges))
        {
            foreach (var m in merges.EnumerateArray())
            {
                string left, right;
                if (m.ValueKind == JsonValueKind.String)
                {
                    string s = m.GetString()!;
                    int sp = s.IndexOf(' ');
                    if (sp <= 0) throw new FormatException($"merge '{s}' is not 'left right'");
                    left = s[..sp];
                    right = s[(sp + 1)..];
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                {
                    left = m[0].GetString()!;
                    right = m[1].GetString()!;
                }
                else
                {
                    throw new FormatException($"merge {rank} in \"model.merges\" is neither \"left right\" nor [\"left\", \"right\"]");
                }
                scores.TryAdd(left + right, -rank);
                rank++;
            }
        }

        var added = new List<(string, int, bool)>();
        var controlIds = new HashSet<int>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in at.EnumerateArray())
            {
                int id = a.GetProperty("id").GetInt32();
                string content = a.GetProperty("content").GetString()!;
                bool special = a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                added.Add((content, id, special));
                if (pieces.TryGetValue(id, out var piece) && piece == content) controlIds.Add(id);
            }
        }

        bool addDummyPrefix = HasDummyPrefix(root);

        using var ms = new MemoryStream();
        for (int id = 0; id <= maxId; id++)
        {
            string piece = pieces[id];
            int ptype;
            if (piece == unkToken) ptype = TypeUnknown;
            else if (controlIds.Contains(id)) ptype = piece.StartsWith('<') && piece.EndsWith('>') ? TypeControl : TypeUserDefined;
            else if (byteFallback && IsBytePiece(piece)) ptype = TypeByte;
            else ptype = TypeNormal;
            float score = ptype == TypeNormal
                ? (scores.TryGetValue(piece, out var sc) ? sc : -(rank + (float)id))
                : 0f;
            var pm = new MemoryStream();
            WriteString(pm, 1, piece);
            WriteFloat(pm, 2, score);
            WriteVarintField(pm, 3, (ulong)ptype);
            WriteBytes(ms, 1, pm.ToArray());
        }

        int unkId = unkToken is not null && pieces.FirstOrDefault(kv => kv.Value == unkToken) is { Value: not null } ku ? ku.Key : 0;
        int bosId = IdOf(pieces, "<s>"), eosId = IdOf(pieces, "</s>");
        var trainer = new MemoryStream();
        WriteVarintField(trainer, 3, 2); // model_type = BPE
        WriteVarintField(trainer, 4, (ulong)(maxId + 1)); // vocab_size
        WriteVarintField(trainer, 35, byteFallback ? 1UL : 0UL); // byte_fallback
        WriteVarintField(trainer, 40, (ulong)unkId); // unk_id
        WriteVarintField(trainer, 41, unchecked((ulong)(long)bosId)); // bos_id (-1 if none)
        WriteVarintField(trainer, 42, unchecked((ulong)(long)eosId)); // eos_id
        WriteVarintField(trainer, 43, unchecked((ulong)-1L)); // pad_id: none among the pieces
        WriteBytes(ms, 2, trainer.ToArray());

        var norm = new MemoryStream();
        WriteString(norm, 1, "identity");
        WriteVarintField(norm, 3, addDummyPrefix ? 1UL : 0UL); // add_dummy_prefix
        WriteVarintField(norm, 4, 0); // remove_extra_whitespaces
        WriteVarintField(norm, 5, 1); // escape_whitespaces
        WriteBytes(ms, 3, norm.ToArray());

        return new Result(ms.ToArray(), added);
    }

    /// <summary>
    /// Counts <c>model.vocab</c>'s entries with a forward-only reader, before any document is built, and refuses a file
    /// with more than <paramref name="maxPieces"/> as soon as it has read that many (a file with millions is refused
    /// after reading a few thousand entries). Malformed JSON is left to the full parse, which reports its position.
    /// </summary>
    private static void CheckVocabularySize(byte[] json, int maxPieces, int? modelVocabSize)
    {
        var r = new Utf8JsonReader(json, new JsonReaderOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        try
        {
            if (!r.Read() || r.TokenType != JsonTokenType.StartObject) return;
            if (!Find(ref r, "model") || !Find(ref r, "vocab")) return;
            int entries = 0;
            while (r.Read() && r.TokenType != JsonTokenType.EndObject)
            {
                if (r.TokenType == JsonTokenType.PropertyName && ++entries > maxPieces)
                    throw new FormatException($"\"model.vocab\" has more than {maxPieces:N0} entries, {LlavaTokenizer.VocabularyLimitReason(maxPieces, modelVocabSize)}");
                if (r.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) r.Skip();
            }
        }
        catch (JsonException)
        {
            // reported by JsonDocument.Parse
        }

        // Moves into the object value of the property <paramref name="name"/> of the object the reader is in.
        static bool Find(ref Utf8JsonReader r, string name)
        {
            while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
            {
                bool match = r.ValueTextEquals(name);
                if (!r.Read()) return false;
                if (match) return r.TokenType == JsonTokenType.StartObject;
                if (r.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) r.Skip();
            }
            return false;
        }
    }

    private static int IdOf(Dictionary<int, string> pieces, string piece)
    {
        foreach (var (id, p) in pieces) if (p == piece) return id;
        return -1;
    }

    private static bool HasDummyPrefix(JsonElement root)
    {
        // Older Llama tokenizer.json: normalizer Sequence[Prepend("▁"), Replace(" ", "▁")].
        // Newer: pre_tokenizer Metaspace(replacement "▁", prepend_scheme "first"/"always").
        string json = root.TryGetProperty("normalizer", out var n) ? n.GetRawText() : "";
        if (json.Contains("\"Prepend\"", StringComparison.Ordinal)) return true;
        if (root.TryGetProperty("pre_tokenizer", out var pt) && pt.ValueKind == JsonValueKind.Object)
        {
            string raw = pt.GetRawText();
            if (raw.Contains("\"Metaspace\"", StringComparison.Ordinal))
                return !raw.Contains("\"never\"", StringComparison.Ordinal) && !raw.Contains("\"add_prefix_space\":false", StringComparison.Ordinal);
        }
        return false;
    }

    private static bool IsBytePiece(string p) =>
        p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal) && p[5] == '>' && Uri.IsHexDigit(p[3]) && Uri.IsHexDigit(p[4]);

    // Protobuf writers, shared with Gguf.GgufVocabulary (a SentencePiece ModelProto from GGUF metadata).
    internal static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        s.WriteByte((byte)v);
    }

    internal static void WriteVarintField(Stream s, int field, ulong v) { WriteVarint(s, (ulong)(field << 3)); WriteVarint(s, v); }

    internal static void WriteFloat(Stream s, int field, float f)
    {
        WriteVarint(s, (ulong)((field << 3) | 5));
        Span<byte> b = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(b, f);
        s.Write(b);
    }

    internal static void WriteBytes(Stream s, int field, byte[] data)
    {
        WriteVarint(s, (ulong)((field << 3) | 2));
        WriteVarint(s, (ulong)data.Length);
        s.Write(data);
    }

    internal static void WriteString(Stream s, int field, string text) => WriteBytes(s, field, Encoding.UTF8.GetBytes(text));
}
