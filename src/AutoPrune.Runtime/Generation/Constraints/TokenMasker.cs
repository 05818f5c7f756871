using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;
using System.Text;

namespace AutoPrune.Generation.Constraints;

/// <summary>The token ids allowed at one step (a bit per id of the vocabulary). Immutable once made.</summary>
internal sealed class TokenMask
{
    internal readonly ulong[] Bits;

    internal TokenMask(ulong[] bits, int count, int maxCostAfter)
    {
        Bits = bits;
        Count = count;
        MaxCostAfter = maxCostAfter;
    }

    /// <summary>Ids allowed.</summary>
    public int Count { get; }

    /// <summary>The largest shortest-completion (bytes) any allowed token leaves: with at least that many tokens left after
    /// this one, no allowed token can strand the document.</summary>
    public int MaxCostAfter { get; }

    public bool IsAllowed(int id) => (uint)(id >> 6) < (uint)Bits.Length && (Bits[id >> 6] & (1UL << id)) != 0;

    /// <summary>The allowed ids in increasing order.</summary>
    public IEnumerable<int> Ids()
    {
        for (int w = 0; w < Bits.Length; w++)
            for (ulong word = Bits[w]; word != 0; word &= word - 1)
                yield return w * 64 + BitOperations.TrailingZeroCount(word);
    }

    /// <summary>The allowed id with the largest logit (the lowest such id on ties); -1 when none is allowed.</summary>
    public int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = -1;
        float max = float.NegativeInfinity;
        for (int w = 0; w < Bits.Length; w++)
        {
            ulong word = Bits[w];
            int start = w * 64;
            if (word == ulong.MaxValue)
            {
                // A run of words whose every id is allowed (inside a string most are): one vectorized scan.
                int end = w + 1;
                while (end < Bits.Length && Bits[end] == ulong.MaxValue) end++;
                int stop = Math.Min(end * 64, logits.Length);
                if (stop > start)
                {
                    var run = logits[start..stop];
                    int k = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(run); // the first largest
                    if (best < 0 || run[k] > max) { best = start + k; max = run[k]; }
                }
                w = end - 1;
                continue;
            }
            for (; word != 0; word &= word - 1)
            {
                int id = start + BitOperations.TrailingZeroCount(word);
                if (id >= logits.Length) return best;
                if (best < 0 || logits[id] > max) { best = id; max = logits[id]; }
            }
        }
        return best;
    }
}

/// <summary>
/// The token masks of one grammar over one vocabulary: for a recognizer state, every id whose bytes keep the output a
/// valid prefix (found by walking the vocabulary trie against the recognizer, copying the state at each edge and
/// skipping subtrees it rejects), and the end ids when the document is complete. Masks are cached by the state's
/// <see cref="JsonRecognizer.Key"/> (so a string's later characters reuse the first one's mask) in one cache shared by
/// every grammar and vocabulary and bounded in bytes (<see cref="MaxCacheBytes"/>; when full it is emptied); thread-safe,
/// shared by every request that uses the grammar.
/// </summary>
internal sealed class TokenMasker
{
    /// <summary>Bytes of cached masks in the process, all grammars and vocabularies together (128 MiB; tests lower it).</summary>
    internal static long MaxCacheBytes { get; set; } = 128L << 20;

    private static readonly ConcurrentDictionary<(long Masker, string State), TokenMask> Cache = new();
    private static readonly Lock ClearLock = new();
    private static long s_cacheBytes, s_nextId;

    private readonly long _id = Interlocked.Increment(ref s_nextId);
    private long _hits, _walks;

    private TokenMasker(JsonGrammar grammar, TokenVocabulary vocabulary)
    {
        Recognizer = new JsonRecognizer(grammar);
        Vocabulary = vocabulary;
        Words = (vocabulary.Size + 63) / 64;
    }

    /// <summary>Bytes the shared mask cache holds now (approximately, under concurrent use).</summary>
    public static long CacheBytes => Interlocked.Read(ref s_cacheBytes);

