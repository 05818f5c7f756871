using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace AutoPrune.Loading.Text;

/// <summary>
/// The tokenizer of a LLaVA checkpoint: a Llama SentencePiece model (BPE with byte fallback) plus the
/// checkpoint's added tokens (<c>&lt;image&gt;</c>, <c>&lt;pad&gt;</c>, ...).
/// <para>
/// Encoding reproduces the Hugging Face llava processor with a non-legacy Llama tokenizer
/// (<c>legacy: false</c>, as in every llava-1.5-hf checkpoint): BOS, then the prompt split at each
/// special token; the text before the first special token gets SentencePiece's dummy prefix
/// (<c>"USER: "</c> -> <c>▁USER</c>, <c>:</c>, <c>▁</c>), text after a special token does not
/// (<c>"\nWhat ..."</c> starts with <c>&lt;0x0A&gt;</c>). Each <c>&lt;image&gt;</c> placeholder expands to
/// as many image tokens as the caller says (576 for a 336 px CLIP ViT-L/14). With <c>legacy: true</c>
/// every text segment gets the dummy prefix, as the legacy slow tokenizer does.
/// </para>
/// <para>
/// The SentencePiece merging itself is Microsoft.ML.Tokenizers' <see cref="SentencePieceTokenizer"/>:
/// from <c>tokenizer.model</c> directly, or, when the folder only has a Hugging Face <c>tokenizer.json</c>,
/// from an equivalent SentencePiece model assembled from its vocabulary and merges
/// (<see cref="TokenizerJsonConverter"/>). This class only splits at special tokens and does the
/// whitespace escaping (space -> ▁, dummy prefix) itself, so that it can decide per segment.
/// </para>
/// </summary>
internal sealed class LlavaTokenizer : Models.ITextTokenizer
{
    public bool IsEnd(int id) => id == EosId;
    IReadOnlyList<int> Models.ITextTokenizer.EndIds => [EosId];
    bool Models.ITextTokenizer.DropsLeadingSpace => true;
    Models.ITokenStream Models.ITextTokenizer.CreateStreamingDecoder() => CreateStreamingDecoder();

    internal const char SpaceSymbol = '\u2581'; // ▁

    /// <summary>
    /// Most pieces a tokenizer file may declare when the model's <c>vocab_size</c> is not known (with it, that is the
    /// limit): 1,048,576, four times the largest vocabulary of a released LLM. Counted before the tokenizer is built.
    /// </summary>
    internal const int MaxVocabulary = 1 << 20;

    /// <summary>
    /// The most pieces a tokenizer file is read with, counted before it is built: twice the model's <c>vocab_size</c> plus
    /// 1,024 (a file slightly over it is built and refused with the exact id that has no embedding row), at most
    /// <see cref="MaxVocabulary"/>; a file far over it (millions of entries) is refused in a fraction of a second.
    /// </summary>
    internal static int PieceLimit(int? modelVocabSize) =>
        modelVocabSize is int v && v > 0 ? (int)Math.Min((long)v * 2 + 1024, MaxVocabulary) : MaxVocabulary;

    /// <summary>Why a tokenizer may have at most <paramref name="maxPieces"/> pieces, for the error message.</summary>
    internal static string VocabularyLimitReason(int maxPieces, int? modelVocabSize = null) => modelVocabSize is int v && maxPieces < MaxVocabulary
        ? $"far more than config.json's text_config.vocab_size = {v:N0} (every piece needs an embedding row)"
        : $"the most a tokenizer may have ({MaxVocabulary:N0})";

    private readonly SentencePieceTokenizer _sp;
    private readonly int _spVocabSize;
    // Special / added tokens recognised in the prompt text, longest first so that the longest match wins.
    private readonly (string Text, int Id)[] _splitTokens;
    private readonly HashSet<int> _skipOnDecode;
    private readonly Dictionary<int, string> _addedContent;
    private readonly bool _addBos;
    private readonly bool _legacy;
    private readonly bool _addDummyPrefix;

