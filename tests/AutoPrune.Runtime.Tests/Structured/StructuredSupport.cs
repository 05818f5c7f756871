using System.Text;
using System.Text.Json;
using AutoPrune.Generation.Constraints;
using AutoPrune.Loading.Text;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Qwen;
using CsCheck;
using Json.Schema;

namespace AutoPrune.Tests.Structured;

/// <summary>CsCheck generators of JSON schemas over the supported subset, and the vocabularies the masks are tested on.</summary>
internal static class StructuredSupport
{
    private static readonly string[] Names = ["name", "age", "color", "a b", "quote\"d", "back\\slash", "\u00fcn\u00ef", "emoji\U0001F600", "", "x", "shape", "count", "tags", "tab\there"];

    /// <summary>Scalar values as JSON text (strings with escapes and non-ASCII, integers, decimals, integral decimals, exponents).</summary>
    private static readonly string[] Values =
        ["\"red\"", "\"\"", "\"a\\\"b\"", "\"c\\\\d\"", "\"\\u00fcn\"", "\"\\ud83d\\ude00\"", "\"line\\nbreak\"", "\"square\"",
         "0", "1", "-5", "42", "1.5", "-0.25", "2.0", "1e3", "true", "false", "null"];

    private static string Q(string s) => JsonSerializer.Serialize(s);

    private static readonly Gen<string> Annotation = Gen.OneOf(Gen.Const(""), Gen.Const(""), Gen.Const("\"description\":\"a field\","),
        Gen.Const("\"title\":\"T\",\"default\":null,"), Gen.Const("\"$comment\":\"c\",\"examples\":[1],"));

    /// <summary>Schemas of one scalar value.</summary>
    public static readonly Gen<string> Scalar = Gen.Select(Annotation, Gen.OneOf(
        Gen.Const("\"type\":\"string\""),
        Gen.Int[0, 6].Select(n => $"\"type\":\"string\",\"maxLength\":{n}"),
        Gen.Const("\"type\":\"integer\""),
        Gen.Const("\"type\":\"number\""),
        Gen.Const("\"type\":\"boolean\""),
        Gen.Const("\"type\":\"null\""),
        Gen.OneOf(Gen.Const("[\"string\",\"null\"]"), Gen.Const("[\"integer\",\"null\"]"), Gen.Const("[\"number\",\"integer\"]"),
            Gen.Const("[\"boolean\",\"string\"]"), Gen.Const("[\"null\",\"number\",\"boolean\"]")).Select(t => $"\"type\":{t}"),
        Gen.Int[0, Values.Length - 1].Array[1, 5].Select(ix => $"\"enum\":[{string.Join(",", ix.Distinct().Select(i => Values[i]))}]"),
        Gen.Int[0, 7].Array[1, 4].Select(ix => $"\"type\":\"string\",\"enum\":[{string.Join(",", ix.Distinct().Select(i => Values[i]))}]"),
        Gen.Int[0, Values.Length - 1].Select(i => $"\"const\":{Values[i]}"),
        Gen.Const("\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]"),
        Gen.Const("\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"boolean\"},{\"const\":\"none\"}]"),
        Gen.Const("\"allOf\":[{\"type\":\"number\"}]"),
        Gen.Const("")), (a, body) => "{" + (a + body).TrimEnd(',') + "}");

