using System.Text;
using System.Text.Json;
using AutoPrune.Loading;
using Microsoft.ML.Tokenizers;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// The tokenizer of a Qwen2.5-VL checkpoint: Qwen2's byte-level BPE from <c>tokenizer.json</c>, with its added tokens.
/// <para>
/// Encoding follows Hugging Face tokenizers: the added tokens (<c>&lt;|im_start|&gt;</c>, <c>&lt;|image_pad|&gt;</c>, ...)
/// are split out of the raw text first (leftmost match, the longest where several start at one place) and never
/// normalised; each text segment between them is NFC-normalised, split by <see cref="Qwen2PreTokenizer"/>, mapped to
/// GPT-2's byte alphabet (<see cref="ByteLevelAlphabet"/>) and merged by Microsoft.ML.Tokenizers'
/// <see cref="BpeTokenizer"/> (byte level, the lowest-rank merge first). Decoding maps each token's characters back to
/// bytes and decodes the concatenated bytes as UTF-8, an invalid or unfinished sequence becoming U+FFFD as in the
/// ByteLevel decoder; the streaming decoder holds back an unfinished character until its last byte arrives.
/// </para>
/// <para>
/// End tokens: <c>generation_config.json</c>'s <c>eos_token_id</c> (one id or a list), else config.json's, else
/// <c>tokenizer_config.json</c>'s <c>eos_token</c>.
/// </para>
/// </summary>
internal sealed class Qwen2Tokenizer : ITextTokenizer
{
    public bool IsEnd(int id) => EosIds.Contains(id);
    IReadOnlyList<int> ITextTokenizer.EndIds => EosIds;
    bool ITextTokenizer.DropsLeadingSpace => false;
    ITokenStream ITextTokenizer.CreateStreamingDecoder() => CreateStreamingDecoder();

    public const string TokenizerFile = "tokenizer.json";
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string GenerationConfigFile = "generation_config.json";

    public const string ImagePad = "<|image_pad|>";
    public const string VideoPad = "<|video_pad|>";
    public const string VisionStart = "<|vision_start|>";
    public const string VisionEnd = "<|vision_end|>";
    public const string ImStart = "<|im_start|>";
    public const string ImEnd = "<|im_end|>";

    private readonly BpeTokenizer _bpe;
    private readonly string?[] _tokenText;   // id -> vocabulary token (byte alphabet) or added token content
    private readonly bool[] _isAdded, _isSpecial;
    private readonly Dictionary<char, (string Text, int Id)[]> _addedByFirstChar; // longest first
    private readonly Dictionary<string, int> _added;
    private readonly bool _nfc;
    private readonly int _decodableLimit;

