using System.Globalization;
using System.Text;
using System.Text.Json;

namespace AutoPrune.Generation.Constraints;

/// <summary>
/// Compiles a JSON schema (the subset below) into a <see cref="JsonGrammar"/> whose every complete document validates
/// against it. Supported: <c>type</c> (object, string, number, integer, boolean, array, null, or a list of them);
/// <c>properties</c>, <c>required</c>, <c>additionalProperties</c> (false, true, absent or a schema); <c>items</c> (a schema
/// or a boolean), <c>minItems</c>, <c>maxItems</c>; <c>maxLength</c>; <c>enum</c> and <c>const</c> of scalars; <c>$ref</c>
/// to <c>#</c>-pointers (<c>$defs</c>, <c>definitions</c>, any path) that are not recursive; <c>anyOf</c>/<c>oneOf</c> whose
/// branches start with different characters (a type or null, say), single-branch <c>allOf</c>; and the annotations
/// <c>title</c>, <c>description</c>, <c>$schema</c>, <c>$id</c> (at the root), <c>$comment</c>, <c>default</c>,
/// <c>examples</c>, <c>deprecated</c>, <c>readOnly</c>, <c>writeOnly</c>. Any other keyword is refused with an
/// <see cref="ArgumentException"/> naming it and its JSON pointer.
/// <para>
/// Choices that keep the output valid: an object with <c>properties</c> is written with those properties only, in
/// schema order (required ones always, optional ones as the model likes), whatever <c>additionalProperties</c> says
/// (fewer properties never break it); required names missing from <c>properties</c> are written after them with the
/// <c>additionalProperties</c> schema (refused when that is false). An object without <c>properties</c> or <c>required</c>
/// has free keys (distinct, no escapes) with <c>additionalProperties</c>' values (any JSON when it is true or absent;
/// only <c>{}</c> when false). Without <c>type</c>, the keywords present decide (<c>properties</c> → object, <c>items</c>
/// → array, <c>maxLength</c> → string), and a schema with none of them is any JSON value.
/// </para>
/// </summary>
internal sealed class JsonSchemaCompiler
{
    /// <summary>Largest schema text accepted (bytes of UTF-8).</summary>
    public const int MaxSchemaBytes = 1 << 20;
    public const int MaxProperties = 1024;
    public const int MaxEnumValues = 4096;
    public const int MaxLiteralBytes = 1 << 16;

    private static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
    {
        "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
    };

