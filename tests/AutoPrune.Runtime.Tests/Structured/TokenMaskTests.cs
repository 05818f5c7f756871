using System.Text;
using AutoPrune.Generation.Constraints;
using CsCheck;
using Xunit;

namespace AutoPrune.Tests.Structured;

/// <summary>
/// Token masks on the demo model's SentencePiece vocabulary, the Qwen fixture's byte-level BPE vocabulary and a
/// synthetic large byte-level one: each equals a brute-force check of every token against the recognizer, on random
/// states and budgets (the cached masks included), and the end token is allowed exactly when the document is complete.
/// </summary>
public sealed class TokenMaskTests
{
    public static TheoryData<string> Vocabularies => new() { "llava", "qwen", "synthetic" };

    private static readonly Lazy<TokenVocabulary> SyntheticVocabulary = new(() => StructuredSupport.Synthetic(20_000));

    private static TokenVocabulary Vocabulary(string name) => name switch
    {
        "llava" => StructuredSupport.Llava,
        "qwen" => StructuredSupport.Qwen,
        _ => SyntheticVocabulary.Value,
    };

    [Fact]
    public void VocabulariesAreTheTokenizersDecodedBytes()
    {
        var llava = StructuredSupport.LlavaVocabulary(out var lt);
        Assert.Equal(402, llava.Size);
        Assert.Empty(llava.MissingSingleBytes); // byte fallback: every byte has a token
        Assert.Null(llava.Bytes(lt.EosId));
        Assert.Null(llava.Bytes(lt.BosId));
        Assert.Null(llava.Bytes(400)); // <image>
        int withSpace = 0;
        for (int id = 0; id < lt.VocabSize; id++)
        {
            if (llava.Bytes(id) is not { } bytes) continue;
            string piece = lt.IdToPiece(id)!;
            if (piece.StartsWith('\u2581')) { Assert.Equal((byte)' ', bytes[0]); withSpace++; }
            // a token's bytes are what decoding it after another token adds to the text
            if (bytes.Length > 0 && bytes[0] < 0x80 && !piece.StartsWith("<0x", StringComparison.Ordinal))
                Assert.Equal(lt.Decode([5, id])[lt.Decode([5]).Length..], Encoding.UTF8.GetString(bytes));
        }
        Assert.True(withSpace >= 40, $"{withSpace} pieces with ▁"); // 48 in the demo tokenizer

        var qwen = StructuredSupport.QwenVocabulary(out var qt);
        Assert.Equal(570, qwen.Size);
        Assert.Empty(qwen.MissingSingleBytes);
        foreach (int e in qt.EosIds) Assert.Null(qwen.Bytes(e));
        Assert.Null(qwen.Bytes(qt.ImageTokenId));
        for (int id = 0; id < 562; id++) Assert.Equal(qt.Decode([id]), Encoding.UTF8.GetString(qwen.Bytes(id)!));
    }

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void MasksEqualBruteForceOnRandomStatesAndBudgets(string vocabularyName)
    {
        var vocab = Vocabulary(vocabularyName);
        int checkedStates = 0, completes = 0;
        Gen.Select(Gen.OneOf(StructuredSupport.Schemas, Gen.Const("")), Gen.Int).Sample((schema, seed) =>
        {
            var grammar = schema.Length == 0 ? ResponseFormat.JsonObject.Grammar! : ResponseFormat.ForJsonSchema(schema).Grammar!;
            var masker = TokenMasker.For(grammar, vocab);
            var rng = new Random(seed);
            var walk = StructuredSupport.RandomWalk(masker.Recognizer, rng, rng.Next(0, 50), finish: 0.4, vocab.DropsLeadingSpace);
            foreach (var (state, _) in walk.Where((_, i) => vocabularyName != "synthetic" || i % 3 == 0 || i == walk.Count - 1))
            {
                int budget = rng.Next(3) == 0 ? rng.Next(0, 12) : 1000;
                var fast = masker.Mask(in state, budget);
                var slow = masker.BruteForce(in state, budget);
                Assert.True(slow.Bits.AsSpan().SequenceEqual(fast.Bits), $"{vocabularyName}: schema {schema} budget {budget}: masks differ at ids {string.Join(",", slow.Ids().Except(fast.Ids()).Concat(fast.Ids().Except(slow.Ids())).Take(10))}");
                Assert.Equal(slow.Count, fast.Count);
                bool complete = masker.Recognizer.IsComplete(in state);
                foreach (int e in vocab.EosIds) Assert.Equal(complete, fast.IsAllowed(e));
                // Within the budget the mask is never empty: some token leads towards completion.
                if (masker.Recognizer.Cost(in state) <= budget + 1) Assert.True(fast.Count > 0, $"{schema}: empty mask");
                checkedStates++;
                if (complete) completes++;
            }
        }, iter: vocabularyName == "synthetic" ? 60 : 150, threads: 1);
        Assert.True(checkedStates > 100, $"{checkedStates} states");
        Assert.True(completes > 10, $"{completes} complete states");
    }