    /// <summary>Schemas nested up to <paramref name="depth"/> levels of objects, arrays and maps (with references to <c>#/$defs/d0</c> and <c>#/definitions/d1</c>).</summary>
    public static Gen<string> Schema(int depth, bool refs = true)
    {
        if (depth == 0) return Scalar;
        var child = Schema(depth - 1, refs);
        var obj = Gen.Select(Gen.Int[0, Names.Length - 1].Array[0, 4], child.Array[4], Gen.Int[0, 15], Gen.Int[0, 3], child, Annotation)
            .Select((names, kids, requiredMask, additional, addlSchema, note) =>
            {
                var props = names.Distinct().Select((n, i) => (Name: Names[n], Schema: kids[i])).ToList();
                var sb = new StringBuilder("{").Append(note).Append("\"type\":\"object\",\"properties\":{");
                sb.AppendJoin(",", props.Select(p => $"{Q(p.Name)}:{p.Schema}")).Append('}');
                var required = props.Where((_, i) => (requiredMask & (1 << i)) != 0).Select(p => Q(p.Name)).ToList();
                if (required.Count > 0 || requiredMask == 15) sb.Append(",\"required\":[").AppendJoin(",", required).Append(']');
                sb.Append(additional switch { 0 => "", 1 => ",\"additionalProperties\":false", 2 => ",\"additionalProperties\":true", _ => $",\"additionalProperties\":{addlSchema}" });
                return sb.Append('}').ToString();
            });
        var arr = Gen.Select(child, Gen.Int[0, 2], Gen.Int[-1, 3]).Select((item, min, extra) =>
            $"{{\"type\":\"array\",\"items\":{item}{(min > 0 ? $",\"minItems\":{min}" : "")}{(extra >= 0 ? $",\"maxItems\":{min + extra}" : "")}}}");
        var map = child.Select(v => $"{{\"type\":\"object\",\"additionalProperties\":{v}}}");
        var gens = new List<(int, IGen<string>)> { (3, Scalar), (4, obj), (2, arr), (1, map), (1, Gen.Const("{\"type\":\"object\"}")), (1, Gen.Const("{\"type\":\"array\"}")) };
        if (refs) gens.Add((2, Gen.OneOf(Gen.Const("{\"$ref\":\"#/$defs/d0\"}"), Gen.Const("{\"$ref\":\"#/definitions/d1\",\"description\":\"via a reference\"}"))));
        return Gen.Frequency(gens.ToArray());
    }

    /// <summary>A whole schema: nested up to 3 levels, with the definitions its references use.</summary>
    public static readonly Gen<string> Schemas = Gen.Select(Schema(3), Schema(1, refs: false), Schema(1, refs: false)).Select((main, d0, d1) =>
    {
        var defs = new StringBuilder();
        if (main.Contains("#/$defs/d0", StringComparison.Ordinal)) defs.Append($"\"$defs\":{{\"d0\":{d0}}},");
        if (main.Contains("#/definitions/d1", StringComparison.Ordinal)) defs.Append($"\"definitions\":{{\"d1\":{d1}}},");
        if (defs.Length == 0) return main;
        string body = main.Trim()[1..^1].Trim(), d = defs.ToString().TrimEnd(',');
        return body.Length == 0 ? "{" + d + "}" : "{" + d + "," + body + "}";
    });

    /// <summary>Validates <paramref name="json"/> against <paramref name="schema"/> with JsonSchema.Net; null when valid, else the errors.</summary>
    public static string? Validate(string schema, string json)
    {
        using var doc = JsonDocument.Parse(json);
        var s = JsonSchema.FromText(schema, new BuildOptions { SchemaRegistry = new SchemaRegistry(), Dialect = Dialect.Draft202012 });
        var result = s.Evaluate(doc.RootElement, new EvaluationOptions { OutputFormat = OutputFormat.List });
        if (result.IsValid) return null;
        var errors = new List<string>();
        foreach (var d in result.Details ?? [])
            if (d.Errors is { Count: > 0 } e) errors.Add($"{d.InstanceLocation} @ {d.EvaluationPath}: {string.Join("; ", e.Values)}");
        return string.Join("\n", errors);
    }

    private static TokenVocabulary? s_llava, s_qwen;

    /// <summary>The demo model's SentencePiece vocabulary (402 ids; one leading space dropped by its decoder).</summary>
    public static TokenVocabulary Llava => s_llava ??= LlavaVocabulary(out _);

    public static TokenVocabulary LlavaVocabulary(out LlavaTokenizer tokenizer)
    {
        tokenizer = LlavaTokenizer.Load(TestData.ModelDir, 400);
        return new TokenVocabulary(tokenizer.TokenBytes(), [tokenizer.EosId], dropsLeadingSpace: true);
    }

    /// <summary>The Qwen2.5-VL fixture's byte-level BPE vocabulary (570 ids).</summary>
    public static TokenVocabulary Qwen => s_qwen ??= QwenVocabulary(out _);

    public static TokenVocabulary QwenVocabulary(out Qwen2Tokenizer tokenizer)
    {
        tokenizer = Qwen2Tokenizer.Load(QwenFixture.Model(QwenFixture.Current));
        return new TokenVocabulary(tokenizer.TokenBytes(), tokenizer.EosIds, dropsLeadingSpace: false);
    }

    /// <summary>
    /// A byte-level vocabulary of <paramref name="size"/> ids shaped like a large BPE one: the 256 single bytes, then words
    /// with and without a leading space, digit runs, punctuation and JSON fragments (<c>":"</c>, <c>},{"</c>, ...), runs of
    /// spaces, and multi-byte UTF-8 (accented letters, CJK, emoji); the last id is the end token.
    /// </summary>
    public static TokenVocabulary Synthetic(int size, int seed = 1)
    {
        var rng = new Random(seed);
        var tokens = new List<byte[]?>(size);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int b = 0; b < 256; b++) tokens.Add([(byte)b]);
        string[] fragments = ["\":", "\":\"", "\",\"", "},{\"", "{\"", "\"}", "\"]", "[{", "}]", "],", "\",", ",\"", "null", "true", "false", ":[", ":{", "\\n", "\\\"", "\\u00", "0.", "-1", "e+", "E-", "0,", ",1", "1,2", ",3,", "],[", "true,", ",false"];
        const string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        string[] multi = ["\u00e9", "\u00fc", "\u00df", "\u4e2d", "\u6587", "\u3042", "\U0001F600", "\u20ac", "\u0436"];
        while (tokens.Count < size - 1)
        {
            string t = rng.Next(10) switch
            {
                < 5 => (rng.Next(2) == 0 ? " " : "") + new string(Enumerable.Range(0, rng.Next(1, 12)).Select(_ => letters[rng.Next(letters.Length)]).ToArray()),
                5 => string.Concat(Enumerable.Range(0, rng.Next(1, 4)).Select(_ => (char)('0' + rng.Next(10)))),
                6 => fragments[rng.Next(fragments.Length)] + (rng.Next(3) == 0 ? letters[rng.Next(26)].ToString() : ""),
                7 => new string(' ', rng.Next(2, 17)),
                8 => string.Concat(Enumerable.Range(0, rng.Next(1, 4)).Select(_ => multi[rng.Next(multi.Length)])),
                _ => (rng.Next(2) == 0 ? " " : "") + letters[rng.Next(letters.Length)] + multi[rng.Next(multi.Length)] + new string(Enumerable.Range(0, rng.Next(0, 6)).Select(_ => letters[rng.Next(26)]).ToArray()),
            };
            if (seen.Add(t)) tokens.Add(Encoding.UTF8.GetBytes(t));
        }
        tokens.Add(null); // the end token
        return new TokenVocabulary(tokens, [size - 1], dropsLeadingSpace: false);
    }

    /// <summary>
    /// Walks the recognizer from the start for up to <paramref name="steps"/> random accepted bytes (preferring bytes that
    /// shorten the shortest completion with probability <paramref name="finish"/>), collecting each state passed with the
    /// bytes that led to it.
    /// </summary>
    public static List<(RecognizerState State, byte[] Prefix)> RandomWalk(JsonRecognizer rec, Random rng, int steps, double finish, bool dropsLeadingSpace)
    {
        var states = new List<(RecognizerState, byte[])>();
        var s = rec.Start(dropsLeadingSpace);
        var prefix = new List<byte>();
        states.Add((s, []));
        for (int i = 0; i < steps; i++)
        {
            var options = new List<(byte B, RecognizerState S, int Cost)>();
            for (int b = 0; b < 256; b++)
            {
                var t = s;
                if (rec.Step(ref t, (byte)b)) options.Add(((byte)b, t, rec.Cost(in t)));
            }
            if (options.Count == 0) break;
            int cost = rec.Cost(in s);
            var shorter = options.Where(o => o.Cost < cost).ToList();
            var pick = rng.NextDouble() < finish && shorter.Count > 0 ? shorter[rng.Next(shorter.Count)] : options[rng.Next(options.Count)];
            s = pick.S;
            prefix.Add(pick.B);
            states.Add((s, prefix.ToArray()));
        }
        return states;
    }

    /// <summary>Completes <paramref name="s"/> along the shortest completion, returning the bytes.</summary>
    public static byte[] Complete(JsonRecognizer rec, RecognizerState s, Random? rng = null)
    {
        var bytes = new List<byte>();
        int guard = 0;
        while (rec.Cost(in s) > 0)
        {
            int cost = rec.Cost(in s);
            var next = new List<(byte, RecognizerState)>();
            for (int b = 0; b < 256; b++)
            {
                var t = s;
                if (rec.Step(ref t, (byte)b) && rec.Cost(in t) == cost - 1) next.Add(((byte)b, t));
            }
            if (next.Count == 0) throw new InvalidOperationException($"No byte shortens the completion (cost {cost}) after '{Encoding.UTF8.GetString(bytes.ToArray())}'.");
            var (nb, ns) = rng is null ? next[0] : next[rng.Next(next.Count)];
            bytes.Add(nb);
            s = ns;
            if (++guard > 100_000) throw new InvalidOperationException("completion does not end");
        }
        return bytes.ToArray();
    }
}