    private Qwen2Tokenizer(BpeTokenizer bpe, Qwen2TokenizerJson json, IReadOnlyList<int> eosIds, int? padId, int decodableLimit)
    {
        _bpe = bpe;
        _nfc = json.Nfc;
        int maxId = Math.Max(json.Vocab.Values.Max(), json.Added.Count == 0 ? -1 : json.Added.Max(a => a.Id));
        VocabSize = maxId + 1;
        _tokenText = new string?[VocabSize];
        _isAdded = new bool[VocabSize];
        _isSpecial = new bool[VocabSize];
        foreach (var (token, id) in json.Vocab) _tokenText[id] = token;
        _added = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var a in json.Added)
        {
            _tokenText[a.Id] = a.Content;
            _isAdded[a.Id] = true;
            _isSpecial[a.Id] = a.Special;
            _added[a.Content] = a.Id;
        }
        _addedByFirstChar = _added.GroupBy(kv => kv.Key[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(kv => kv.Key.Length).ThenBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (kv.Key, kv.Value)).ToArray());
        EosIds = eosIds;
        PadId = padId;
        _decodableLimit = Math.Max(VocabSize, decodableLimit);
        LongestTokenChars = Math.Max(json.Vocab.Keys.Max(k => k.Length), json.Added.Count == 0 ? 1 : json.Added.Max(a => a.Content.Length));
        ImageTokenId = IdOf(ImagePad);
        VideoTokenId = IdOf(VideoPad);
        VisionStartId = IdOf(VisionStart);
        VisionEndId = IdOf(VisionEnd);
    }

    /// <summary>Ids the tokenizer knows: the vocabulary and the added tokens (570 for the fixture, 151,665 for Qwen2.5).</summary>
    public int VocabSize { get; }

    /// <summary>Every id that ends generation (generation_config.json's list); the first is <see cref="EosId"/>.</summary>
    public IReadOnlyList<int> EosIds { get; }

    /// <summary>The primary end token (<c>&lt;|im_end|&gt;</c> for the instruct models).</summary>
    public int EosId => EosIds[0];
    public int? PadId { get; }
    public int ImageTokenId { get; }
    public int VideoTokenId { get; }
    public int VisionStartId { get; }
    public int VisionEndId { get; }

    /// <summary>The placeholder text of the image token in prompts.</summary>
    public string ImageToken => ImagePad;

    /// <summary>Characters of the longest token or added token: no token of a prompt covers more of its text.</summary>
    public int LongestTokenChars { get; }

    /// <summary>The id of an added token, or -1.</summary>
    public int AddedTokenId(string content) => _added.TryGetValue(content, out int id) ? id : -1;

    /// <summary>True for an added token marked special (skipped by <see cref="Decode"/> by default).</summary>
    public bool IsSpecial(int id) => (uint)id < (uint)_isSpecial.Length && _isSpecial[id];

    private int IdOf(string content) => _added.TryGetValue(content, out int id) ? id : -1;

    // ------------------------------------------------------------------ loading

    /// <summary>
    /// Loads <c>tokenizer.json</c> (required), <c>tokenizer_config.json</c> and <c>generation_config.json</c> (optional) of a
    /// checkpoint folder.
    /// </summary>
    /// <param name="config">The checkpoint's config: its token ids must be the tokenizer's, its vocab_size must hold every id
    /// the tokenizer produces, and its eos ids are the fallback end tokens.</param>
    /// <exception cref="ModelLoadException">A file missing, over its limit, malformed, or disagreeing with another, named.</exception>
    public static Qwen2Tokenizer Load(string folder, Qwen2VLConfig? config = null, InputFileLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        limits ??= new InputFileLimits();
        if (!Directory.Exists(folder))
            throw new ModelLoadException($"Model folder '{folder}' does not exist.", folder);
        string path = Path.Combine(folder, TokenizerFile);
        if (!File.Exists(path))
        {
            string hint = File.Exists(Path.Combine(folder, "vocab.json")) ? " (vocab.json and merges.txt alone are not read: they lack the added tokens and the pipeline)" : "";
            throw new ModelLoadException($"'{TokenizerFile}' not found in '{folder}'{hint}. Files present: {SafeTensorStore.ListFolder(folder)}.", path);
        }
        var json = Qwen2TokenizerJson.Parse(ModelFiles.ReadBytes(path, limits.TokenizerBytes, "ModelOptions.FileLimits.TokenizerBytes"), path);
        CheckTables(json, path);

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(json.Vocab.Select(kv => new KeyValuePair<string, int>(kv.Key, kv.Value)))
            {
                Merges = json.Merges.Select(m => m.Left + " " + m.Right),
                ByteLevel = true,
                PreTokenizer = Qwen2PreTokenizer.Instance,
            });
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new ModelLoadException($"Tokenizer file '{path}': Microsoft.ML.Tokenizers refused the vocabulary or merges: {ex.Message}", path, null, ex);
        }

        // tokenizer_config.json: eos and pad tokens by name; its added_tokens_decoder must agree with tokenizer.json.
        string configPath = Path.Combine(folder, TokenizerConfigFile);
        string? eosToken = null, padToken = null;
        var added = json.Added.ToDictionary(a => a.Content, a => a.Id, StringComparer.Ordinal);
        if (File.Exists(configPath))
        {
            try
            {
                using var doc = JsonDocument.Parse(ModelFiles.ReadBytes(configPath, limits.ConfigBytes, "ModelOptions.FileLimits.ConfigBytes"));
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                    throw new ModelLoadException($"Tokenizer config '{configPath}' must be a JSON object but is {root.ValueKind}.", configPath);
                eosToken = TokenContent(root, "eos_token", configPath);
                padToken = TokenContent(root, "pad_token", configPath);
                if (root.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
                    foreach (var p in dec.EnumerateObject())
                    {
                        string? content = p.Value.ValueKind == JsonValueKind.Object && p.Value.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() : null;
                        if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id) || content is null)
                            throw new ModelLoadException($"Tokenizer config '{configPath}': added_tokens_decoder entry '{Qwen2TokenizerJson.Show(p.Name)}' must map an id to {{\"content\": ...}}.", configPath);
                        if (!added.TryGetValue(content, out int jsonId) || jsonId != id)
                            throw new ModelLoadException(
                                $"Tokenizer config '{configPath}': added_tokens_decoder gives '{Qwen2TokenizerJson.Show(content)}' id {id}, but '{path}' " +
                                (added.TryGetValue(content, out jsonId) ? $"gives it id {jsonId}." : "does not list it among its added_tokens."), configPath);
                    }
            }
            catch (JsonException ex)
            {
                throw new ModelLoadException($"Tokenizer config '{configPath}' is not valid JSON: {ex.Message}", configPath, null, ex);
            }
            catch (InvalidOperationException ex)
            {
                throw new ModelLoadException($"Tokenizer config '{configPath}' holds a value that cannot be read: {ex.Message}", configPath, null, ex);
            }
        }

        int ResolveToken(string token, string field, string file)
        {
            if (added.TryGetValue(token, out int id)) return id;
            if (json.Vocab.TryGetValue(token, out id)) return id;
            throw new ModelLoadException($"'{file}': {field} '{Qwen2TokenizerJson.Show(token)}' is not a token of '{path}'.", file);
        }

        int? padId = padToken is null ? null : ResolveToken(padToken, "pad_token", configPath);
        var eos = ReadGenerationEos(folder, limits) ?? (config?.Text.EosTokenIds is { Count: > 0 } ce ? ce.ToArray() : null)
                  ?? (eosToken is not null ? new[] { ResolveToken(eosToken, "eos_token", configPath) } : null)
                  ?? (added.TryGetValue(ImEnd, out int imEnd) ? new[] { imEnd } : null)
                  ?? throw new ModelLoadException($"No end token found: neither '{GenerationConfigFile}', config.json nor '{TokenizerConfigFile}' gives eos_token_id / eos_token, and '{path}' has no {ImEnd}.", path);

        int modelVocab = config?.Text.VocabSize ?? 0;
        var tok = new Qwen2Tokenizer(bpe, json, eos, padId, modelVocab);
        tok.CheckAgainst(config, path);
        return tok;
    }

    /// <summary>The vocabulary must be a byte-level one, and the merges and added tokens must fit it.</summary>
    private static void CheckTables(Qwen2TokenizerJson json, string path)
    {
        ModelLoadException Bad(string what) => new($"Tokenizer file '{path}': {what}", path);
        foreach (var (token, id) in json.Vocab)
            foreach (char ch in token)
                if (!ByteLevelAlphabet.IsByteChar(ch))
                    throw Bad($"model.vocab token '{Qwen2TokenizerJson.Show(token)}' (id {id}) has the character U+{(int)ch:X4}, which is not in the byte-level alphabet; a Qwen2 vocabulary spells every token in GPT-2's byte characters.");
        for (int b = 0; b < 256; b++)
        {
            string s = ByteLevelAlphabet.CharOf((byte)b).ToString();
            if (!json.Vocab.ContainsKey(s))
                throw Bad($"model.vocab has no token for byte 0x{b:X2} ('{s}'); a byte-level BPE needs all 256 byte tokens so that any text can be encoded.");
        }
        for (int i = 0; i < json.Merges.Count; i++)
        {
            var (l, rt) = json.Merges[i];
            foreach (var part in new[] { l, rt, l + rt })
                if (!json.Vocab.ContainsKey(part))
                    throw Bad($"model.merges[{i}] ('{Qwen2TokenizerJson.Show(l)} {Qwen2TokenizerJson.Show(rt)}'): '{Qwen2TokenizerJson.Show(part)}' is not in model.vocab.");
        }
        var byId = json.Vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        var seenIds = new HashSet<int>();
        var seenContent = new HashSet<string>(StringComparer.Ordinal);
        foreach (var a in json.Added)
        {
            string which = $"added token '{Qwen2TokenizerJson.Show(a.Content)}' (id {a.Id})";
            if (!seenIds.Add(a.Id)) throw Bad($"added_tokens lists id {a.Id} twice.");
            if (!seenContent.Add(a.Content)) throw Bad($"added_tokens lists '{Qwen2TokenizerJson.Show(a.Content)}' twice.");
            if (byId.TryGetValue(a.Id, out var vocabToken) && vocabToken != a.Content)
                throw Bad($"{which} has the id of vocabulary token '{Qwen2TokenizerJson.Show(vocabToken)}'.");
            if (json.Vocab.TryGetValue(a.Content, out int vocabId) && vocabId != a.Id)
                throw Bad($"{which} is also vocabulary token id {vocabId}.");
            if (a.LStrip || a.RStrip || a.SingleWord)
                throw Bad($"{which} has lstrip, rstrip or single_word set; Qwen2's added tokens have none, and this loader does not apply them.");
            if (a.Normalized)
                throw Bad($"{which} has normalized: true; Qwen2's added tokens are matched in the raw text (normalized: false), and this loader supports only that.");
        }
    }

    /// <summary>config.json's token ids must name the vision markers of this tokenizer, and vocab_size must hold its ids.</summary>
    private void CheckAgainst(Qwen2VLConfig? config, string path)
    {
        foreach (var (name, id) in new[] { (ImagePad, ImageTokenId), (VideoPad, VideoTokenId), (VisionStart, VisionStartId), (VisionEnd, VisionEndId) })
            if (id < 0)
                throw new ModelLoadException($"Tokenizer file '{path}' has no added token {name}; a Qwen2.5-VL tokenizer marks images with {VisionStart}{ImagePad}{VisionEnd}.", path);
        foreach (int id in EosIds)
            if ((uint)id >= (uint)VocabSize)
                throw new ModelLoadException($"End token id {id} is not an id of the tokenizer in '{path}' (0..{VocabSize - 1}).", path);
        if (config is null) return;
        if (VocabSize > config.Text.VocabSize)
            throw new ModelLoadException(
                $"config.json says vocab_size = {config.Text.VocabSize}, but the tokenizer ('{path}') has ids up to {VocabSize - 1}: every id it produces needs an embedding row.", path);
        foreach (var (field, cid, tid, name) in new[]
        {
            ("image_token_id", config.ImageTokenId, ImageTokenId, ImagePad), ("video_token_id", config.VideoTokenId, VideoTokenId, VideoPad),
            ("vision_start_token_id", config.VisionStartTokenId, VisionStartId, VisionStart), ("vision_end_token_id", config.VisionEndTokenId, VisionEndId, VisionEnd),
        })
            if (cid != tid)
                throw new ModelLoadException($"config.json says {field} = {cid}, but the tokenizer ('{path}') gives {name} id {tid}.", path);
    }

    private static string? TokenContent(JsonElement root, string name, string file)
    {
        if (!root.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => throw new ModelLoadException($"Tokenizer config '{file}': {name} must be a token string or {{\"content\": ...}} but is {v.ValueKind}.", file),
        };
    }

    private static int[]? ReadGenerationEos(string folder, InputFileLimits limits)
    {
        string path = Path.Combine(folder, GenerationConfigFile);
        if (!File.Exists(path)) return null;
        try
        {
            using var doc = JsonDocument.Parse(ModelFiles.ReadBytes(path, limits.ConfigBytes, "ModelOptions.FileLimits.ConfigBytes"));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelLoadException($"Generation config '{path}' must be a JSON object but is {doc.RootElement.ValueKind}.", path);
            if (!doc.RootElement.TryGetProperty("eos_token_id", out var e) || e.ValueKind == JsonValueKind.Null) return null;
            int[] ids = e.ValueKind switch
            {
                JsonValueKind.Number when e.TryGetInt32(out int one) => [one],
                JsonValueKind.Array when e.GetArrayLength() is > 0 and <= 64 => e.EnumerateArray()
                    .Select(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int id) ? id : throw new ModelLoadException($"Generation config '{path}': eos_token_id holds {x.GetRawText()}; expected token ids.", path)).ToArray(),
                _ => throw new ModelLoadException($"Generation config '{path}': eos_token_id is {Qwen2TokenizerJson.Show(e.GetRawText())}; expected a token id or a list of 1 to 64 ids.", path),
            };
            return ids;
        }
        catch (JsonException ex)
        {
            throw new ModelLoadException($"Generation config '{path}' is not valid JSON: {ex.Message}", path, null, ex);
        }
    }

    // ------------------------------------------------------------------ encoding

    /// <summary>Encodes text as Hugging Face's tokenizer does (added tokens recognised, no expansion of image pads).</summary>
    /// <exception cref="ArgumentException">The text holds an unpaired UTF-16 surrogate (it is not Unicode text).</exception>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeInto(text, ids, null);
        return ids.ToArray();
    }

    /// <summary>
    /// Encodes a rendered prompt (see <see cref="Qwen2VLChatTemplate"/>) with the k-th <c>&lt;|image_pad|&gt;</c> expanded to
    /// <c>imageTokenCounts[k]</c> copies (grid_t·grid_h·grid_w / merge² for that image), as the processor does.
    /// </summary>
    /// <exception cref="ArgumentException">The number of image placeholders differs from the number of counts, a count is not
    /// positive, a video placeholder is present (videos are not supported yet), or the text is not valid UTF-16.</exception>
    public int[] EncodePrompt(string prompt, IReadOnlyList<int> imageTokenCounts)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(imageTokenCounts);
        foreach (int c in imageTokenCounts)
            if (c <= 0) throw new ArgumentException($"Image token counts must be positive (got {c}).", nameof(imageTokenCounts));
        var ids = new List<int>(prompt.Length / 3 + imageTokenCounts.Sum());
        int images = 0;
        EncodeInto(prompt, ids, id =>
        {
            if (id == VideoTokenId)
                throw new ArgumentException($"The prompt holds {VideoPad}: video inputs are not supported yet for Qwen2.5-VL.", nameof(prompt));
            if (id != ImageTokenId) return false;
            if (images >= imageTokenCounts.Count)
                throw new ArgumentException($"The prompt has more {ImagePad} placeholders than the {imageTokenCounts.Count} image(s) given.", nameof(prompt));
            ids.AddRange(Enumerable.Repeat(ImageTokenId, imageTokenCounts[images++]));
            return true;
        });
        if (images != imageTokenCounts.Count)
            throw new ArgumentException($"The prompt has {images} {ImagePad} placeholder(s) but {imageTokenCounts.Count} image(s) were given.", nameof(prompt));
        return ids.ToArray();
    }

    /// <summary>Splits out added tokens; <paramref name="onAdded"/> may emit an added token itself (returns true).</summary>
    private void EncodeInto(string text, List<int> ids, Func<int, bool>? onAdded)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            if (char.IsSurrogate(text[i]))
                throw new ArgumentException($"The text holds an unpaired UTF-16 surrogate (U+{(int)text[i]:X4}) at index {i}; it is not valid Unicode text.", nameof(text));
        }
        int pos = 0;
        while (pos < text.Length)
        {
            var (at, token, id) = FindNextAdded(text, pos);
            if (at > pos) EncodeSegment(text.AsSpan(pos, at - pos), ids);
            if (token is null) break;
            if (onAdded is null || !onAdded(id)) ids.Add(id);
            pos = at + token.Length;
        }
    }

    private void EncodeSegment(ReadOnlySpan<char> segment, List<int> ids)
    {
        string s = segment.ToString();
        if (_nfc && !s.IsNormalized(NormalizationForm.FormC)) s = s.Normalize(NormalizationForm.FormC);
        ids.AddRange(_bpe.EncodeToIds(s, considerPreTokenization: true, considerNormalization: false));
    }

    private (int Index, string? Text, int Id) FindNextAdded(string s, int start)
    {
        for (int i = start; i < s.Length; i++)
        {
            if (!_addedByFirstChar.TryGetValue(s[i], out var candidates)) continue;
            foreach (var (text, id) in candidates)
                if (i + text.Length <= s.Length && string.CompareOrdinal(s, i, text, 0, text.Length) == 0)
                    return (i, text, id);
        }
        return (s.Length, null, -1);
    }

    // ------------------------------------------------------------------ decoding

    /// <summary>
    /// Decodes ids to text as the ByteLevel decoder does: every token's bytes concatenated, then UTF-8 with U+FFFD for an
    /// invalid or unfinished sequence. Special added tokens are left out unless <paramref name="skipSpecialTokens"/> is false.
    /// Ids past the tokenizer's own but below the model's vocab_size (embedding padding) decode to nothing.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id outside the model's vocabulary.</exception>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new List<byte>(ids.Count * 4);
        foreach (int id in ids) AppendBytes(id, skipSpecialTokens, bytes);
        return Utf8.GetString(bytes.ToArray());
    }

    private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

    private void AppendBytes(int id, bool skipSpecial, List<byte> bytes)
    {
        if ((uint)id >= (uint)_decodableLimit)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"Token id {id} is outside the vocabulary (0..{_decodableLimit - 1}).");
        if (id >= VocabSize || _tokenText[id] is not { } text) return;
        if (_isAdded[id])
        {
            if (skipSpecial && _isSpecial[id]) return;
            // The ByteLevel decoder maps a token whose every character is a byte character, and takes others as UTF-8.
            if (text.All(ByteLevelAlphabet.IsByteChar)) foreach (char ch in text) bytes.Add(ByteLevelAlphabet.ByteOf(ch));
            else bytes.AddRange(Encoding.UTF8.GetBytes(text));
            return;
        }
        foreach (char ch in text) bytes.Add(ByteLevelAlphabet.ByteOf(ch));
    }

    /// <summary>
    /// Every id's decoded bytes, as <see cref="Decode"/> writes them (structured output masks tokens by them): a vocabulary
    /// token's characters mapped back through the byte-level alphabet, an added token that is not special its bytes; null
    /// for special added tokens (<c>&lt;|im_end|&gt;</c>, <c>&lt;|image_pad|&gt;</c>, ...) and unused ids.
    /// </summary>
    public byte[]?[] TokenBytes()
    {
        var result = new byte[]?[VocabSize];
        var bytes = new List<byte>(16);
        for (int id = 0; id < VocabSize; id++)
        {
            if (_tokenText[id] is null || _isSpecial[id]) continue;
            bytes.Clear();
            AppendBytes(id, skipSpecial: true, bytes);
            result[id] = bytes.ToArray();
        }
        return result;
    }

    /// <summary>Creates an incremental decoder for streaming generation.</summary>
    public StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => new(this, skipSpecialTokens);

    /// <summary>
    /// Turns generated ids into text deltas whose concatenation (with <see cref="Flush"/>) equals <see cref="Decode"/> of all
    /// ids. A character whose UTF-8 bytes are split over tokens is emitted once its last byte arrives; bytes that can no
    /// longer become a character are emitted as U+FFFD.
    /// </summary>
    internal sealed class StreamingDecoder : ITokenStream
    {
        private readonly Qwen2Tokenizer _tok;
        private readonly bool _skipSpecial;
        private readonly Decoder _utf8 = Utf8.GetDecoder();
        private readonly List<int> _ids = new();
        private readonly List<byte> _bytes = new(16);
        private char[] _chars = new char[64];

        internal StreamingDecoder(Qwen2Tokenizer tok, bool skipSpecial) { _tok = tok; _skipSpecial = skipSpecial; }

        /// <summary>All ids pushed so far.</summary>
        public IReadOnlyList<int> Ids => _ids;

        /// <summary>Adds one generated id; returns the text it completes ("" if none yet).</summary>
        public string Push(int id)
        {
            _bytes.Clear();
            _tok.AppendBytes(id, _skipSpecial, _bytes);
            _ids.Add(id);
            return Convert(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_bytes), flush: false);
        }

        /// <summary>Returns what is still held back (an unfinished character, as U+FFFD), and resets.</summary>
        public string Flush() => Convert([], flush: true);

        private string Convert(ReadOnlySpan<byte> bytes, bool flush)
        {
            int need = _utf8.GetCharCount(bytes, flush);
            if (need > _chars.Length) _chars = new char[Math.Max(need, _chars.Length * 2)];
            int n = _utf8.GetChars(bytes, _chars, flush);
            return n == 0 ? string.Empty : new string(_chars, 0, n);
        }
    }
}

/// <summary>
/// GPT-2's <c>bytes_to_unicode</c>: each byte is a printable character. The printable bytes <c>!</c>..<c>~</c>,
/// <c>¡</c>..<c>¬</c> and <c>®</c>..<c>ÿ</c> stand for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen)
/// become U+0100 onwards in byte order (space is <c>Ġ</c>, newline <c>Ċ</c>).
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] ByteToChar = BuildForward();
    private static readonly short[] CharToByte = BuildReverse();

    private static char[] BuildForward()
    {
        var map = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + next++);
        }
        return map;
    }

    private static short[] BuildReverse()
    {
        var rev = new short[324];
        Array.Fill(rev, (short)-1);
        for (int b = 0; b < 256; b++) rev[ByteToChar[b]] = (short)b;
        return rev;
    }

    public static char CharOf(byte b) => ByteToChar[b];

    public static bool IsByteChar(char c) => c < CharToByte.Length && CharToByte[c] >= 0;

    /// <summary>The byte a character of the alphabet stands for (the caller checked <see cref="IsByteChar"/>).</summary>
    public static byte ByteOf(char c) => (byte)CharToByte[c];
}
