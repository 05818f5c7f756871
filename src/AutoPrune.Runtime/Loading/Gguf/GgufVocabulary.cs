using Microsoft.ML.Tokenizers;
using AutoPrune.Loading.Text;

namespace AutoPrune.Loading.Gguf;

/// <summary>
/// The vocabulary of a GGUF text model (<c>tokenizer.ggml.*</c>), for the SentencePiece ("llama") tokenizer llama.cpp
/// calls SPM: tokens, scores and token types, the special ids, <c>add_bos_token</c> / <c>add_eos_token</c> /
/// <c>add_space_prefix</c>, and <c>tokenizer.chat_template</c> when present. <see cref="ToSentencePieceModel"/> turns it back
/// into a SentencePiece <c>ModelProto</c> (a BPE model whose merges follow the scores, byte fallback when the vocabulary has
/// byte tokens), which Microsoft.ML.Tokenizers' <see cref="SentencePieceTokenizer"/> runs, exactly as llama.cpp and
/// SentencePiece segment.
/// </summary>
internal sealed class GgufVocabulary
{
    /// <summary>llama.cpp's token types (<c>llama_token_type</c>), the same numbers as SentencePiece's piece types.</summary>
    public const int Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    public required string Model { get; init; }
    public required string[] Tokens { get; init; }
    public required float[] Scores { get; init; }
    public required int[] Types { get; init; }
    public required int BosId { get; init; }
    public required int EosId { get; init; }
    public int? PadId { get; init; }
    public required int UnknownId { get; init; }
    public required bool AddBos { get; init; }
    public required bool AddEos { get; init; }
    public required bool AddSpacePrefix { get; init; }
    public string? ChatTemplate { get; init; }

    /// <summary>
    /// Tokens matched as a whole in prompt text (CONTROL and USER_DEFINED ones, <c>&lt;image&gt;</c>, <c>&lt;pad&gt;</c>), except
    /// BOS/EOS/UNK, which SentencePiece knows itself; <c>Special</c> is true for CONTROL tokens (skipped when decoding).
    /// </summary>
    public IReadOnlyList<(string Content, int Id, bool Special)> AddedTokens =>
        Enumerable.Range(0, Tokens.Length)
            .Where(i => Types[i] is Control or UserDefined && i != BosId && i != EosId && i != UnknownId)
            .Select(i => (Tokens[i], i, Types[i] == Control)).ToList();

    /// <summary>Reads and checks the vocabulary of <paramref name="file"/>: every array the same length, ids inside it.</summary>
    public static GgufVocabulary Read(GgufFile file)
    {
        string path = file.Path;
        string model = file.Require("tokenizer.ggml.model", file.GetString("tokenizer.ggml.model"));
        if (model != "llama")
            throw new ModelLoadException(
                $"GGUF file '{path}': tokenizer.ggml.model = '{model}'; only 'llama' (SentencePiece) vocabularies are supported for LLaVA-1.5 (Llama 2 / Vicuna / Mistral).", path, "tokenizer.ggml.model");
        string[] tokens = ArrayOf<string>(file, "tokenizer.ggml.tokens", required: true)!;
        if (tokens.Length == 0) throw new ModelLoadException($"GGUF file '{path}': tokenizer.ggml.tokens is empty.", path, "tokenizer.ggml.tokens");
        float[] scores = Floats(file, "tokenizer.ggml.scores") ?? new float[tokens.Length];
        int[] types = Ints(file, "tokenizer.ggml.token_type") ?? Enumerable.Repeat(Normal, tokens.Length).ToArray();
        foreach (var (key, n) in new[] { ("tokenizer.ggml.scores", scores.Length), ("tokenizer.ggml.token_type", types.Length) })
            if (n != tokens.Length)
                throw new ModelLoadException($"GGUF file '{path}': {key} has {n} entries but tokenizer.ggml.tokens has {tokens.Length}.", path, key);
        for (int i = 0; i < types.Length; i++)
            if (types[i] is < Undefined or > Byte)
                throw new ModelLoadException($"GGUF file '{path}': tokenizer.ggml.token_type[{i}] = {types[i]}; expected a token type 0-6.", path, "tokenizer.ggml.token_type");
        for (int i = 0; i < scores.Length; i++)
            if (!float.IsFinite(scores[i]))
                throw new ModelLoadException($"GGUF file '{path}': tokenizer.ggml.scores[{i}] = {scores[i]}; expected a finite score.", path, "tokenizer.ggml.scores");
        int Id(string key, int? fallback)
        {
            long? v = file.GetInteger(key, 0, tokens.Length - 1);
            if (v is null && fallback is null) throw new ModelLoadException($"GGUF file '{path}' has no metadata '{key}', which is required here.", path, key);
            return (int)(v ?? fallback!.Value);
        }
        int unk = Array.IndexOf(types, Unknown);
        return new GgufVocabulary
        {
            Model = model,
            Tokens = tokens,
            Scores = scores,
            Types = types,
            BosId = Id("tokenizer.ggml.bos_token_id", 1),
            EosId = Id("tokenizer.ggml.eos_token_id", 2),
            PadId = file.GetInteger("tokenizer.ggml.padding_token_id", 0, tokens.Length - 1) is long p ? (int)p : null,
            UnknownId = Id("tokenizer.ggml.unknown_token_id", unk >= 0 ? unk : 0),
            AddBos = file.GetBool("tokenizer.ggml.add_bos_token") ?? true,
            AddEos = file.GetBool("tokenizer.ggml.add_eos_token") ?? false,
            AddSpacePrefix = file.GetBool("tokenizer.ggml.add_space_prefix") ?? true,
            ChatTemplate = file.GetString("tokenizer.chat_template"),
        };
    }

