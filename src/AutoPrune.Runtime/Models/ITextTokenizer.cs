namespace AutoPrune.Models;

/// <summary>What generation needs of a family's tokenizer (SentencePiece for LLaVA, byte-level BPE for Qwen2.5-VL).</summary>
internal interface ITextTokenizer
{
    /// <summary>Whether generating <paramref name="id"/> ends the answer (the family's end-of-sequence tokens).</summary>
    bool IsEnd(int id);

    /// <summary>A decoder that turns generated ids into text piece by piece, never emitting half a character.</summary>
    ITokenStream CreateStreamingDecoder();

    /// <summary>The most characters one token stands for (bounds a prompt's characters by its token limit).</summary>
    int LongestTokenChars { get; }

    /// <summary>Every id that ends generation.</summary>
    IReadOnlyList<int> EndIds { get; }

    /// <summary>Each id's bytes as generated text (null for ids that never appear in an answer), for structured output.</summary>
    byte[]?[] TokenBytes();

    /// <summary>Whether the streaming decoder drops one leading space of the answer (SentencePiece Llama decoding).</summary>
    bool DropsLeadingSpace { get; }
}

/// <summary>Turns generated ids into text as they come.</summary>
internal interface ITokenStream
{
    /// <summary>The text <paramref name="id"/> completes (possibly empty while a character is unfinished).</summary>
    string Push(int id);
}