    private LlavaTokenizer(SentencePieceTokenizer sp, int imageTokenId, string imageToken,
        IReadOnlyDictionary<string, (int Id, bool Special)> added, string? bosToken, string? eosToken, bool addBos, bool legacy)
    {
        _sp = sp;
        _spVocabSize = sp.Vocabulary.Count;
        _addBos = addBos;
        _legacy = legacy;
        _addDummyPrefix = sp.AddDummyPrefix;
        UnknownId = sp.UnknownId;
        BosId = bosToken is not null && TryGetId(sp, added, bosToken, out int b) ? b : sp.BeginningOfSentenceId;
        EosId = eosToken is not null && TryGetId(sp, added, eosToken, out int e) ? e : sp.EndOfSentenceId;
        ImageTokenId = imageTokenId;
        ImageToken = imageToken;

        var split = new Dictionary<string, int>(StringComparer.Ordinal);
        _skipOnDecode = new HashSet<int> { BosId, EosId, UnknownId };
        _addedContent = new Dictionary<int, string>();
        foreach (var (text, (id, special)) in added)
        {
            split[text] = id;
            _addedContent[id] = text;
            if (special) _skipOnDecode.Add(id);
        }
        // The SentencePiece control tokens are special tokens of the HF tokenizer too: "</s>" in a prompt is EOS.
        foreach (var (text, id) in new[] { (sp.BeginningOfSentenceToken, sp.BeginningOfSentenceId), (sp.EndOfSentenceToken, sp.EndOfSentenceId), (sp.UnknownToken, sp.UnknownId) })
        {
            if (!string.IsNullOrEmpty(text)) split.TryAdd(text, id);
        }
        split[imageToken] = imageTokenId;
        _skipOnDecode.Add(imageTokenId);
        _addedContent.TryAdd(imageTokenId, imageToken);
        _splitTokens = split.Select(kv => (kv.Key, kv.Value)).OrderByDescending(t => t.Key.Length).ThenBy(t => t.Key, StringComparer.Ordinal).ToArray();

        LongestTokenChars = Math.Max(sp.Vocabulary.Keys.Select(k => k.Length).DefaultIfEmpty(1).Max(), _splitTokens.Max(t => t.Text.Length));
        int maxId = Math.Max(_spVocabSize - 1, split.Values.Max());
        VocabSize = maxId + 1;
        PadId = added.TryGetValue("<pad>", out var pad) ? pad.Id : null;
    }

    public int BosId { get; }
    public int EosId { get; }
    public int UnknownId { get; }
    public int? PadId { get; }
    public int ImageTokenId { get; }
    /// <summary>The placeholder text of the image token in prompts, <c>&lt;image&gt;</c>.</summary>
    public string ImageToken { get; }
    /// <summary>Characters of the longest piece or special token: no token of a prompt covers more of its text.</summary>
    public int LongestTokenChars { get; }
    /// <summary>Number of ids: the SentencePiece pieces plus the added tokens (402 for the fixture).</summary>
    public int VocabSize { get; }