    /// <summary>The masked argmax is the first largest logit among the allowed ids, whether they come in full 64-id words or one by one.</summary>
    [Fact]
    public void MaskedArgMaxIsTheFirstLargestAllowedLogit()
    {
        Gen.Select(Gen.Int[1, 700], Gen.Int[0, 3], Gen.Int).Sample((n, density, seed) =>
        {
            var rng = new Random(seed);
            var bits = new ulong[(n + 63) / 64];
            for (int w = 0; w < bits.Length; w++)
                bits[w] = density switch { 0 => 0, 1 => (ulong)rng.NextInt64() & (ulong)rng.NextInt64(), 2 => ulong.MaxValue, _ => rng.Next(2) == 0 ? ulong.MaxValue : (ulong)rng.NextInt64() };
            if (n % 64 != 0) bits[^1] &= (1UL << (n % 64)) - 1;
            var mask = new TokenMask(bits, bits.Sum(b => System.Numerics.BitOperations.PopCount(b)), 0);
            var logits = Enumerable.Range(0, n).Select(_ => (float)rng.Next(0, 8)).ToArray(); // many ties
            int expected = -1;
            for (int id = 0; id < n; id++)
                if (mask.IsAllowed(id) && (expected < 0 || logits[id] > logits[expected])) expected = id;
            Assert.Equal(expected, mask.ArgMax(logits));
        }, iter: 2000);
    }

    [Fact]
    public void ACompleteDocumentWithNothingMoreAllowedForcesTheEndToken()
    {
        var vocab = StructuredSupport.Qwen;
        var masker = TokenMasker.For(ResponseFormat.ForJsonSchema("""{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}""").Grammar!, vocab);
        var s = masker.Recognizer.Start(false);
        Assert.True(masker.Recognizer.Feed(ref s, "{\"ok\":true}"u8));
        var mask = masker.Mask(in s, 10);
        Assert.Equal(vocab.EosIds.Count, mask.Count);
        Assert.All(vocab.EosIds, e => Assert.True(mask.IsAllowed(e)));
        // A number at the end may go on, or end.
        var num = TokenMasker.For(ResponseFormat.ForJsonSchema("""{"type":"integer"}""").Grammar!, vocab);
        var n = num.Recognizer.Start(false);
        Assert.True(num.Recognizer.Feed(ref n, "12"u8));
        var m = num.Mask(in n, 10);
        Assert.True(m.IsAllowed(vocab.EosIds[0]));
        Assert.True(m.Count > vocab.EosIds.Count);
    }

    [Fact]
    public void TheBudgetClosesTheDocumentInTime()
    {
        var vocab = StructuredSupport.Llava;
        var masker = TokenMasker.For(ResponseFormat.ForJsonSchema("""{"type":"object","properties":{"s":{"type":"string"}},"required":["s"]}""").Grammar!, vocab);
        var s = masker.Recognizer.Start(true);
        Assert.True(masker.Recognizer.Feed(ref s, "{\"s\":\"abc"u8));
        Assert.Equal(2, masker.Recognizer.Cost(in s)); // "}
        // With one token after this one, only tokens that close the string (and leave "}" or nothing) are allowed.
        var tight = masker.Mask(in s, 1);
        Assert.All(tight.Ids(), id => Assert.StartsWith("\"", Encoding.UTF8.GetString(vocab.Bytes(id)!)));
        Assert.True(tight.IsAllowed(Array.FindIndex(Enumerable.Range(0, vocab.Size).ToArray(), id => vocab.Bytes(id) is [(byte)'"'])));
        var loose = masker.Mask(in s, 100);
        Assert.True(loose.Count > tight.Count * 5);
    }

