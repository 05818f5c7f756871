using System.Diagnostics;
using System.Text;
using AutoPrune.Generation.Constraints;
using AutoPrune.Loading.Text;
using AutoPrune.Models.Qwen2VL;

namespace AutoPrune.Benchmarks;

/// <summary>
/// <c>structured-quick [--size N] [--documents D] [--max-tokens T] [--seed S]</c>: the cost of structured output's token
/// masks. For the demo model's SentencePiece vocabulary (402 ids), the Qwen2.5-VL fixture's byte-level BPE (570) and a
/// synthetic byte-level vocabulary of N ids (default 150,000, shaped like Qwen's: words with and without a space, digit
/// runs, JSON fragments, space runs, multi-byte UTF-8), it builds the trie, then decodes D documents per grammar by
/// choosing tokens at random among the allowed ones (half the time the one that shortens the document most of 16 tried)
/// and times every mask: per step (median, p95, max), a trie walk (a state not in the cache) against a cache hit, and
/// applying the mask to logits (argmax among the allowed ids) against a plain argmax.
/// </summary>
internal static class StructuredQuick
{
    private const string Person = """
        {"type":"object","properties":{"name":{"type":"string","maxLength":40},"age":{"type":"integer"},"email":{"type":["string","null"]},
         "tags":{"type":"array","items":{"type":"string","maxLength":16},"maxItems":4},"address":{"type":"object","properties":{"city":{"type":"string"},
         "zip":{"enum":["10115","75001","0150"]}},"required":["city"]}},"required":["name","age","address"]}
        """;

    public static int Run(string[] args)
    {
        int size = 150_000, documents = 8, maxTokens = 192, seed = 1;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--size": size = int.Parse(args[++i]); break;
                case "--documents": documents = int.Parse(args[++i]); break;
                case "--max-tokens": maxTokens = int.Parse(args[++i]); break;
                case "--seed": seed = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        string root = FindRoot();
        var vocabularies = new List<(string Name, Func<(IReadOnlyList<byte[]?> Bytes, IReadOnlyList<int> Eos, bool Drop)> Read)>
        {
            ("demo SentencePiece", () =>
            {
                var t = LlavaTokenizer.Load(Path.Combine(root, "samples", "models", "shapes-llava-tiny"), 400);
                return (t.TokenBytes(), [t.EosId], true);
            }),
            ("Qwen fixture byte-level BPE", () =>
            {
                var t = Qwen2Tokenizer.Load(Path.Combine(root, "tests", "data", "qwen25vl-tiny", "qwen25vl-tiny"));
                return (t.TokenBytes(), t.EosIds, false);
            }),
            ($"synthetic byte-level {size:N0}", () => (Synthetic(size, seed), [size - 1], false)),
        };
        var grammars = new (string Name, JsonGrammar Grammar)[]
        {
            ("person schema", JsonSchemaCompiler.Compile(Person, "person")),
            ("json_object", JsonGrammar.AnyObject()),
        };
        Console.WriteLine($"CPU: {Environment.ProcessorCount} logical cores; documents per grammar: {documents}, at most {maxTokens} tokens each; one thread.");
        Console.WriteLine();
        Console.WriteLine($"{"vocabulary",-30} {"ids",8} {"trie nodes",10} {"build ms",9} | {"grammar",-14} {"steps",6} {"median us",10} {"p95 us",9} {"max ms",8} {"walks",6} {"hit %",6} {"walk ms",8} {"hit us",7} {"argmax us",10} {"masked us",10}");
        foreach (var (vname, read) in vocabularies)
        {
            var (bytes, eos, drop) = read();
            var clock = Stopwatch.StartNew();
            var vocab = new TokenVocabulary(bytes, eos, drop);
            double buildMs = clock.Elapsed.TotalMilliseconds;
            foreach (var (gname, _) in grammars)
            {
                JsonGrammar Fresh() => gname == "json_object" ? JsonGrammar.AnyObject() : JsonSchemaCompiler.Compile(Person, "person");
                Decode(Fresh(), vocab, 1, maxTokens, seed + 1); // JIT warm-up, on its own copy of the grammar (its own cache)
                GC.Collect();
                // A fresh copy of the grammar, so that its mask cache starts empty.
                var stats = Decode(Fresh(), vocab, documents, maxTokens, seed);
                Console.WriteLine($"{vname,-30} {vocab.Size,8:N0} {vocab.NodeCount,10:N0} {buildMs,9:F1} | {gname,-14} {stats.Steps,6} {stats.MedianUs,10:F1} {stats.P95Us,9:F1} {stats.MaxMs,8:F2} {stats.Walks,6} {stats.HitPercent,6:F1} {stats.WalkMs,8:F2} {stats.HitUs,7:F1} {stats.ArgMaxUs,10:F1} {stats.MaskedArgMaxUs,10:F1}");
                if (stats.Sample is { } sample) Console.WriteLine($"{"",-62}   e.g. {Shorten(sample)}");
            }
        }
        Console.WriteLine();
        Console.WriteLine("median/p95/max: the whole mask per step (cache lookup, or a trie walk when the state is new; a budget-limited walk near the end).");
        Console.WriteLine("walk ms: mean of the steps that walked the trie; hit us: mean of the steps answered from the cache; argmax: over all logits vs among the allowed ids (fastest of 5).");
        return 0;
    }

    private sealed record Stats(int Steps, double MedianUs, double P95Us, double MaxMs, long Walks, double HitPercent, double WalkMs, double HitUs, double ArgMaxUs, double MaskedArgMaxUs, string? Sample);