    /// <summary>
    /// Loads the tokenizer of a checkpoint folder: <c>tokenizer.model</c> if present, otherwise
    /// <c>tokenizer.json</c>; added tokens from <c>added_tokens.json</c>, <c>tokenizer_config.json</c>
    /// (<c>added_tokens_decoder</c>) and <c>tokenizer.json</c> (<c>added_tokens</c>).
    /// </summary>
    /// <exception cref="ModelLoadException">No tokenizer file, or one that cannot be read.</exception>
    /// <param name="modelVocabSize">The model's <c>vocab_size</c>: every id the tokenizer can produce (but the image token) must
    /// be below it; ids from there up to it decode to no text (Hugging Face pads embeddings, e.g. 32064 for 32002 tokens).</param>
    public static LlavaTokenizer Load(string folder, int imageTokenId, InputFileLimits? limits = null, int? modelVocabSize = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        limits ??= new InputFileLimits();
        const string configLimit = "ModelOptions.FileLimits.ConfigBytes", tokenizerLimit = "ModelOptions.FileLimits.TokenizerBytes";
        if (!Directory.Exists(folder))
            throw new ModelLoadException($"Model folder '{folder}' does not exist.", folder);

        string modelPath = Path.Combine(folder, "tokenizer.model");
        string jsonPath = Path.Combine(folder, "tokenizer.json");
        string configPath = Path.Combine(folder, "tokenizer_config.json");
        string addedPath = Path.Combine(folder, "added_tokens.json");

        var added = new Dictionary<string, (int Id, bool Special)>(StringComparer.Ordinal);
        string? bosToken = null, eosToken = null;
        bool addBos = true;
        bool legacy = false;

        // tokenizer_config.json: add_bos_token, legacy, bos/eos, added_tokens_decoder.
        if (File.Exists(configPath))
        {
            try
            {
                using var doc = JsonDocument.Parse(ModelFiles.ReadBytes(configPath, limits.ConfigBytes, configLimit));
                var root = doc.RootElement;
                if (root.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) addBos = ab.GetBoolean();
                // HF defaults legacy to true when unset (and warns); llava-1.5-hf checkpoints all say false.
                legacy = !root.TryGetProperty("legacy", out var lg) || lg.ValueKind != JsonValueKind.False;
                bosToken = TokenContent(root, "bos_token");
                eosToken = TokenContent(root, "eos_token");
                if (root.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
                {
                    foreach (var p in dec.EnumerateObject())
                    {
                        if (!int.TryParse(p.Name, out int id)) throw new FormatException($"added_tokens_decoder key '{p.Name}' is not an id");
                        string content = p.Value.GetProperty("content").GetString() ?? throw new FormatException("added token without content");
                        bool special = !p.Value.TryGetProperty("special", out var spec) || spec.ValueKind != JsonValueKind.False;
                        added[content] = (id, special);
                    }
                }
            }
            catch (Exception ex) when (ex is JsonException or FormatException or InvalidOperationException or KeyNotFoundException)
            {
                throw new ModelLoadException($"tokenizer_config.json is not valid: {ex.Message}", configPath, inner: ex);
            }
        }

        if (File.Exists(addedPath))
        {
            try
            {
                var map = JsonSerializer.Deserialize<Dictionary<string, int>>(ModelFiles.ReadBytes(addedPath, limits.ConfigBytes, configLimit))
                          ?? throw new JsonException("null");
                foreach (var (content, id) in map)
                    if (!added.ContainsKey(content)) added[content] = (id, true);
            }
            catch (JsonException ex)
            {
                throw new ModelLoadException($"added_tokens.json is not a JSON object of token -> id: {ex.Message}", addedPath, inner: ex);
            }
        }

        SentencePieceTokenizer sp;
        int maxPieces = PieceLimit(modelVocabSize);
        if (File.Exists(modelPath))
        {
            var bytes = ModelFiles.ReadBytes(modelPath, limits.TokenizerBytes, tokenizerLimit);
            // Before Microsoft.ML.Tokenizers builds it: an empty file, bytes that are not a ModelProto and too many pieces
            // are named here (the library says "Object reference not set..." for an empty one, and builds any size).
            if (CheckSentencePieceModel(bytes, maxPieces, modelVocabSize) is { } problem)
                throw new ModelLoadException($"tokenizer.model is not a usable SentencePiece model: {problem}.", modelPath);
            try
            {
                using var ms = new MemoryStream(bytes, writable: false);
                sp = SentencePieceTokenizer.Create(ms, false, false);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                throw new ModelLoadException($"tokenizer.model is not a valid SentencePiece model: {ex.Message}", modelPath, inner: ex);
            }
        }
        else if (File.Exists(jsonPath))
        {
            TokenizerJsonConverter.Result converted;
            try
            {
                converted = TokenizerJsonConverter.Convert(ModelFiles.ReadBytes(jsonPath, limits.TokenizerBytes, tokenizerLimit), maxPieces, modelVocabSize);
            }
            catch (Exception ex) when (ex is JsonException or FormatException or InvalidOperationException or KeyNotFoundException or NotSupportedException)
            {
                throw new ModelLoadException($"tokenizer.json cannot be used: {ex.Message}", jsonPath, inner: ex);
            }
            try
            {
                using var ms = new MemoryStream(converted.SentencePieceModel);
                sp = SentencePieceTokenizer.Create(ms, false, false);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                throw new ModelLoadException($"tokenizer.json could not be turned into a SentencePiece model: {ex.Message}", jsonPath, inner: ex);
            }
            foreach (var (content, id, special) in converted.AddedTokens)
                if (!added.ContainsKey(content) && id >= sp.Vocabulary.Count) added[content] = (id, special);
        }
        else
        {
            throw new ModelLoadException($"The model folder has neither tokenizer.model nor tokenizer.json: '{folder}'.", modelPath);
        }

        // Added tokens that are pieces of the SentencePiece model itself (<unk>, <s>, </s>) are its control tokens.
        foreach (var key in added.Where(kv => kv.Value.Id < sp.Vocabulary.Count && sp.Vocabulary.TryGetValue(kv.Key, out int vid) && vid == kv.Value.Id).Select(kv => kv.Key).ToList())
            added.Remove(key);

        string imageToken = added.FirstOrDefault(kv => kv.Value.Id == imageTokenId).Key ?? "<image>";
        if (added.TryGetValue(imageToken, out var existing) && existing.Id != imageTokenId)
            throw new ModelLoadException($"The tokenizer maps '{imageToken}' to id {existing.Id}, but config.json says image_token_index = {imageTokenId}.", configPath);
        if (imageTokenId < 0 || (imageTokenId < sp.Vocabulary.Count && !added.ContainsKey(imageToken)))
            throw new ModelLoadException($"image_token_index {imageTokenId} is not an added token of the tokenizer.", configPath);
        added[imageToken] = (imageTokenId, true);

        var tokenizer = new LlavaTokenizer(sp, imageTokenId, imageToken, added, bosToken, eosToken, addBos, legacy);
        tokenizer.CheckAgainstModel(modelVocabSize, configPath);
        return tokenizer;
    }

    /// <summary>
    /// What makes <paramref name="bytes"/> unusable as a SentencePiece <c>ModelProto</c>, read from its top-level protobuf
    /// fields without building anything: empty, not protobuf, no pieces (field 1), or more than <paramref name="maxPieces"/>.
    /// Null when it looks usable (the library then parses it).
    /// </summary>
    internal static string? CheckSentencePieceModel(ReadOnlySpan<byte> bytes, int maxPieces, int? modelVocabSize = null)
    {
        if (bytes.Length == 0) return "the file is empty (0 bytes); expected a SentencePiece ModelProto as sentencepiece writes it";
        int pieces = 0, pos = 0;
        while (pos < bytes.Length)
        {
            if (!ReadVarint(bytes, ref pos, out ulong tag) || tag >> 3 == 0)
                return $"byte {pos} is not a protobuf field, so this is not a SentencePiece ModelProto";
            int field = (int)Math.Min(tag >> 3, int.MaxValue);
            switch ((int)(tag & 7))
            {
                case 0: if (!ReadVarint(bytes, ref pos, out _)) return $"field {field} is cut off at byte {pos}"; break;
                case 1: pos += 8; break;
                case 5: pos += 4; break;
                case 2:
                    if (!ReadVarint(bytes, ref pos, out ulong length) || length > (ulong)(bytes.Length - pos))
                        return $"field {field} at byte {pos} is longer than the file";
                    pos += (int)length;
                    if (field == 1 && ++pieces > maxPieces) return $"it has more than {maxPieces:N0} pieces, {VocabularyLimitReason(maxPieces, modelVocabSize)}";
                    break;
                default: return $"field {field} has wire type {tag & 7}, which a SentencePiece ModelProto does not use";
            }
        }
        if (pos > bytes.Length) return "its last field is cut off";
        return pieces == 0 ? "it has no pieces (protobuf field 1)" : null;
    }

    private static bool ReadVarint(ReadOnlySpan<byte> b, ref int pos, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 64 && pos < b.Length; shift += 7)
        {
            byte x = b[pos++];
            value |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80) return true;
        }
        return false;
    }

    /// <summary>Ids past the tokenizer's own, up to the model's <c>vocab_size</c>: padding rows that decode to no text.</summary>
    private int _decodableLimit;

    /// <summary>
    /// BOS and EOS must be real tokens, not the image token; every id the tokenizer can produce (but the image token, whose
    /// positions take the projected image features) needs an embedding row, so <c>vocab_size</c> may be larger than the
    /// tokenizer (llava-hf pads 32002 tokens to 32064 rows) but not smaller.
    /// </summary>
    private void CheckAgainstModel(int? modelVocabSize, string configPath)
    {
        _decodableLimit = VocabSize;
        foreach (var (name, id) in new[] { ("bos_token", BosId), ("eos_token", EosId) })
            if (id == ImageTokenId)
                throw new ModelLoadException($"The tokenizer's {name} is the image token '{ImageToken}' (id {id}); {name} must be a text token.", configPath);
        if (modelVocabSize is not int vocab) return;
        int largest = _splitTokens.Where(t => t.Id != ImageTokenId).Select(t => t.Id).Append(_spVocabSize - 1).Max();
        if (largest >= vocab)
        {
            string which = largest < _spVocabSize ? $"its SentencePiece model has {_spVocabSize} pieces" : $"token '{_addedContent.GetValueOrDefault(largest) ?? IdToPiece(largest)}' has id {largest}";
            throw new ModelLoadException(
                $"config.json says text_config.vocab_size = {vocab}, but the tokenizer can produce id {largest} ({which}): every id the tokenizer produces needs an embedding row, so vocab_size must be at least {largest + 1}.",
                configPath);
        }
        _decodableLimit = Math.Max(VocabSize, vocab);
    }

    private static string? TokenContent(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
            _ => null,
        };
    }

    private static bool TryGetId(SentencePieceTokenizer sp, IReadOnlyDictionary<string, (int Id, bool Special)> added, string token, out int id)
    {
        if (added.TryGetValue(token, out var a)) { id = a.Id; return true; }
        return sp.Vocabulary.TryGetValue(token, out id);
    }

    /// <summary>
    /// Encodes a prompt the way the Hugging Face llava processor does: BOS, the text split at special
    /// tokens, each <c>&lt;image&gt;</c> expanded to <paramref name="imageTokenCount"/> image tokens.
    /// </summary>
    public int[] EncodePrompt(string prompt, int imageTokenCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(imageTokenCount);
        return EncodePrompt(prompt, _ => imageTokenCount);
    }

    /// <summary>
    /// As <see cref="EncodePrompt(string, int)"/>, with the k-th <c>&lt;image&gt;</c> placeholder expanded to
    /// <c>imageTokenCounts[k]</c> image tokens (LLaVA-NeXT: the count depends on each image's size).
    /// </summary>
    public int[] EncodePrompt(string prompt, IReadOnlyList<int> imageTokenCounts)
    {
        ArgumentNullException.ThrowIfNull(imageTokenCounts);
        return EncodePrompt(prompt, k => k < imageTokenCounts.Count ? imageTokenCounts[k]
            : throw new ArgumentException($"The prompt has more {ImageToken} placeholders than the {imageTokenCounts.Count} image token count(s) given.", nameof(imageTokenCounts)));
    }

    private int[] EncodePrompt(string prompt, Func<int, int> tokensOfImage)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = new List<int>(prompt.Length + 1);
        int image = 0;
        if (_addBos) ids.Add(BosId);
        int pos = 0;
        while (pos <= prompt.Length)
        {
            var (next, tokenText, tokenId) = FindNextSpecial(prompt, pos);
            if (next > pos) EncodeText(prompt.AsSpan(pos, next - pos), atStart: pos == 0, ids);
            if (tokenText is null) break;
            if (tokenId == ImageTokenId)
                ids.AddRange(Enumerable.Repeat(ImageTokenId, tokensOfImage(image++)));
            else
                ids.Add(tokenId);
            pos = next + tokenText.Length;
        }
        return ids.ToArray();
    }

    /// <summary>Encodes plain text (no special tokens recognised, no BOS), with the dummy prefix when <paramref name="atStart"/>.</summary>
    public int[] EncodeText(string text, bool atStart)
    {
        var ids = new List<int>();
        EncodeText(text, atStart, ids);
        return ids.ToArray();
    }

    private void EncodeText(ReadOnlySpan<char> text, bool atStart, List<int> ids)
    {
        if (text.IsEmpty) return;
        // Hugging Face's non-legacy Llama tokenizer: "▁" in the text is treated as a space, spaces are
        // escaped to "▁", and only text at the very start of the prompt gets the dummy prefix.
        var sb = new StringBuilder(text.Length + 1);
        if (_addDummyPrefix && (atStart || _legacy)) sb.Append(SpaceSymbol);
        foreach (char c in text) sb.Append(c == ' ' ? SpaceSymbol : c);
        ids.AddRange(_sp.EncodeToIds(sb.ToString(), addBeginningOfSentence: false, addEndOfSentence: false,
            considerPreTokenization: false, considerNormalization: false));
    }

    private (int Index, string? Text, int Id) FindNextSpecial(string s, int start)
    {
        for (int i = start; i < s.Length; i++)
        {
            foreach (var (text, id) in _splitTokens)
                if (text.Length > 0 && i + text.Length <= s.Length && string.CompareOrdinal(s, i, text, 0, text.Length) == 0)
                    return (i, text, id);
        }
        return (s.Length, null, -1);
    }

    /// <summary>
    /// Decodes ids to text, skipping special tokens (BOS, EOS, UNK, <c>&lt;image&gt;</c>, <c>&lt;pad&gt;</c>):
    /// ▁ becomes a space, the leading space of the first piece is dropped, byte-fallback pieces
    /// <c>&lt;0xNN&gt;</c> are assembled into UTF-8 (an incomplete sequence becomes U+FFFD).
    /// </summary>
    public string Decode(IReadOnlyList<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        // Hugging Face's Llama decoder: ▁ -> space, byte-fallback pieces fused into UTF-8, then one
        // leading space stripped. (Done here rather than by SentencePieceTokenizer.Decode, which drops the
        // space of a ▁-piece that follows byte pieces at the start of the ids, which breaks streaming.)
        EnsurePieces();
        var sb = new StringBuilder();
        Span<byte> bytes = ids.Count <= 256 ? stackalloc byte[ids.Count] : new byte[ids.Count];
        int nBytes = 0;
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)Math.Max(VocabSize, _decodableLimit)) throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary (0..{Math.Max(VocabSize, _decodableLimit) - 1}).");
            if (id >= VocabSize) continue; // an embedding row past the tokenizer's ids (vocab_size padding): no text
            if (_skipOnDecode.Contains(id)) continue;
            if (id < _spVocabSize && _byteValue![id] >= 0) { bytes[nBytes++] = (byte)_byteValue[id]; continue; }
            if (nBytes > 0) { sb.Append(Encoding.UTF8.GetString(bytes[..nBytes])); nBytes = 0; }
            string? piece = id < _spVocabSize ? _pieces![id] : _addedContent.GetValueOrDefault(id);
            if (piece is null) continue;
            if (id < _spVocabSize) sb.Append(piece.Replace(SpaceSymbol, ' ')); else sb.Append(piece);
        }
        if (nBytes > 0) sb.Append(Encoding.UTF8.GetString(bytes[..nBytes]));
        if (sb.Length > 0 && sb[0] == ' ') sb.Remove(0, 1);
        return sb.ToString();
    }

    private string[]? _pieces;
    private short[]? _byteValue;

    private void EnsurePieces()
    {
        if (_pieces is not null) return;
        var arr = new string[_spVocabSize];
        var bv = new short[_spVocabSize];
        foreach (var (piece, pid) in _sp.Vocabulary) if ((uint)pid < (uint)arr.Length) arr[pid] = piece;
        for (int i = 0; i < arr.Length; i++)
        {
            string? p = arr[i];
            bv[i] = _sp.ByteFallback && p is { Length: 6 } && p.StartsWith("<0x", StringComparison.Ordinal) && p[5] == '>'
                    && byte.TryParse(p.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte v) ? v : (short)-1;
        }
        _byteValue = bv;
        _pieces = arr;
    }

    /// <summary>The SentencePiece piece (or added token text) of an id, e.g. <c>▁USER</c>, <c>&lt;0x0A&gt;</c>.</summary>
    public string? IdToPiece(int id)
    {
        EnsurePieces();
        if ((uint)id < (uint)_pieces!.Length) return _pieces[id];
        return _addedContent.TryGetValue(id, out var c) ? c : null;
    }

    /// <summary>
    /// Every id's decoded bytes, as <see cref="Decode"/> writes them (structured output masks tokens by them): a piece's
    /// UTF-8 with ▁ as a space, a byte-fallback piece <c>&lt;0xNN&gt;</c> its byte, an added token that is not special its
    /// text; null for the ids that decode to nothing (BOS, EOS, UNK, <c>&lt;image&gt;</c>, <c>&lt;pad&gt;</c>, other special
    /// tokens). <see cref="Decode"/> drops one leading space of the whole answer, which this list does not show.
    /// </summary>
    public byte[]?[] TokenBytes()
    {
        EnsurePieces();
        var result = new byte[]?[VocabSize];
        for (int id = 0; id < VocabSize; id++)
        {
            if (_skipOnDecode.Contains(id)) continue;
            if (id < _spVocabSize)
            {
                if (_byteValue![id] >= 0) result[id] = [(byte)_byteValue[id]];
                else if (_pieces![id] is { } piece) result[id] = Encoding.UTF8.GetBytes(piece.Replace(SpaceSymbol, ' '));
            }
            else if (_addedContent.TryGetValue(id, out var text)) result[id] = Encoding.UTF8.GetBytes(text);
        }
        return result;
    }

    /// <summary>Creates an incremental decoder for streaming generation.</summary>
    public StreamingDecoder CreateStreamingDecoder() => new(this);

    /// <summary>
    /// Turns a growing sequence of generated ids into text deltas, so that the concatenation of all
    /// deltas (plus <see cref="Flush"/>) equals <see cref="Decode"/> of all ids. Text is held back while
    /// it ends in an incomplete UTF-8 sequence of byte-fallback tokens. (The prefix/read offset scheme of
    /// Hugging Face text-generation-inference: only a short window of ids is re-decoded per token.)
    /// </summary>
    internal sealed class StreamingDecoder : Models.ITokenStream
    {
        private readonly LlavaTokenizer _tok;
        private readonly List<int> _ids = new();
        private int _prefixOffset;
        private int _readOffset;

        internal StreamingDecoder(LlavaTokenizer tok) => _tok = tok;

        /// <summary>All ids pushed so far (special tokens included).</summary>
        public IReadOnlyList<int> Ids => _ids;

        /// <summary>Adds one generated id; returns the new text it completes ("" if none yet).</summary>
        public string Push(int id)
        {
            _ids.Add(id);
            if (_tok._skipOnDecode.Contains(id)) return string.Empty;
            string prefixText = _tok.Decode(Slice(_prefixOffset, _readOffset));
            string newText = _tok.Decode(Slice(_prefixOffset, _ids.Count));
            if (newText.Length > prefixText.Length && !newText.EndsWith('\uFFFD') && newText.StartsWith(prefixText, StringComparison.Ordinal))
            {
                _prefixOffset = _readOffset;
                _readOffset = _ids.Count;
                return newText[prefixText.Length..];
            }
            return string.Empty;
        }

        /// <summary>Returns text still held back (an unfinished UTF-8 sequence decodes to U+FFFD).</summary>
        public string Flush()
        {
            string prefixText = _tok.Decode(Slice(_prefixOffset, _readOffset));
            string newText = _tok.Decode(Slice(_prefixOffset, _ids.Count));
            _prefixOffset = _readOffset = _ids.Count;
            return newText.Length > prefixText.Length && newText.StartsWith(prefixText, StringComparison.Ordinal)
                ? newText[prefixText.Length..] : string.Empty;
        }

        private List<int> Slice(int from, int to) => _ids.GetRange(from, to - from);
    }

    /// <summary>
    /// The llava-1.5 conversation template (LLaVA's <c>conv_vicuna_v1</c>, which the llava-hf chat
    /// template reproduces for the single-turn case), the one place where prompts are formatted:
    /// <code>[SYSTEM_TEXT ]USER: &lt;image&gt;\n{q1} ASSISTANT: {a1}&lt;/s&gt;USER: {q2} ASSISTANT:</code>
    /// <list type="bullet">
    /// <item>The system text (the <paramref name="systemText"/> argument or a leading <c>system</c> turn) comes first, followed by one space. llava-1.5-hf has none by default.</item>
    /// <item><paramref name="imageCount"/> <c>&lt;image&gt;\n</c> placeholders go at the start of the first user turn, unless its text already contains <c>&lt;image&gt;</c>.</item>
    /// <item>Each user turn is <c>USER: {text} </c>; each assistant turn is <c>ASSISTANT: {text}&lt;/s&gt;</c>.</item>
    /// <item>When the last turn is the user's, the generation prompt <c>ASSISTANT:</c> ends the text.</item>
    /// </list>
    /// The single-turn case is exactly <c>USER: &lt;image&gt;\n{question} ASSISTANT:</c>.
    /// </summary>
    /// <param name="turns">Roles <c>system</c> (first only), <c>user</c>, <c>assistant</c> (case-insensitive).</param>
    public static string FormatConversation(IReadOnlyList<(string role, string text)> turns, string? systemText = null, int imageCount = 1,
        string imageToken = "<image>", string eosToken = "</s>")
    {
        ArgumentNullException.ThrowIfNull(turns);
        ArgumentOutOfRangeException.ThrowIfNegative(imageCount);
        var sb = new StringBuilder();
        int start = 0;
        if (turns.Count > 0 && string.Equals(turns[0].role, "system", StringComparison.OrdinalIgnoreCase))
        {
            systemText = string.IsNullOrEmpty(systemText) ? turns[0].text : systemText + " " + turns[0].text;
            start = 1;
        }
        if (!string.IsNullOrEmpty(systemText)) sb.Append(systemText).Append(' ');
        bool firstUser = true;
        bool lastWasUser = false;
        for (int i = start; i < turns.Count; i++)
        {
            var (role, text) = turns[i];
            if (string.Equals(role, "user", StringComparison.OrdinalIgnoreCase))
            {
                sb.Append("USER: ");
                if (firstUser && !text.Contains(imageToken, StringComparison.Ordinal))
                    for (int k = 0; k < imageCount; k++) sb.Append(imageToken).Append('\n');
                firstUser = false;
                sb.Append(text).Append(' ');
                lastWasUser = true;
            }
            else if (string.Equals(role, "assistant", StringComparison.OrdinalIgnoreCase))
            {
                sb.Append("ASSISTANT: ").Append(text).Append(eosToken);
                lastWasUser = false;
            }
            else
            {
                throw new ArgumentException($"Unknown role '{role}' at turn {i}: expected user or assistant (system only first).", nameof(turns));
            }
        }
        if (lastWasUser) sb.Append("ASSISTANT:");
        return sb.ToString();
    }
}
