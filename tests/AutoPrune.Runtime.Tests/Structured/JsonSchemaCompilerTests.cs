using System.Text;
using AutoPrune.Generation.Constraints;
using Xunit;

namespace AutoPrune.Tests.Structured;

/// <summary>What the schema compiler accepts, what it refuses (naming the keyword and its JSON pointer), and the shortest documents it computes.</summary>
public sealed class JsonSchemaCompilerTests
{
    [Theory]
    [InlineData("""{"type":"string","pattern":"^a"}""", "'pattern' at '#/pattern'")]
    [InlineData("""{"type":"string","format":"date"}""", "'format' at '#/format'")]
    [InlineData("""{"type":"string","minLength":2}""", "'minLength' at '#/minLength'")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer","minimum":0}}}""", "'minimum' at '#/properties/a/minimum'")]
    [InlineData("""{"type":"object","properties":{"a/b":{"type":"number","multipleOf":2}}}""", "'multipleOf' at '#/properties/a~1b/multipleOf'")]
    [InlineData("""{"type":"array","items":{"type":"string"},"uniqueItems":true}""", "'uniqueItems' at '#/uniqueItems'")]
    [InlineData("""{"type":"array","items":[{"type":"string"}]}""", "'items' at '#/items' (an array of item schemas")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"string"}]}""", "'prefixItems' at '#/prefixItems'")]
    [InlineData("""{"type":"object","patternProperties":{"^a":{}}}""", "'patternProperties' at '#/patternProperties'")]
    [InlineData("""{"type":"object","propertyNames":{"maxLength":3}}""", "'propertyNames' at '#/propertyNames'")]
    [InlineData("""{"type":"object","minProperties":1}""", "'minProperties' at '#/minProperties'")]
    [InlineData("""{"not":{"type":"string"}}""", "'not' at '#/not'")]
    [InlineData("""{"if":{},"then":{}}""", "'if' at '#/if'")]
    [InlineData("""{"allOf":[{"type":"string"},{"maxLength":3}]}""", "'allOf' at '#/allOf' (with more than one schema)")]
    [InlineData("""{"anyOf":[{"type":"object"},{"type":"object","properties":{"a":{}}}]}""", "'anyOf' at '#/anyOf' (two of its branches can both start with '{'")]
    [InlineData("""{"oneOf":[{"type":"integer"},{"type":"number"}]}""", "'oneOf' at '#/oneOf' (two of its branches can both start with '-'")]
    [InlineData("""{"type":"object","properties":{"next":{"$ref":"#"}}}""", "'$ref' at '#/properties/next/$ref' ('#' refers to a schema that contains it")]
    [InlineData("""{"$defs":{"n":{"type":"array","items":{"$ref":"#/$defs/n"}}},"$ref":"#/$defs/n"}""", "'$ref' at '#/$defs/n/items/$ref'")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "'$ref' at '#/$ref' ('https://example.com/s.json' is outside the schema")]
    [InlineData("""{"$ref":"#node"}""", "names an anchor")]
    [InlineData("""{"$ref":"#/$defs/a","maxLength":3,"$defs":{"a":{}}}""", "'maxLength' at '#/maxLength' (keywords beside $ref")]
    [InlineData("""{"type":"string","enum":[{"a":1}]}""", "'enum' at '#/enum/0' (a value that is an object")]
    [InlineData("""{"const":[1]}""", "'const' at '#/const' (a value that is an array")]
    [InlineData("""{"type":"object","properties":{"a":{"$id":"x"}}}""", "'$id' at '#/properties/a/$id'")]
    [InlineData("""{"nullable":true,"type":"string"}""", "'nullable' at '#/nullable'")]
    [InlineData("""{"type":"object","unevaluatedProperties":false}""", "'unevaluatedProperties' at '#/unevaluatedProperties'")]
    public void UnsupportedKeywordsAreRefusedNamingThemAndWhere(string schema, string expected)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => ResponseFormat.ForJsonSchema(schema));
        Assert.Contains(expected, e.Message);
        Assert.Contains("not support", e.Message);
        Assert.Equal("schema", e.ParamName);
    }

    [Theory]
    [InlineData("""{"type":"strin"}""", "'#/type': 'strin' is not a JSON schema type")]
    [InlineData("""{"type":[]}""", "'#/type': an empty list of types")]
    [InlineData("""{"type":"array","minItems":3,"maxItems":1}""", "maxItems 1 is less than minItems 3")]
    [InlineData("""{"type":"array","minItems":-1}""", "'#/minItems': 'minItems' must be a non-negative integer, not -1")]
    [InlineData("""{"type":"string","maxLength":1.5}""", "'maxLength' must be a non-negative integer, not 1.5")]
    [InlineData("""{"type":"integer","enum":["a",1.5]}""", "none of the enum values matches the schema's type")]
    [InlineData("""{"enum":[]}""", "'#/enum': an empty enum matches no value")]
    [InlineData("""{"enum":[1,2],"const":3}""", "'#/const': the const is none of the enum's values")]
    [InlineData("""{"type":"object","properties":{"a":false}}""", "'#/properties/a': the schema false matches no value")]
    [InlineData("""{"type":"object","required":["b"],"additionalProperties":false}""", "'b' is required but not in 'properties', and additionalProperties is false")]
    [InlineData("""{"$ref":"#/$defs/missing"}""", "'$ref' '#/$defs/missing' does not resolve")]
    [InlineData("""{"type":"object","properties":{"a":1}}""", "'#/properties/a': a schema must be an object or a boolean, not a number")]
    [InlineData("""{"type":"object","required":"a"}""", "'required' must be an array of property names")]
    [InlineData("""{"properties":{"\ud800":{}}}""", "unpaired surrogate")]
    [InlineData("""{"type": "string",""", "not valid JSON")]
    public void InvalidSchemasAreRefusedSayingWhy(string schema, string expected)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => ResponseFormat.ForJsonSchema(schema));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void SchemasNestedBeyondTheDepthLimitAreRefused()
    {
        string deep = "{\"type\":\"string\"}";
        for (int i = 0; i < 25; i++) deep = $"{{\"type\":\"array\",\"items\":{deep}}}";
        var e = Assert.ThrowsAny<ArgumentException>(() => ResponseFormat.ForJsonSchema(deep));
        Assert.Contains("nests objects and arrays 21 levels deep", e.Message);
        Assert.Contains("at most 20", e.Message);
        Assert.ThrowsAny<ArgumentException>(() => ResponseFormat.ForJsonSchema(new string(' ', JsonSchemaCompiler.MaxSchemaBytes + 1)));
        // a long chain of references (d0 -> d1 -> ... ) is refused, not followed until the stack overflows
        var chain = new StringBuilder("{\"$ref\":\"#/$defs/d0\",\"$defs\":{");
        for (int i = 0; i < 20_000; i++) chain.Append($"\"d{i}\":{{\"$ref\":\"#/$defs/d{i + 1}\"}},");
        chain.Append("\"d20000\":{\"type\":\"string\"}}}");
        var e2 = Assert.ThrowsAny<ArgumentException>(() => ResponseFormat.ForJsonSchema(chain.ToString()));
        Assert.Contains("nests more than 256 subschemas", e2.Message);
    }

    /// <summary>The shortest document of each schema, written out: what the token budget check and the decoder count on.</summary>
    [Theory]
    [InlineData("""{"type":"string"}""", "\"\"")]
    [InlineData("""{"type":"integer"}""", "0")]
    [InlineData("""{"type":["null","boolean"]}""", "null")]
    [InlineData("""{"enum":["red","a",12345]}""", "\"a\"")]
    [InlineData("""{"type":"object"}""", "{}")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string"},"bb":{"type":"integer"}},"required":["bb"]}""", "{\"bb\":0}")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string"},"bb":{"type":"integer"}},"required":["a","bb"]}""", "{\"a\":\"\",\"bb\":0}")]
    [InlineData("""{"type":"object","required":["q\"x"]}""", "{\"q\\\"x\":0}")]
    [InlineData("""{"type":"array","items":{"type":"boolean"},"minItems":2}""", "[true,true]")]
    [InlineData("""{"$defs":{"p":{"type":"object","properties":{"x":{"type":"number"}},"required":["x"]}},"type":"array","items":{"$ref":"#/$defs/p"},"minItems":1}""", "[{\"x\":0}]")]
    [InlineData("""{"anyOf":[{"type":"string"},{"type":"null"}]}""", "\"\"")]
    [InlineData("""{}""", "0")]
    public void ShortestDocumentsAreWhatTheGrammarCounts(string schema, string shortest)
    {
        var grammar = ResponseFormat.ForJsonSchema(schema).Grammar!;
        Assert.Equal(Encoding.UTF8.GetByteCount(shortest), grammar.MinBytes);
        var rec = new JsonRecognizer(grammar);
        var s = rec.Start(false);
        Assert.True(rec.Feed(ref s, Encoding.UTF8.GetBytes(shortest)), shortest);
        Assert.True(rec.IsComplete(in s), shortest);
        Assert.Equal(grammar.MinBytes, StructuredSupport.Complete(rec, rec.Start(false)).Length);
    }

    [Fact]
    public void FormatsCompareByKindSchemaAndName()
    {
        const string schema = """{"type":"object","properties":{"a":{"type":"integer"}}}""";
        Assert.Equal(ResponseFormat.ForJsonSchema(schema, "n"), ResponseFormat.ForJsonSchema(schema, "n"));
        Assert.NotEqual(ResponseFormat.ForJsonSchema(schema, "n"), ResponseFormat.ForJsonSchema(schema));
        Assert.Same(ResponseFormat.ForJsonSchema(schema).Grammar, ResponseFormat.ForJsonSchema(schema).Grammar); // compiled once
        Assert.Null(ResponseFormat.Text.Grammar);
        Assert.Equal(ResponseFormatKind.JsonObject, ResponseFormat.JsonObject.Kind);
        Assert.Equal("JSON schema 'n'", ResponseFormat.ForJsonSchema(schema, "n").ToString());
    }
}