    private static Stats Decode(JsonGrammar grammar, TokenVocabulary vocab, int documents, int maxTokens, int seed)
    {
        var rng = new Random(seed);
        var times = new List<double>();
        double walkMs = 0, hitUs = 0;
        int walkSteps = 0, hitSteps = 0;
        var masker = TokenMasker.For(grammar, vocab);
        var logits = new float[vocab.Size];
        double argMaxUs = 0, maskedUs = 0;
        int argMaxRuns = 0;
        string? sample = null;
        for (int d = 0; d < documents; d++)
        {
            var decoding = new ConstrainedDecoding(grammar, vocab);
            var text = new List<byte>();
            for (int step = 0; step < maxTokens; step++)
            {
                long walksBefore = masker.Walks;
                var clock = Stopwatch.StartNew();
                var mask = decoding.NextMask(maxTokens - step);
                double us = clock.Elapsed.TotalMicroseconds;
                times.Add(us);
                if (masker.Walks > walksBefore) { walkMs += us / 1000; walkSteps++; } else { hitUs += us; hitSteps++; }
                if (step % 8 == 0)
                {
                    for (int i = 0; i < logits.Length; i++) logits[i] = (float)rng.NextDouble();
                    // the fastest of 5 runs of each (the machine may be shared)
                    double plain = double.MaxValue, masked = double.MaxValue;
                    for (int r = 0; r < 5; r++)
                    {
                        clock.Restart();
                        _ = Compute.Cpu.CpuOps.ArgMax(logits);
                        plain = Math.Min(plain, clock.Elapsed.TotalMicroseconds);
                        clock.Restart();
                        _ = mask.ArgMax(logits);
                        masked = Math.Min(masked, clock.Elapsed.TotalMicroseconds);
                    }
                    argMaxUs += plain;
                    maskedUs += masked;
                    argMaxRuns++;
                }
                int next = Choose(mask, masker, decoding, rng, vocab);
                if (vocab.EosIds.Contains(next)) break;
                decoding.Accept(next);
                text.AddRange(vocab.Bytes(next)!);
            }
            if (!decoding.IsComplete) throw new InvalidOperationException("a document did not complete within its budget");
            sample ??= Encoding.UTF8.GetString(text.ToArray());
        }
        times.Sort();
        return new Stats(times.Count, times[times.Count / 2], times[(int)(times.Count * 0.95)], times[^1] / 1000, masker.Walks,
            100.0 * hitSteps / Math.Max(1, times.Count), walkSteps == 0 ? 0 : walkMs / walkSteps, hitSteps == 0 ? 0 : hitUs / hitSteps,
            argMaxUs / argMaxRuns, maskedUs / argMaxRuns, sample);
    }

    /// <summary>A random allowed token; half the time the one of 16 random allowed tokens that leaves the shortest completion.</summary>
    private static int Choose(TokenMask mask, TokenMasker masker, ConstrainedDecoding decoding, Random rng, TokenVocabulary vocab)
    {
        var ids = mask.Ids().ToArray();
        if (rng.Next(2) == 0) return ids[rng.Next(ids.Length)];
        int best = -1, bestCost = int.MaxValue;
        for (int k = 0; k < 16; k++)
        {
            int id = ids[rng.Next(ids.Length)];
            if (vocab.EosIds.Contains(id)) return id;
            var s = decoding.State;
            if (!masker.Recognizer.Feed(ref s, vocab.Bytes(id))) continue;
            int cost = masker.Recognizer.Cost(in s);
            if (cost < bestCost) { bestCost = cost; best = id; }
        }
        return best >= 0 ? best : ids[0];
    }

    private static string Shorten(string s) => s.Length <= 110 ? s : s[..107] + "...";

    /// <summary>The bytes of a byte-level vocabulary of <paramref name="size"/> ids: the 256 bytes, then generated tokens; the last id (no bytes) is the end token.</summary>
    private static List<byte[]?> Synthetic(int size, int seed)
    {
        var rng = new Random(seed);
        var tokens = new List<byte[]?>(size);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int b = 0; b < 256; b++) tokens.Add([(byte)b]);
        string[] fragments = ["\":", "\":\"", "\",\"", "},{\"", "{\"", "\"}", "\"]", "[{", "}]", "],", "\",", ",\"", "null", "true", "false", ":[", ":{", "\\n", "\\\"", "0,", ",1"];
        const string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        string[] multi = ["\u00e9", "\u00fc", "\u00df", "\u4e2d", "\u6587", "\u3042", "\U0001F600", "\u20ac", "\u0436"];
        while (tokens.Count < size - 1)
        {
            string t = rng.Next(10) switch
            {
                < 5 => (rng.Next(2) == 0 ? " " : "") + new string(Enumerable.Range(0, rng.Next(1, 12)).Select(_ => letters[rng.Next(letters.Length)]).ToArray()),
                5 => string.Concat(Enumerable.Range(0, rng.Next(1, 4)).Select(_ => (char)('0' + rng.Next(10)))),
                6 => fragments[rng.Next(fragments.Length)] + (rng.Next(3) == 0 ? letters[rng.Next(26)].ToString() : ""),
                7 => new string(' ', rng.Next(2, 33)),
                8 => string.Concat(Enumerable.Range(0, rng.Next(1, 4)).Select(_ => multi[rng.Next(multi.Length)])),
                _ => (rng.Next(2) == 0 ? " " : "") + letters[rng.Next(letters.Length)] + multi[rng.Next(multi.Length)] + new string(Enumerable.Range(0, rng.Next(0, 6)).Select(_ => letters[rng.Next(26)]).ToArray()),
            };
            if (seen.Add(t)) tokens.Add(Encoding.UTF8.GetBytes(t));
        }
        tokens.Add(null);
        return tokens;
    }

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
        throw new InvalidOperationException("AutoPrune.sln not found above " + AppContext.BaseDirectory);
    }
}