    /// <summary>The id of a token text, or -1.</summary>
    public int IdOf(string token) => Array.IndexOf(Tokens, token);

    /// <summary>A SentencePiece <c>ModelProto</c> with these pieces (same ids, scores and types), BPE, byte fallback when byte tokens exist.</summary>
    public byte[] ToSentencePieceModel()
    {
        using var ms = new MemoryStream();
        for (int id = 0; id < Tokens.Length; id++)
        {
            var pm = new MemoryStream();
            TokenizerJsonConverter.WriteString(pm, 1, Tokens[id]);
            TokenizerJsonConverter.WriteFloat(pm, 2, Scores[id]);
            TokenizerJsonConverter.WriteVarintField(pm, 3, (ulong)(Types[id] == Undefined ? Normal : Types[id]));
            TokenizerJsonConverter.WriteBytes(ms, 1, pm.ToArray());
        }
        bool byteFallback = Types.Contains(Byte);
        var trainer = new MemoryStream();
        TokenizerJsonConverter.WriteVarintField(trainer, 3, 2); // model_type = BPE
        TokenizerJsonConverter.WriteVarintField(trainer, 4, (ulong)Tokens.Length); // vocab_size
        TokenizerJsonConverter.WriteVarintField(trainer, 35, byteFallback ? 1UL : 0UL); // byte_fallback
        TokenizerJsonConverter.WriteVarintField(trainer, 40, (ulong)UnknownId); // unk_id
        TokenizerJsonConverter.WriteVarintField(trainer, 41, (ulong)BosId); // bos_id
        TokenizerJsonConverter.WriteVarintField(trainer, 42, (ulong)EosId); // eos_id
        TokenizerJsonConverter.WriteVarintField(trainer, 43, unchecked((ulong)-1L)); // pad_id: none (the pad token is an added token)
        TokenizerJsonConverter.WriteBytes(ms, 2, trainer.ToArray());
        var norm = new MemoryStream();
        TokenizerJsonConverter.WriteString(norm, 1, "identity");
        TokenizerJsonConverter.WriteVarintField(norm, 3, AddSpacePrefix ? 1UL : 0UL); // add_dummy_prefix
        TokenizerJsonConverter.WriteVarintField(norm, 4, 0); // remove_extra_whitespaces
        TokenizerJsonConverter.WriteVarintField(norm, 5, 1); // escape_whitespaces
        TokenizerJsonConverter.WriteBytes(ms, 3, norm.ToArray());
        return ms.ToArray();
    }

    /// <summary>Microsoft.ML.Tokenizers' SentencePiece tokenizer over <see cref="ToSentencePieceModel"/> (no BOS/EOS added by it).</summary>
    public SentencePieceTokenizer CreateTokenizer()
    {
        using var ms = new MemoryStream(ToSentencePieceModel(), writable: false);
        return SentencePieceTokenizer.Create(ms, false, false);
    }

    /// <summary>Plain text → ids as llama.cpp tokenizes a prompt: BOS when <see cref="AddBos"/>, then SentencePiece with its dummy prefix.</summary>
    public int[] Encode(SentencePieceTokenizer sp, string text)
    {
        var ids = new List<int>();
        if (AddBos) ids.Add(BosId);
        ids.AddRange(sp.EncodeToIds(text));
        if (AddEos) ids.Add(EosId);
        return ids.ToArray();
    }

    private static T[]? ArrayOf<T>(GgufFile f, string key, bool required)
    {
        if (!f.TryGetValue(key, out var v))
            return required ? throw new ModelLoadException($"GGUF file '{f.Path}' has no metadata '{key}', which is required here.", f.Path, key) : null;
        if (!v.TryGetArray<T>(out var items)) throw f.WrongType(key, v, $"array[{GgufValue.TypeNameOf(GgufValue.ElementTypeOf(typeof(T)))}]");
        return items;
    }

    private static float[]? Floats(GgufFile f, string key)
    {
        if (!f.TryGetValue(key, out var v)) return null;
        if (!v.TryGetFloatArray(out var items)) throw f.WrongType(key, v, "array[float32]");
        return items;
    }

    private static int[]? Ints(GgufFile f, string key)
    {
        if (!f.TryGetValue(key, out var v)) return null;
        if (!v.TryGetIntegerArray(out var items)) throw f.WrongType(key, v, "an integer array");
        return items.Select(x => x is < int.MinValue or > int.MaxValue ? -1 : (int)x).ToArray();
    }
}
