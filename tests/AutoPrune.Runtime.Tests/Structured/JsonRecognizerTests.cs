using System.Text;
using System.Text.Json;
using AutoPrune.Generation.Constraints;
using CsCheck;
using Xunit;

namespace AutoPrune.Tests.Structured;

/// <summary>The byte-level recognizer: what it accepts and rejects, its completion costs, and random documents it lets through.</summary>
public sealed class JsonRecognizerTests
{
    private static JsonRecognizer Rec(string schema) => new(ResponseFormat.ForJsonSchema(schema).Grammar!);

    private static (bool Accepted, bool Complete) Run(JsonRecognizer rec, string text, bool dropsLeadingSpace = false)
    {
        var s = rec.Start(dropsLeadingSpace);
        bool ok = rec.Feed(ref s, Encoding.UTF8.GetBytes(text));
        return (ok, ok && rec.IsComplete(in s));
    }

    private const string Person = """
        {"type":"object","properties":{"name":{"type":"string","maxLength":5},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","b"]},"maxItems":2},
         "score":{"type":["number","null"]}},"required":["name","age"],"additionalProperties":false}
        """;

    [Theory]
    [InlineData("{\"name\":\"Ann\",\"age\":3}")]
    [InlineData("{\"name\":\"\",\"age\":-0,\"tags\":[],\"score\":null}")]
    [InlineData("{\"name\":\"\\u00e9\\n\",\"age\":123456789,\"tags\":[\"b\",\"a\"]}")]
    [InlineData("{\"name\":\"\u00e9\U0001F600\",\"age\":0,\"score\":-123456789012345.5e+9}")]
    [InlineData("{\"name\":\"abcde\",\"age\":7,\"score\":0.000000000000001}")]
    public void CanonicalDocumentsAreAcceptedAndComplete(string doc)
    {
        Assert.Equal((true, true), Run(Rec(Person), doc));
        Assert.Null(StructuredSupport.Validate(Person, doc));
    }

    [Theory]
    [InlineData("{\"age\":3,\"name\":\"Ann\"}", "properties out of schema order")]
    [InlineData("{\"name\":\"Ann\"}", "a required property missing")]
    [InlineData("{\"name\":\"Ann\",\"age\":3,\"other\":1}", "an undeclared property")]
    [InlineData("{ \"name\":\"Ann\",\"age\":3}", "whitespace")]
    [InlineData("{\"name\":\"abcdef\",\"age\":3}", "a string over maxLength")]
    [InlineData("{\"name\":\"\U0001F600\U0001F600\U0001F600\",\"age\":3}", "astral characters count two UTF-16 units")]
    [InlineData("{\"name\":\"a\",\"age\":03}", "a leading zero")]
    [InlineData("{\"name\":\"a\",\"age\":1.0}", "a fraction in an integer")]
    [InlineData("{\"name\":\"a\",\"age\":1234567890}", "more integer digits than an int holds")]
    [InlineData("{\"name\":\"a\",\"age\":1,\"score\":1234567890123456}", "more number digits than a double holds exactly")]
    [InlineData("{\"name\":\"a\",\"age\":1,\"score\":1e12}", "a two-digit exponent")]
    [InlineData("{\"name\":\"\\ud800\",\"age\":1}", "an escaped surrogate")]
    [InlineData("{\"name\":\"\\x\",\"age\":1}", "an unknown escape")]
    [InlineData("{\"name\":\"a\tb\",\"age\":1}", "a raw control character")]
    [InlineData("{\"name\":\"a\",\"age\":1,\"tags\":[\"a\",\"b\",\"a\"]}", "more items than maxItems")]
    [InlineData("{\"name\":\"a\",\"age\":1,\"tags\":[\"c\"]}", "a value outside the enum")]
    [InlineData("{\"name\":\"a\",\"age\":1,}", "a trailing comma")]
    [InlineData("{\"name\":\"a\",\"age\":1}x", "text after the document")]
    public void NonCanonicalOrInvalidTextIsRejected(string doc, string why)
    {
        var (accepted, complete) = Run(Rec(Person), doc);
        Assert.False(accepted, why);
        Assert.False(complete, why);
    }

    [Fact]
    public void InvalidUtf8IsRejectedInsideStrings()
    {
        var rec = Rec("""{"type":"string"}""");
        foreach (var bad in new byte[][] { [0x22, 0xC0, 0x80], [0x22, 0xE0, 0x80, 0x80], [0x22, 0xED, 0xA0, 0x80], [0x22, 0xF4, 0x90, 0x80, 0x80], [0x22, 0x80], [0x22, 0xFF], [0x22, 0xE2, 0x82, 0x22] })
        {
            var s = rec.Start(false);
            Assert.False(rec.Feed(ref s, bad), Convert.ToHexString(bad));
        }
        var ok = rec.Start(false);
        Assert.True(rec.Feed(ref ok, [0x22, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0x22]));
        Assert.True(rec.IsComplete(in ok));
    }