    /// <summary>The masker of <paramref name="grammar"/> over <paramref name="vocabulary"/>, made once and kept with the grammar.</summary>
    public static TokenMasker For(JsonGrammar grammar, TokenVocabulary vocabulary) =>
        grammar.Maskers.GetValue(vocabulary, v => new TokenMasker(grammar, v));

    public JsonRecognizer Recognizer { get; }
    public TokenVocabulary Vocabulary { get; }

    /// <summary>64-bit words of a mask.</summary>
    public int Words { get; }

    /// <summary>Masks answered from the cache, and masks computed by walking the trie.</summary>
    public long CacheHits => Interlocked.Read(ref _hits);
    public long Walks => Interlocked.Read(ref _walks);

    /// <summary>
    /// The ids allowed after <paramref name="s"/> when <paramref name="tokensAfter"/> tokens may follow the chosen one: an id
    /// is allowed only if its bytes are accepted and the document can still be completed in that many tokens (one per
    /// byte of its shortest completion); an end id only when the document is complete.
    /// </summary>
    public TokenMask Mask(in RecognizerState s, int tokensAfter)
    {
        var key = (_id, Recognizer.Key(in s, Vocabulary.MaxTokenBytes));
        if (Cache.TryGetValue(key, out var mask)) Interlocked.Increment(ref _hits);
        else
        {
            mask = Compute(in s, int.MaxValue);
            Remember(key, mask);
        }
        // Near the end of the budget some allowed tokens would leave too little room: recompute with the budget (not cached).
        return mask.MaxCostAfter <= tokensAfter ? mask : Compute(in s, tokensAfter);
    }

    private static void Remember((long, string State) key, TokenMask mask)
    {
        long size = mask.Bits.Length * 8L + key.State.Length * 2L + 160; // the bits, the key, the entry and its objects
        if (Interlocked.Add(ref s_cacheBytes, size) > MaxCacheBytes)
        {
            lock (ClearLock)
            {
                if (Interlocked.Read(ref s_cacheBytes) > MaxCacheBytes)
                {
                    Cache.Clear();
                    Interlocked.Exchange(ref s_cacheBytes, size);
                }
            }
        }
        if (!Cache.TryAdd(key, mask)) Interlocked.Add(ref s_cacheBytes, -size);
    }

    /// <summary>The mask of <paramref name="s"/> by walking the trie (no cache).</summary>
    public TokenMask Compute(in RecognizerState s, int tokensAfter)
    {
        Interlocked.Increment(ref _walks);
        var bits = new ulong[Words];
        int count = 0, maxCost = 0;
        Walk(0, in s, tokensAfter, bits, ref count, ref maxCost);
        if (Recognizer.IsComplete(in s)) count += SetEos(bits);
        return new TokenMask(bits, count, maxCost);
    }

    /// <summary>The mask of <paramref name="s"/> by trying every id's bytes one by one (the reference the trie walk is tested against).</summary>
    public TokenMask BruteForce(in RecognizerState s, int tokensAfter)
    {
        var bits = new ulong[Words];
        int count = 0, maxCost = 0;
        for (int id = 0; id < Vocabulary.Size; id++)
        {
            if (Vocabulary.Bytes(id) is not { } bytes) continue;
            var t = s;
            if (!Recognizer.Feed(ref t, bytes)) continue;
            int cost = Recognizer.Cost(in t);
            if (cost > tokensAfter) continue;
            bits[id >> 6] |= 1UL << id;
            count++;
            maxCost = Math.Max(maxCost, cost);
        }
        if (Recognizer.IsComplete(in s)) count += SetEos(bits);
        return new TokenMask(bits, count, maxCost);
    }

    private int SetEos(ulong[] bits)
    {
        int n = 0;
        foreach (int e in Vocabulary.EosIds)
        {
            if ((bits[e >> 6] & (1UL << e)) == 0) n++;
            bits[e >> 6] |= 1UL << e;
        }
        return n;
    }

