using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace AutoPrune.Pruning;

/// <summary>
/// Reads and writes <see cref="PruningOptions"/> as JSON: one object whose keys are the property names (any case),
/// enums as names ("AutoPrune", "processed"), plus an optional <c>"Preset"</c> (see <see cref="PruningOptions.Presets"/>)
/// that the other keys then override. The same object works as an <c>IConfiguration</c> section.
/// </summary>
internal static class PruningOptionsJson
{
    /// <summary>The key that names a preset to start from.</summary>
    public const string PresetKey = "Preset";

    private static readonly Dictionary<string, PropertyInfo> Properties = typeof(PruningOptions)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Where(p => p.CanWrite)
        .ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);

    internal static readonly JsonSerializerOptions Options = new()
    {
        PropertyNameCaseInsensitive = true,
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(allowIntegerValues: false) },
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Every settable option name, in declaration order.</summary>
    public static IEnumerable<string> Names => typeof(PruningOptions).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite).Select(p => p.Name);

    public static PruningOptions Parse(string json, string source)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new ArgumentException($"{source}: not valid JSON (line {e.LineNumber + 1}): {e.Message}"); }
        if (root is not JsonObject obj)
            throw new ArgumentException($"{source}: expected a JSON object of pruning options such as {{\"Method\": \"autoprune\", \"Budget\": 128}}.");
        try { _ = obj.Count; } // JsonObject materialises lazily: a repeated key surfaces here
        catch (ArgumentException) { throw new ArgumentException($"{source}: a field appears twice: {RepeatedKey(json)}."); }

        var merged = new JsonObject();
        if (obj.TryGetPropertyValue(PresetKey, out var presetNode) || TryGetIgnoreCase(obj, PresetKey, out presetNode))
        {
            string name = presetNode is JsonValue v && v.TryGetValue(out string? s) ? s : throw new ArgumentException($"{source}: field '{PresetKey}' must be a preset name: {string.Join(", ", PruningOptions.Presets.Keys)}.");
            if (!PruningOptions.Presets.TryGetValue(name, out var preset))
                throw new ArgumentException($"{source}: field '{PresetKey}' is '{name}', not a preset: expected one of {string.Join(", ", PruningOptions.Presets.Keys)}.");
            foreach (var (k, value) in JsonSerializer.SerializeToNode(preset, Options)!.AsObject()) merged[k] = value?.DeepClone();
        }
        var given = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, value) in obj)
        {
            if (string.Equals(key, PresetKey, StringComparison.OrdinalIgnoreCase)) continue;
            if (!Properties.TryGetValue(key, out var prop))
                throw new ArgumentException($"{source}: unknown field '{key}'. Pruning options are: {PresetKey}, {string.Join(", ", Names)}.");
            if (!given.Add(prop.Name)) throw new ArgumentException($"{source}: a field appears twice: '{key}'.");
            merged[prop.Name] = value?.DeepClone();
        }

        PruningOptions? options;
        try { options = merged.Deserialize<PruningOptions>(Options); }
        catch (JsonException e)
        {
            string field = e.Path is { Length: > 2 } p ? p.TrimStart('$', '.') : "?";
            string expected = Properties.TryGetValue(field, out var prop) ? Describe(prop.PropertyType) : "a valid value";
            throw new ArgumentException($"{source}: field '{field}' has a value that is not {expected}.");
        }
        if (options is null) throw new ArgumentException($"{source}: expected a JSON object of pruning options.");
        options.Validate(source);
        return options;
    }

    public static string Serialize(PruningOptions options) => JsonSerializer.Serialize(options, Options);

    private static string RepeatedKey(string json)
    {
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var reader = new Utf8JsonReader(System.Text.Encoding.UTF8.GetBytes(json), new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        while (reader.Read())
            if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1 && !seen.Add(reader.GetString()!)) return $"'{reader.GetString()}'";
        return "(a repeated key)";
    }

    private static bool TryGetIgnoreCase(JsonObject obj, string key, out JsonNode? node)
    {
        foreach (var (k, v) in obj)
            if (string.Equals(k, key, StringComparison.OrdinalIgnoreCase)) { node = v; return true; }
        node = null;
        return false;
    }

    private static string Describe(Type t)
    {
        var u = Nullable.GetUnderlyingType(t) ?? t;
        if (u.IsEnum) return $"one of {string.Join(", ", Enum.GetNames(u))}";
        if (u == typeof(double) || u == typeof(float)) return "a number";
        if (u == typeof(int) || u == typeof(long)) return "an integer";
        if (u == typeof(bool)) return "true or false";
        if (u == typeof(string)) return "a string";
        return "an object of the expected shape";
    }
}
