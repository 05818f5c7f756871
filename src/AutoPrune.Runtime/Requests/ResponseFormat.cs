using AutoPrune.Generation.Constraints;

namespace AutoPrune;

/// <summary>What a <see cref="ResponseFormat"/> asks the answer to be.</summary>
public enum ResponseFormatKind
{
    /// <summary>Free text (the default).</summary>
    Text,

    /// <summary>One JSON object, any keys and values (OpenAI's <c>json_object</c>).</summary>
    JsonObject,

    /// <summary>One JSON document that validates against a JSON schema.</summary>
    JsonSchema,
}

/// <summary>
/// The shape the answer must have. With <see cref="JsonObject"/> or <see cref="ForJsonSchema"/> decoding is constrained
/// token by token, so the answer always parses (and validates against the schema), on every model and tokenizer; it is
/// written compactly (no whitespace outside strings, properties in schema order). The answer is finished within the
/// request's token budget: a request whose budget cannot hold the schema's shortest document is refused before it runs.
/// The schema is not added to the prompt: say in the question what the fields mean if the model needs to know.
/// <para>
/// Supported JSON schema subset: <c>type</c> (object, string, number, integer, boolean, array, null, or a list of them),
/// <c>properties</c>, <c>required</c>, <c>additionalProperties</c>, <c>items</c>, <c>minItems</c>, <c>maxItems</c>,
/// <c>maxLength</c>, <c>enum</c> and <c>const</c> of scalars, <c>$ref</c> to <c>$defs</c>/<c>definitions</c> (not
/// recursive), <c>anyOf</c>/<c>oneOf</c> of branches that start differently (e.g. a type or null), single-schema
/// <c>allOf</c>, and annotations (<c>title</c>, <c>description</c>, <c>default</c>, ...). Anything else is an
/// <see cref="ArgumentException"/> naming the keyword and its JSON pointer.
/// </para>
/// </summary>
public sealed class ResponseFormat : IEquatable<ResponseFormat>
{
    /// <summary>Recently compiled schemas, by the SHA-256 of their name and text (so that large schemas are not kept as keys).</summary>
    private static readonly LruCache<string, JsonGrammar> Compiled = new(64);

    private ResponseFormat(ResponseFormatKind kind, string? schema, string? name, JsonGrammar? grammar)
    {
        Kind = kind;
        Schema = schema;
        SchemaName = name;
        Grammar = grammar;
    }

    /// <summary>Free text.</summary>
    public static ResponseFormat Text { get; } = new(ResponseFormatKind.Text, null, null, null);

    /// <summary>Any JSON object.</summary>
    public static ResponseFormat JsonObject { get; } = new(ResponseFormatKind.JsonObject, null, null, JsonGrammar.AnyObject());

    /// <summary>A JSON document valid against <paramref name="schema"/> (JSON schema text, the subset above).</summary>
    /// <param name="name">A name for the schema (messages only).</param>
    /// <exception cref="ArgumentException">The schema is not JSON, uses a keyword outside the subset (named with its JSON
    /// pointer), or matches no document.</exception>
    public static ResponseFormat ForJsonSchema(string schema, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(schema);
        string key = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes((name ?? "") + "\0" + schema)));
        if (!Compiled.TryGet(key, out var grammar))
        {
            grammar = JsonSchemaCompiler.Compile(schema, name);
            Compiled.Add(key, grammar);
        }
        return new ResponseFormat(ResponseFormatKind.JsonSchema, schema, name, grammar);
    }

    public ResponseFormatKind Kind { get; }

    /// <summary>The JSON schema text (for <see cref="ResponseFormatKind.JsonSchema"/>).</summary>
    public string? Schema { get; }

    /// <summary>The schema's name, if one was given.</summary>
    public string? SchemaName { get; }

    /// <summary>The grammar decoding follows; null for text.</summary>
    internal JsonGrammar? Grammar { get; }

    public bool Equals(ResponseFormat? other) => other is not null && Kind == other.Kind && Schema == other.Schema && SchemaName == other.SchemaName;
    public override bool Equals(object? obj) => obj is ResponseFormat f && Equals(f);
    public override int GetHashCode() => HashCode.Combine(Kind, Schema, SchemaName);
    public override string ToString() => Kind switch
    {
        ResponseFormatKind.JsonSchema => SchemaName is { Length: > 0 } n ? $"JSON schema '{n}'" : "JSON schema",
        ResponseFormatKind.JsonObject => "JSON object",
        _ => "text",
    };
}