    private void Walk(int node, in RecognizerState s, int budget, ulong[] bits, ref int count, ref int maxCost)
    {
        var v = Vocabulary;
        for (int c = v.FirstChild[node]; c >= 0; c = v.NextSibling[c])
        {
            var t = s;
            if (!Recognizer.Step(ref t, v.NodeByte[c])) continue;
            int n = v.TokenCount[c];
            if (n > 0)
            {
                int cost = Recognizer.Cost(in t);
                if (cost <= budget)
                {
                    for (int k = v.TokenStart[c], end = k + n; k < end; k++)
                    {
                        int id = v.SortedIds[k];
                        bits[id >> 6] |= 1UL << id;
                    }
                    count += n;
                    if (cost > maxCost) maxCost = cost;
                }
            }
            if (v.FirstChild[c] >= 0) Walk(c, in t, budget, bits, ref count, ref maxCost);
        }
    }
}

/// <summary>
/// One answer's constrained decoding: the recognizer state of the text so far, the mask for the next token and the
/// token the sampler chose. Generation always ends within the token budget: a token is allowed only if the document can
/// still be completed in the tokens left after it, counting one token per byte of its shortest completion (every byte
/// has a one-byte token in both tokenizers), so the last token always completes it; when the document is complete and
/// nothing may follow, the mask holds only the end token.
/// </summary>
internal sealed class ConstrainedDecoding
{
    private readonly TokenMasker _masker;
    private RecognizerState _state;
    private readonly List<byte> _text = [];
    private readonly Stopwatch _clock = new();

    public ConstrainedDecoding(JsonGrammar grammar, TokenVocabulary vocabulary)
    {
        _masker = TokenMasker.For(grammar, vocabulary);
        _state = _masker.Recognizer.Start(vocabulary.DropsLeadingSpace);
    }

    public JsonGrammar Grammar => _masker.Recognizer.Grammar;

    /// <summary>The recognizer state of the text so far.</summary>
    public RecognizerState State => _state;

    /// <summary>True when the text so far is a complete document.</summary>
    public bool IsComplete => _masker.Recognizer.IsComplete(in _state);

    /// <summary>Time spent computing masks and stepping the recognizer.</summary>
    public TimeSpan Elapsed => _clock.Elapsed;

    /// <summary>Masks computed for this answer.</summary>
    public int Steps { get; private set; }

    /// <summary>The mask for the next token, with <paramref name="tokensLeft"/> tokens left including it.</summary>
    /// <exception cref="InvalidOperationException">No token can continue the document (a vocabulary without one-byte tokens for some byte).</exception>
    public TokenMask NextMask(int tokensLeft)
    {
        _clock.Start();
        try
        {
            var mask = _masker.Mask(in _state, Math.Max(0, tokensLeft - 1));
            Steps++;
            if (mask.Count == 0)
                throw new InvalidOperationException(
                    $"Structured output ({Grammar.Description}): no token of the vocabulary can continue the answer after '{Encoding.UTF8.GetString(_text.ToArray())}' " +
                    $"within {tokensLeft} token(s){(_masker.Vocabulary.MissingSingleBytes.Count > 0 ? $"; the vocabulary has no one-byte token for {_masker.Vocabulary.MissingSingleBytes.Count} byte value(s)" : "")}.");
            return mask;
        }
        finally { _clock.Stop(); }
    }

    /// <summary>Advances past a chosen text token (not an end token).</summary>
    /// <exception cref="InvalidOperationException">The token's bytes are not a valid continuation (it was not in the mask).</exception>
    public void Accept(int id)
    {
        _clock.Start();
        try
        {
            var bytes = _masker.Vocabulary.Bytes(id) ?? throw new InvalidOperationException($"Structured output: token {id} has no text and cannot be part of the document.");
            var next = _state;
            if (!_masker.Recognizer.Feed(ref next, bytes))
                throw new InvalidOperationException($"Structured output: token {id} ('{Encoding.UTF8.GetString(bytes)}') does not continue the document after '{Encoding.UTF8.GetString(_text.ToArray())}'.");
            _state = next;
            _text.AddRange(bytes);
        }
        finally { _clock.Stop(); }
    }
}