    /// <summary>
    /// Every step through strings and arrays near their bounds (where the cache key keeps the exact room left) against
    /// brute force, on the vocabulary with the longest tokens, with the masks cached along the way.
    /// </summary>
    [Theory]
    [InlineData("""{"type":"array","items":{"type":"string","maxLength":9},"maxItems":3}""", "[\"abcdefghi\",\"\u00e9\ud83d\ude00\u00e9\u00e9\",\"a b c d e\"]")]
    [InlineData("""{"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":6}""", "[1,2,3,12,0,5]")]
    [InlineData("""{"type":"array","items":{"type":"array","items":{"type":"boolean"},"maxItems":2},"minItems":3,"maxItems":4}""", "[[true,false],[],[false],[true]]")]
    public void MasksNearStringAndArrayBoundsEqualBruteForce(string schema, string document)
    {
        var vocab = SyntheticVocabulary.Value;
        var masker = TokenMasker.For(ResponseFormat.ForJsonSchema(schema).Grammar!, vocab);
        var s = masker.Recognizer.Start(false);
        foreach (byte b in Encoding.UTF8.GetBytes(document))
        {
            Assert.True(masker.Recognizer.Step(ref s, b), $"{document}: byte '{(char)b}'");
            var fast = masker.Mask(in s, 1000);
            var slow = masker.BruteForce(in s, 1000);
            Assert.True(slow.Bits.AsSpan().SequenceEqual(fast.Bits), $"{schema}: masks differ after a prefix of '{document}' at ids {string.Join(",", slow.Ids().Except(fast.Ids()).Concat(fast.Ids().Except(slow.Ids())).Take(10))}");
        }
        Assert.True(masker.Recognizer.IsComplete(in s));
    }

    /// <summary>The mask cache shared by every grammar stays within its byte bound (emptied when full) while masks stay right.</summary>
    [Fact]
    public void TheSharedMaskCacheStaysWithinItsByteBound()
    {
        long limit = TokenMasker.MaxCacheBytes;
        TokenMasker.MaxCacheBytes = 32 << 10;
        try
        {
            var vocab = SyntheticVocabulary.Value; // 2,500-byte masks: about a dozen fit
            long peak = 0, last = 0;
            int drops = 0, states = 0;
            for (int g = 0; g < 6; g++)
            {
                // below minItems every item count is its own state: many masks
                var masker = TokenMasker.For(JsonSchemaCompiler.Compile("""{"type":"array","items":{"type":"integer"},"minItems":60}"""), vocab);
                foreach (var (state, _) in StructuredSupport.RandomWalk(masker.Recognizer, new Random(g), 120, 0.6, false))
                {
                    Assert.True(masker.BruteForce(in state, 1000).Bits.AsSpan().SequenceEqual(masker.Mask(in state, 1000).Bits));
                    long now = TokenMasker.CacheBytes;
                    if (now < last) drops++;
                    last = now;
                    peak = Math.Max(peak, now);
                    states++;
                }
            }
            Assert.True(states > 500, $"{states} states");
            Assert.True(drops > 0, $"the cache was never emptied over {states} states");
            // other tests may add a few (small) masks at the same time
            Assert.InRange(peak, 1, TokenMasker.MaxCacheBytes + (16 << 10));
        }
        finally { TokenMasker.MaxCacheBytes = limit; }
    }

    [Fact]
    public void MasksAreCachedByStateAndReusedInsideStrings()
    {
        var vocab = SyntheticVocabulary.Value;
        var grammar = JsonSchemaCompiler.Compile("""{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}""");
        var masker = TokenMasker.For(grammar, vocab);
        var s = masker.Recognizer.Start(false);
        Assert.True(masker.Recognizer.Feed(ref s, "{\"text\":\""u8));
        masker.Mask(in s, 1000);
        long walks = masker.Walks;
        for (int i = 0; i < 50; i++)
        {
            Assert.True(masker.Recognizer.Step(ref s, (byte)('a' + i % 26)));
            masker.Mask(in s, 1000);
        }
        Assert.Equal(walks, masker.Walks); // every later character of the string: the same cached mask
        Assert.Equal(50, masker.CacheHits);
    }
}