    [Fact]
    public void FreeKeysStayDistinctAndNumbersEndAtTheirParent()
    {
        var rec = new JsonRecognizer(JsonGrammar.AnyObject());
        Assert.Equal((true, true), Run(rec, "{\"a\":1,\"b\":[1,2.5,{\"a\":true}],\"c\":{\"c\":null}}"));
        Assert.Equal((false, false), Run(rec, "{\"a\":1,\"a\":2}"));
        Assert.Equal((false, false), Run(rec, "{\"a\\u0062\":1}")); // free keys are written without escapes
        Assert.Equal((false, false), Run(rec, "[1]")); // json_object: the root is an object
        Assert.Equal((true, false), Run(rec, "{\"a\":12"));
        var num = Rec("""{"type":"number"}""");
        Assert.Equal((true, true), Run(num, "12"));
        Assert.Equal((true, false), Run(num, "12."));
        Assert.Equal((true, true), Run(num, "-0.5E-7"));
    }

    [Fact]
    public void DepthIsBoundedForAnyJsonButScalarsStillComplete()
    {
        var rec = new JsonRecognizer(JsonGrammar.AnyObject());
        string open = "{\"a\":" + string.Concat(Enumerable.Repeat("[", 19));
        var (ok, _) = Run(rec, open);
        Assert.True(ok);
        Assert.False(Run(rec, open + "[").Accepted); // a 21st container
        Assert.Equal((true, true), Run(rec, open + "0" + new string(']', 19) + "}"));
    }

    [Fact]
    public void TheDecodersDroppedLeadingSpaceIsAcceptedOnceAtTheStart()
    {
        var rec = Rec("""{"type":"boolean"}""");
        Assert.Equal((true, true), Run(rec, " true", dropsLeadingSpace: true));
        Assert.False(Run(rec, "  true", dropsLeadingSpace: true).Accepted);
        Assert.False(Run(rec, " true", dropsLeadingSpace: false).Accepted);
    }

    [Fact]
    public void LiteralTextAroundAValueIsMatched()
    {
        var grammar = ResponseFormat.ForJsonSchema("""{"type":"object","properties":{"name":{"enum":["get_weather"]},"arguments":{"type":"object"}},"required":["name","arguments"]}""")
            .Grammar!.WithText("<tool_call>\n", "\n</tool_call>");
        var rec = new JsonRecognizer(grammar);
        Assert.Equal((true, true), Run(rec, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"));
        Assert.Equal((true, false), Run(rec, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}"));
        Assert.False(Run(rec, "<tool_call>{").Accepted);
        Assert.Equal("<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}\n</tool_call>".Length, grammar.MinBytes);
        Assert.Throws<ArgumentException>(() => ResponseFormat.ForJsonSchema("""{"type":"integer"}""").Grammar!.WithText(null, "5"));
    }

    /// <summary>
    /// From every state of random walks over random schemas: the cost is finite, following bytes that lower it by one
    /// reaches a complete document in exactly that many bytes, and every complete document reached parses and validates
    /// against its schema with JsonSchema.Net (with no duplicate keys).
    /// </summary>
    [Fact]
    public void RandomDocumentsOfRandomSchemasParseAndValidate()
    {
        int documents = 0;
        Gen.Select(StructuredSupport.Schemas, Gen.Int).Sample((schema, seed) =>
        {
            var rec = Rec(schema);
            var rng = new Random(seed);
            var walk = StructuredSupport.RandomWalk(rec, rng, rng.Next(0, 60), finish: 0.5, dropsLeadingSpace: false);
            foreach (var (state, prefix) in walk.Where((_, i) => i % 7 == 0 || i == walk.Count - 1))
            {
                int cost = rec.Cost(in state);
                Assert.True(cost < Cost.Infinite, schema);
                var rest = StructuredSupport.Complete(rec, state, rng);
                Assert.Equal(cost, rest.Length);
                string doc = Encoding.UTF8.GetString([.. prefix, .. rest]);
                AssertNoDuplicateKeys(doc);
                var errors = StructuredSupport.Validate(schema, doc);
                Assert.True(errors is null, $"schema {schema}\ndocument {doc}\n{errors}");
                documents++;
            }
        }, iter: 300, threads: 1);
        Assert.True(documents >= 600, $"{documents} documents");
    }

    internal static void AssertNoDuplicateKeys(string doc)
    {
        using var d = JsonDocument.Parse(doc);
        Check(d.RootElement);
        static void Check(JsonElement e)
        {
            if (e.ValueKind == JsonValueKind.Object)
            {
                var names = new HashSet<string>(StringComparer.Ordinal);
                foreach (var p in e.EnumerateObject()) { Assert.True(names.Add(p.Name), $"duplicate key '{p.Name}'"); Check(p.Value); }
            }
            else if (e.ValueKind == JsonValueKind.Array) foreach (var x in e.EnumerateArray()) Check(x);
        }
    }
}