    private static readonly HashSet<string> Assertions = new(StringComparer.Ordinal)
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "maxLength", "enum", "const", "$ref", "anyOf", "oneOf", "allOf",
    };

    private static readonly string[] TypeNames = ["object", "array", "string", "number", "integer", "boolean", "null"];

    /// <summary>The supported keywords, for messages.</summary>
    public static string SupportedKeywords { get; } = string.Join(", ", Assertions.Order(StringComparer.Ordinal)) + " (and annotations: " + string.Join(", ", Annotations.Order(StringComparer.Ordinal)) + ")";

    private readonly JsonElement _root;
    private readonly GrammarBuilder _b;
    private readonly Dictionary<string, GrammarNode> _refs = new(StringComparer.Ordinal);
    private readonly HashSet<string> _onPath = new(StringComparer.Ordinal);
    private int _literalBytes;

    private JsonSchemaCompiler(JsonElement root, GrammarLimits limits)
    {
        _root = root;
        _b = new GrammarBuilder(limits);
    }

    /// <summary>Compiles <paramref name="schema"/> (JSON text).</summary>
    /// <param name="name">The schema's name, for <see cref="JsonGrammar.Description"/>.</param>
    /// <exception cref="ArgumentException">The text is not JSON, or the schema uses something outside the subset, or no
    /// document matches it; the message names the keyword and its JSON pointer.</exception>
    public static JsonGrammar Compile(string schema, string? name = null, GrammarLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(schema);
        int bytes = Encoding.UTF8.GetByteCount(schema);
        if (bytes > MaxSchemaBytes)
            throw new ArgumentException($"The JSON schema is {bytes:N0} bytes; at most {MaxSchemaBytes:N0} are accepted.", nameof(schema));
        JsonDocument doc;
        try { doc = JsonDocument.Parse(schema, new JsonDocumentOptions { MaxDepth = 128 }); }
        catch (JsonException e)
        {
            throw new ArgumentException($"The JSON schema is not valid JSON: {e.Message}", nameof(schema), e);
        }
        using (doc)
        {
            var c = new JsonSchemaCompiler(doc.RootElement, limits ?? GrammarLimits.Default);
            GrammarNode root;
            try { root = c.Schema(doc.RootElement, ""); }
            catch (InvalidOperationException e)
            {
                // System.Text.Json refuses to read a string whose escapes make an unpaired surrogate
                throw new ArgumentException($"The JSON schema holds a string with an unpaired surrogate escape, which is not Unicode text: {e.Message}", nameof(schema), e);
            }
            return c._b.Build(root, name is { Length: > 0 } ? $"JSON schema '{name}'" : "JSON schema");
        }
    }

    private static string Show(string pointer) => "#" + pointer;

    private static string Child(string pointer, string token) => pointer + "/" + token.Replace("~", "~0").Replace("/", "~1");

    private static ArgumentException Unsupported(string keyword, string pointer, string? why = null) =>
        new($"The JSON schema uses '{keyword}' at '{Show(pointer)}'{(why is null ? "" : $" ({why})")}, which structured output does not support. Supported: {SupportedKeywords}.", "schema");

    private static ArgumentException Invalid(string pointer, string what) => new($"The JSON schema is invalid at '{Show(pointer)}': {what}.", "schema");

    /// <summary>Subschemas one inside another, references followed included (a longer chain is refused before the stack runs out).</summary>
    public const int MaxNesting = 256;

    private GrammarNode Schema(JsonElement s, string ptr)
    {
        if (_onPath.Count >= MaxNesting)
            throw new ArgumentException($"The JSON schema nests more than {MaxNesting} subschemas (references followed included) at '{Show(ptr)}'; simplify it.", "schema");
        if (s.ValueKind == JsonValueKind.True) return _b.Any;
        if (s.ValueKind == JsonValueKind.False) throw Invalid(ptr, "the schema false matches no value");
        if (s.ValueKind != JsonValueKind.Object) throw Invalid(ptr, $"a schema must be an object or a boolean, not {Kind(s)}");
        if (!_onPath.Add(ptr)) throw Unsupported("$ref", ptr, "the schema refers to itself: recursive references are not supported");
        try { return SchemaCore(s, ptr); }
        finally { _onPath.Remove(ptr); }
    }

    private GrammarNode SchemaCore(JsonElement s, string ptr)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in s.EnumerateObject())
        {
            if (!seen.Add(p.Name)) throw Invalid(ptr, $"the keyword '{p.Name}' appears twice");
            if (!Annotations.Contains(p.Name) && !Assertions.Contains(p.Name)) throw Unsupported(p.Name, Child(ptr, p.Name));
            if (p.Name == "$id" && ptr.Length > 0) throw Unsupported("$id", Child(ptr, "$id"), "only the root may have an $id");
        }
        var assertions = seen.Where(Assertions.Contains).ToList();

        if (s.TryGetProperty("$ref", out var r))
        {
            if (assertions.Count > 1) throw Unsupported(assertions.First(a => a != "$ref"), Child(ptr, assertions.First(a => a != "$ref")), "keywords beside $ref are not supported");
            return Ref(r, Child(ptr, "$ref"));
        }
        foreach (var combinator in new[] { "anyOf", "oneOf", "allOf" })
        {
            if (!s.TryGetProperty(combinator, out var list)) continue;
            if (assertions.Count > 1) throw Unsupported(assertions.First(a => a != combinator), Child(ptr, assertions.First(a => a != combinator)), $"keywords beside {combinator} are not supported");
            return Combine(combinator, list, Child(ptr, combinator));
        }

        var types = ReadTypes(s, ptr);
        var alternatives = new List<GrammarNode>();
        foreach (var type in types)
        {
            switch (type)
            {
                case "object": alternatives.Add(Object(s, ptr)); break;
                case "array": alternatives.Add(Array(s, ptr)); break;
                case "string": alternatives.Add(_b.Add(new StringNode(Math.Min(_b.Limits.MaxStringLength, ReadCount(s, "maxLength", ptr) ?? int.MaxValue)))); break;
                case "number": alternatives.Add(_b.Add(new NumberNode(integer: false))); break;
                case "integer": alternatives.Add(_b.Add(new NumberNode(integer: true))); break;
                case "boolean": alternatives.Add(Literal([Encoding.ASCII.GetBytes("true"), Encoding.ASCII.GetBytes("false")])); break;
                case "null": alternatives.Add(Literal([Encoding.ASCII.GetBytes("null")])); break;
                case "any": alternatives.Add(_b.Any); break;
            }
        }

        if (s.TryGetProperty("enum", out var en) || s.TryGetProperty("const", out _))
            return Enum(s, ptr, alternatives);
        return Choice(alternatives, ptr, "type");
    }

    /// <summary>The types a schema allows: its <c>type</c>, else those its keywords imply, else "any".</summary>
    private static List<string> ReadTypes(JsonElement s, string ptr)
    {
        var types = new List<string>();
        if (s.TryGetProperty("type", out var t))
        {
            string tp = Child(ptr, "type");
            if (t.ValueKind == JsonValueKind.String) types.Add(TypeName(t, tp));
            else if (t.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var item in t.EnumerateArray())
                {
                    string name = TypeName(item, Child(tp, i.ToString(CultureInfo.InvariantCulture)));
                    if (types.Contains(name)) throw Invalid(Child(tp, i.ToString(CultureInfo.InvariantCulture)), $"the type '{name}' is listed twice");
                    types.Add(name);
                    i++;
                }
                if (types.Count == 0) throw Invalid(tp, "an empty list of types matches no value");
            }
            else throw Invalid(tp, $"'type' must be a type name or a list of them, not {Kind(t)}");
            // integer is a kind of number: a union of both is the number grammar
            if (types.Contains("number")) types.Remove("integer");
            return types;
        }
        bool Has(string k) => s.TryGetProperty(k, out _);
        // enum/const alone: their own values (of any scalar type)
        if (Has("enum") || Has("const")) return ["string", "number", "boolean", "null"];
        if (Has("properties") || Has("required") || Has("additionalProperties")) types.Add("object");
        if (Has("items") || Has("minItems") || Has("maxItems")) types.Add("array");
        if (Has("maxLength")) types.Add("string");
        if (types.Count == 0) types.Add("any"); // no keyword that implies a type: any JSON value
        return types;
    }

    private static string TypeName(JsonElement t, string ptr)
    {
        if (t.ValueKind != JsonValueKind.String) throw Invalid(ptr, $"a type must be a string, not {Kind(t)}");
        string name = t.GetString()!;
        if (!TypeNames.Contains(name)) throw Invalid(ptr, $"'{name}' is not a JSON schema type (expected one of {string.Join(", ", TypeNames)})");
        return name;
    }

    private GrammarNode Object(JsonElement s, string ptr)
    {
        var props = new List<(string Name, JsonElement Schema)>();
        if (s.TryGetProperty("properties", out var pe))
        {
            if (pe.ValueKind != JsonValueKind.Object) throw Invalid(Child(ptr, "properties"), $"'properties' must be an object, not {Kind(pe)}");
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in pe.EnumerateObject())
            {
                if (!names.Add(p.Name)) throw Invalid(Child(ptr, "properties"), $"the property '{p.Name}' is listed twice");
                props.Add((p.Name, p.Value));
            }
        }
        var required = new List<string>();
        if (s.TryGetProperty("required", out var re))
        {
            string rp = Child(ptr, "required");
            if (re.ValueKind != JsonValueKind.Array) throw Invalid(rp, $"'required' must be an array of property names, not {Kind(re)}");
            int i = 0;
            foreach (var item in re.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String) throw Invalid(Child(rp, i.ToString(CultureInfo.InvariantCulture)), $"a required name must be a string, not {Kind(item)}");
                if (!required.Contains(item.GetString()!)) required.Add(item.GetString()!);
                i++;
            }
        }
        // additionalProperties: null = absent or true (any value), a schema, or false
        GrammarNode? additional = _b.Any;
        bool additionalFalse = false;
        string ap = Child(ptr, "additionalProperties");
        if (s.TryGetProperty("additionalProperties", out var ae))
        {
            if (ae.ValueKind == JsonValueKind.False) { additional = null; additionalFalse = true; }
            else if (ae.ValueKind is JsonValueKind.True or JsonValueKind.Object) additional = Schema(ae, ap);
            else throw Invalid(ap, $"'additionalProperties' must be a boolean or a schema, not {Kind(ae)}");
        }
        if (props.Count > MaxProperties) throw Unsupported("properties", Child(ptr, "properties"), $"{props.Count} properties; at most {MaxProperties}");

        if (props.Count == 0 && required.Count == 0)
        {
            var map = _b.Add(new MapNode(additional, _b.Limits.MaxKeyLength));
            CheckDepth(map, ptr);
            return map;
        }
        var list = new List<ObjectNode.Property>();
        foreach (var (name, schema) in props)
            list.Add(new ObjectNode.Property(name, KeyBytes(name, Child(ptr, "properties")), Schema(schema, Child(Child(ptr, "properties"), name)), required.Contains(name)));
        foreach (var name in required)
        {
            if (props.Any(p => p.Name == name)) continue;
            if (additionalFalse)
                throw Invalid(Child(ptr, "required"), $"'{name}' is required but not in 'properties', and additionalProperties is false: no object matches");
            list.Add(new ObjectNode.Property(name, KeyBytes(name, Child(ptr, "required")), additional!, true));
        }
        var node = _b.Add(new ObjectNode(list));
        if (node.MinBytes >= Cost.Infinite) throw Invalid(ptr, "no finite object matches");
        CheckDepth(node, ptr);
        return node;
    }

    private GrammarNode Array(JsonElement s, string ptr)
    {
        GrammarNode? item = _b.Any;
        if (s.TryGetProperty("items", out var ie))
        {
            string ip = Child(ptr, "items");
            if (ie.ValueKind == JsonValueKind.Array) throw Unsupported("items", ip, "an array of item schemas (a tuple); give one schema for every item");
            if (ie.ValueKind == JsonValueKind.False) item = null;
            else if (ie.ValueKind is JsonValueKind.True or JsonValueKind.Object) item = Schema(ie, ip);
            else throw Invalid(ip, $"'items' must be a schema, not {Kind(ie)}");
        }
        int min = ReadCount(s, "minItems", ptr) ?? 0;
        int max = ReadCount(s, "maxItems", ptr) ?? int.MaxValue;
        if (max < min) throw Invalid(ptr, $"maxItems {max} is less than minItems {min}: no array matches");
        if (item is null && min > 0) throw Invalid(ptr, $"items is false but minItems is {min}: no array matches");
        var node = _b.Add(new ArrayNode(item, min, max));
        if (node.MinBytes >= Cost.Infinite) throw Invalid(Child(ptr, "minItems"), $"the shortest array of {min} items is too long");
        CheckDepth(node, ptr);
        return node;
    }

    private void CheckDepth(GrammarNode node, string ptr)
    {
        if (node.Depth > _b.Limits.MaxDepth)
            throw new ArgumentException($"The JSON schema nests objects and arrays {node.Depth} levels deep at '{Show(ptr)}'; structured output supports at most {_b.Limits.MaxDepth}.", "schema");
    }

    /// <summary>A non-negative integer keyword (integral numbers such as 2.0 included), or null when absent.</summary>
    private static int? ReadCount(JsonElement s, string keyword, string ptr)
    {
        if (!s.TryGetProperty(keyword, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDecimal(out decimal d) || d < 0 || d != decimal.Truncate(d))
            throw Invalid(Child(ptr, keyword), $"'{keyword}' must be a non-negative integer, not {v.GetRawText()}");
        return d > int.MaxValue ? int.MaxValue : (int)d;
    }

    private GrammarNode Enum(JsonElement s, string ptr, List<GrammarNode> alternatives)
    {
        var values = new List<(JsonElement Value, string Pointer)>();
        bool hasEnum = s.TryGetProperty("enum", out var en), hasConst = s.TryGetProperty("const", out var cn);
        if (hasEnum)
        {
            string ep = Child(ptr, "enum");
            if (en.ValueKind != JsonValueKind.Array) throw Invalid(ep, $"'enum' must be an array, not {Kind(en)}");
            if (en.GetArrayLength() == 0) throw Invalid(ep, "an empty enum matches no value");
            if (en.GetArrayLength() > MaxEnumValues) throw Unsupported("enum", ep, $"{en.GetArrayLength()} values; at most {MaxEnumValues}");
            int i = 0;
            foreach (var v in en.EnumerateArray()) values.Add((v, Child(ep, (i++).ToString(CultureInfo.InvariantCulture))));
        }
        if (hasConst)
        {
            var cp = Child(ptr, "const");
            // both: the values of the enum equal to the const
            values = hasEnum ? values.Where(v => JsonElement.DeepEquals(v.Value, cn)).ToList() : [(cn, cp)];
            if (values.Count == 0) throw Invalid(cp, "the const is none of the enum's values: no value matches");
        }
        var literals = new List<byte[]>();
        foreach (var (v, vp) in values)
        {
            if (v.ValueKind is JsonValueKind.Object or JsonValueKind.Array)
                throw Unsupported(hasConst && !hasEnum ? "const" : "enum", vp, $"a value that is an {(v.ValueKind == JsonValueKind.Object ? "object" : "array")}; only strings, numbers, booleans and null are supported");
            var text = LiteralText(v, vp);
            if (alternatives.Any(a => Matches(a, v, text))) literals.Add(text);
        }
        if (literals.Count == 0)
            throw Invalid(ptr, $"none of the {(hasEnum ? "enum" : "const")} values matches the schema's type: no value matches");
        return Literal(literals);
    }

    /// <summary>Does a scalar value (with its canonical text) belong to a node? (For filtering enum values by type.)</summary>
    private static bool Matches(GrammarNode node, JsonElement v, byte[] text) => node switch
    {
        AnyNode => true,
        StringNode str => v.ValueKind == JsonValueKind.String && v.GetString()!.Length <= str.MaxLength,
        NumberNode num => v.ValueKind == JsonValueKind.Number && (!num.Integer || IsInteger(v)),
        LiteralNode lit => lit.Literals.Any(l => l.AsSpan().SequenceEqual(text)),
        ChoiceNode c => c.Alternatives.Any(a => Matches(a, v, text)),
        _ => false,
    };

    private static bool IsInteger(JsonElement v)
    {
        if (v.TryGetDecimal(out decimal d)) return d == decimal.Truncate(d);
        return double.TryParse(v.GetRawText(), NumberStyles.Float, CultureInfo.InvariantCulture, out double x) && double.IsFinite(x) && x == Math.Floor(x);
    }

    /// <summary>The text a literal is written as: strings re-escaped canonically, numbers as given, true/false/null.</summary>
    private static byte[] LiteralText(JsonElement v, string ptr) => v.ValueKind switch
    {
        JsonValueKind.String => StringBytes(v.GetString()!, ptr),
        _ => Encoding.UTF8.GetBytes(v.GetRawText()),
    };

    private GrammarNode Literal(List<byte[]> literals)
    {
        foreach (var l in literals) _literalBytes += l.Length;
        if (_literalBytes > MaxLiteralBytes) throw Unsupported("enum", "", $"the enum and const values come to more than {MaxLiteralBytes:N0} bytes");
        return _b.Add(new LiteralNode(literals));
    }

    private static byte[] KeyBytes(string name, string ptr) => StringBytes(name, ptr);

    /// <summary>A string as JSON text: quotes, <c>\"</c>, <c>\\</c>, control characters escaped, everything else as UTF-8.</summary>
    internal static byte[] StringBytes(string value, string ptr)
    {
        for (int i = 0; i < value.Length; i++)
        {
            if (char.IsHighSurrogate(value[i]) && i + 1 < value.Length && char.IsLowSurrogate(value[i + 1])) { i++; continue; }
            if (char.IsSurrogate(value[i])) throw Invalid(ptr, $"the string '{value}' holds an unpaired surrogate (U+{(int)value[i]:X4}); it is not Unicode text");
        }
        var sb = new StringBuilder(value.Length + 2).Append('"');
        foreach (char ch in value)
        {
            switch (ch)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case < ' ': sb.Append("\\u").Append(((int)ch).ToString("x4", CultureInfo.InvariantCulture)); break;
                default: sb.Append(ch); break;
            }
        }
        return Encoding.UTF8.GetBytes(sb.Append('"').ToString());
    }

    /// <summary>The alternatives as one node: told apart by their first byte (literals merged), else refused naming <paramref name="keyword"/>.</summary>
    private GrammarNode Choice(List<GrammarNode> alternatives, string ptr, string keyword)
    {
        var flat = new List<GrammarNode>();
        foreach (var a in alternatives)
        {
            if (a is ChoiceNode c and not AnyNode) flat.AddRange(c.Alternatives);
            else flat.Add(a);
        }
        if (flat.Any(a => a is AnyNode)) return _b.Any;
        var literals = flat.OfType<LiteralNode>().ToList();
        if (literals.Count > 1)
        {
            flat.RemoveAll(a => a is LiteralNode);
            flat.Add(_b.Add(new LiteralNode(literals.SelectMany(l => l.Literals).ToList())));
        }
        if (flat.Count == 1) return flat[0];
        try { return _b.Add(new ChoiceNode(flat)); }
        catch (ChoiceOverlapException e)
        {
            throw Unsupported(keyword, ptr, $"two of its branches can both start with '{(char)e.Byte}'; only branches that start differently (such as a type and null) are supported");
        }
    }

    private GrammarNode Combine(string combinator, JsonElement list, string ptr)
    {
        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            throw Invalid(ptr, $"'{combinator}' must be a non-empty array of schemas");
        if (combinator == "allOf")
        {
            if (list.GetArrayLength() != 1) throw Unsupported("allOf", ptr, "with more than one schema");
            return Schema(list[0], Child(ptr, "0"));
        }
        var branches = new List<GrammarNode>();
        int i = 0;
        foreach (var b in list.EnumerateArray()) branches.Add(Schema(b, Child(ptr, (i++).ToString(CultureInfo.InvariantCulture))));
        // Branches that start differently match disjoint values, so anyOf and oneOf mean the same here.
        return Choice(branches, ptr, combinator);
    }

    private GrammarNode Ref(JsonElement r, string ptr)
    {
        if (r.ValueKind != JsonValueKind.String) throw Invalid(ptr, $"'$ref' must be a string, not {Kind(r)}");
        string reference = r.GetString()!;
        if (!reference.StartsWith('#'))
            throw Unsupported("$ref", ptr, $"'{reference}' is outside the schema; only references within it (#, #/$defs/..., #/definitions/...) are supported");
        string target = Uri.UnescapeDataString(reference[1..]);
        if (target.Length > 0 && target[0] != '/') throw Unsupported("$ref", ptr, $"'{reference}' names an anchor; only JSON pointers (#/...) are supported");
        if (_refs.TryGetValue(target, out var done)) return done;
        if (_onPath.Contains(target)) throw Unsupported("$ref", ptr, $"'{reference}' refers to a schema that contains it: recursive references are not supported");
        var element = _root;
        if (target.Length > 0)
        {
            foreach (var raw in target[1..].Split('/'))
            {
                string token = raw.Replace("~1", "/").Replace("~0", "~");
                if (element.ValueKind == JsonValueKind.Object && element.TryGetProperty(token, out var next)) element = next;
                else if (element.ValueKind == JsonValueKind.Array && int.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out int idx) && idx < element.GetArrayLength()) element = element[idx];
                else throw Invalid(ptr, $"'$ref' '{reference}' does not resolve to anything in the schema");
            }
        }
        var node = Schema(element, target);
        _refs[target] = node;
        return node;
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
