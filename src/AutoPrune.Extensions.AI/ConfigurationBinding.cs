using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Text.Json.Nodes;
using AutoPrune.Pruning;
using Microsoft.Extensions.Configuration;

namespace AutoPrune.Extensions.AI;

/// <summary>
/// Binds the <c>"AutoPrune"</c> configuration section onto <see cref="AutoPruneChatClientOptions"/> checking as much as an
/// options file is checked: its <c>Pruning</c> subsection is read as an options file (<c>Preset</c> applied, every key
/// known, every value of its field's type, ranges validated), and a key that is no setting anywhere in the section is
/// refused naming it, instead of being ignored as the configuration binder ignores it.
/// </summary>
internal static class ConfigurationBinding
{
    /// <summary>Sections under <c>"AutoPrune"</c> that belong to other components (the server's settings).</summary>
    private static readonly string[] OtherSections = ["Server"];

    /// <summary>
    /// Binds <paramref name="section"/> onto <paramref name="options"/>; what is wrong goes into
    /// <see cref="AutoPruneChatClientOptions.ConfigurationProblems"/> (reported by <see cref="AutoPruneChatClientOptions.Validate"/>,
    /// so at start with <c>ValidateOnStart</c>), one message per problem naming the key.
    /// </summary>
    public static void Bind(IConfiguration section, AutoPruneChatClientOptions options)
    {
        var problems = new List<string>();
        IConfigurationSection? pruning = null;
        foreach (var child in section.GetChildren())
        {
            if (string.Equals(child.Key, nameof(AutoPruneChatClientOptions.Pruning), StringComparison.OrdinalIgnoreCase)) pruning = child;
            else if (!OtherSections.Contains(child.Key, StringComparer.OrdinalIgnoreCase)) Unknown(child, typeof(AutoPruneChatClientOptions), problems);
        }
        // Everything but Pruning through the binder (Pruning is read as an options file below, so its errors are reported once).
        var rest = section.AsEnumerable(makePathsRelative: true)
            .Where(kv => !string.Equals(kv.Key.Split(':')[0], nameof(AutoPruneChatClientOptions.Pruning), StringComparison.OrdinalIgnoreCase));
        try
        {
            new ConfigurationBuilder().AddInMemoryCollection(rest).Build().Bind(options);
        }
        catch (InvalidOperationException e)
        {
            problems.Add($"Configuration section '{Path(section)}': {e.Message}");
        }
        if (pruning is not null && (pruning.Value is not null || pruning.GetChildren().Any()))
        {
            try { options.Pruning = PruningOptions.Parse(ToJson(pruning, typeof(PruningOptions))?.ToJsonString() ?? "null", $"Configuration section '{pruning.Path}'"); }
            catch (ArgumentException e) { problems.Add(e.Message); }
        }
        options.ConfigurationProblems = problems;
    }

    private static string Path(IConfiguration c) => c is IConfigurationSection s ? s.Path : AutoPruneChatClientOptions.SectionName;

    private static Dictionary<string, PropertyInfo> Settable(Type t) => t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Where(p => p.SetMethod is { IsPublic: true }).ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);

    /// <summary>Adds a problem for <paramref name="child"/> if it names no setting of <paramref name="owner"/> (recursing into setting objects).</summary>
    private static void Unknown(IConfigurationSection child, Type owner, List<string> problems)
    {
        var settings = Settable(owner);
        if (!settings.TryGetValue(child.Key, out var property))
        {
            problems.Add($"Configuration key '{child.Path}' is not a setting; the settings there are: {string.Join(", ", settings.Keys.Order(StringComparer.Ordinal))}" +
                (owner == typeof(AutoPruneChatClientOptions) ? $" (and the sections {string.Join(", ", OtherSections.Prepend(nameof(AutoPruneChatClientOptions.Pruning)))})." : "."));
            return;
        }
        var type = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
        if (IsObject(type))
            foreach (var grandchild in child.GetChildren()) Unknown(grandchild, type, problems);
    }

    /// <summary>A settings object whose keys can be checked: a class or record of the library, not a value, list or service.</summary>
    private static bool IsObject(Type t) =>
        t.IsClass && t != typeof(string) && !t.IsInterface && !typeof(IEnumerable).IsAssignableFrom(t) && t.Namespace?.StartsWith("AutoPrune", StringComparison.Ordinal) == true;

    /// <summary>
    /// The section as the JSON an options file would hold: each value converted to its field's type (a number, true or
    /// false, a string, an object, an array), so that <see cref="PruningOptions.Parse"/> checks it as it checks a file; a
    /// value that does not convert stays a string, and Parse names its field and the type it expected.
    /// </summary>
    internal static JsonNode? ToJson(IConfigurationSection section, Type? type)
    {
        var target = type is null ? null : Nullable.GetUnderlyingType(type) ?? type;
        var children = section.GetChildren().ToList();
        if (children.Count == 0) return Leaf(section.Value, target);
        if (target is not null && target != typeof(string) && typeof(IEnumerable).IsAssignableFrom(target) && !IsDictionary(target) && children.All(c => int.TryParse(c.Key, out _)))
        {
            var element = target.IsArray ? target.GetElementType() : target.GetGenericArguments().FirstOrDefault();
            return new JsonArray(children.OrderBy(c => int.Parse(c.Key, CultureInfo.InvariantCulture)).Select(c => ToJson(c, element)).ToArray());
        }
        var obj = new JsonObject();
        var properties = target is null || IsDictionary(target) ? null : JsonNames(target);
        Type? valueType = target is not null && IsDictionary(target) ? target.GetGenericArguments().LastOrDefault() : null;
        foreach (var c in children)
        {
            var propertyType = properties is not null && properties.TryGetValue(c.Key, out var p) ? p.PropertyType : valueType;
            obj[c.Key] = ToJson(c, propertyType);
        }
        return obj;
    }

    private static bool IsDictionary(Type t) => t.IsGenericType && t.GetInterfaces().Append(t).Any(i => i.IsGenericType &&
        (i.GetGenericTypeDefinition() == typeof(IDictionary<,>) || i.GetGenericTypeDefinition() == typeof(IReadOnlyDictionary<,>)));

    /// <summary>A type's properties by their names and their JSON names (the calibration's snake_case), any case.</summary>
    private static Dictionary<string, PropertyInfo> JsonNames(Type t)
    {
        var d = new Dictionary<string, PropertyInfo>(StringComparer.OrdinalIgnoreCase);
        foreach (var p in t.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            d.TryAdd(p.Name, p);
            if (p.GetCustomAttribute<System.Text.Json.Serialization.JsonPropertyNameAttribute>() is { } n) d.TryAdd(n.Name, p);
        }
        return d;
    }

    private static JsonNode? Leaf(string? value, Type? t)
    {
        if (value is null) return null;
        if (t is null || t == typeof(string) || t.IsEnum) return JsonValue.Create(value);
        if (value.Length == 0) return null; // an empty value of a number, object or list: JSON null, as in the file it came from
        if (t == typeof(bool)) return bool.TryParse(value, out bool b) ? JsonValue.Create(b) : JsonValue.Create(value);
        if (t == typeof(int) && int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i)) return JsonValue.Create(i);
        if (t == typeof(long) && long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long l)) return JsonValue.Create(l);
        if ((t == typeof(double) || t == typeof(float)) && double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double x) && double.IsFinite(x))
            return JsonValue.Create(x);
        return JsonValue.Create(value);
    }
}
