using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace AutoPrune.AspNetCore;

/// <summary>
/// Checks that every string in a request body (values and property names) is text: valid UTF-8, and no escaped lone
/// surrogate such as <c>\ud800</c>. System.Text.Json reads such strings lazily and fails deep inside a handler, so the
/// body is walked once before it is deserialized and a bad string is refused with the JSON path of the field
/// (<c>messages[0].content[1].text</c>) as the error's <c>param</c>.
/// </summary>
internal static class JsonTextValidator
{
    /// <summary>The most JSON values (and property names) a body may hold: far more than any chat needs, and what bounds the parsed document's index.</summary>
    public const int MaxTokens = 100_000;

    /// <summary>
    /// Throws a 400 naming the first string that is not text. Syntax errors are left to the deserializer (it reports them
    /// with its own line and position), so a body that is not JSON passes this check.
    /// </summary>
    public static void Check(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 64 });
        var path = new List<Frame>();
        int tokens = 0;
        try
        {
            while (reader.Read())
            {
                if (++tokens > MaxTokens)
                    throw OpenAIException.BadRequest($"The request body holds more than {MaxTokens:N0} JSON values; a chat completion needs far fewer.", Param(path, includeLast: true), "too_many_values");
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject:
                        Advance(path);
                        path.Add(new Frame(false));
                        break;
                    case JsonTokenType.StartArray:
                        Advance(path);
                        path.Add(new Frame(true));
                        break;
                    case JsonTokenType.EndObject:
                    case JsonTokenType.EndArray:
                        path.RemoveAt(path.Count - 1);
                        break;
                    case JsonTokenType.PropertyName:
                        if (!IsText(ref reader, out string? name))
                            throw Invalid(Param(path, includeLast: false), propertyName: true);
                        path[^1] = path[^1] with { Name = name };
                        break;
                    case JsonTokenType.String:
                        Advance(path);
                        if (!IsText(ref reader, out _)) throw Invalid(Param(path, includeLast: true), propertyName: false);
                        break;
                    default:
                        Advance(path);
                        break;
                }
            }
        }
        catch (JsonException)
        {
            // Not JSON (or nested too deeply): the deserializer says where.
        }
    }

    /// <summary>A value in an array moves the array's index on (the first value is index 0).</summary>
    private static void Advance(List<Frame> path)
    {
        if (path.Count > 0 && path[^1].IsArray) path[^1] = path[^1] with { Index = path[^1].Index + 1 };
    }

    /// <summary>Whether the current string token is text; its value (decoded) when it is a property name. Nothing is copied for a value.</summary>
    private static bool IsText(ref Utf8JsonReader reader, out string? name)
    {
        name = null;
        // The raw bytes must be UTF-8; escapes are ASCII, and the only thing they can add that is not text is a lone
        // surrogate (\ud800 without its pair), which the scan below finds without unescaping anything.
        var raw = reader.HasValueSequence ? System.Buffers.BuffersExtensions.ToArray(reader.ValueSequence) : reader.ValueSpan;
        if (!Utf8.IsValid(raw) || (reader.ValueIsEscaped && HasLoneSurrogate(raw))) return false;
        if (reader.TokenType == JsonTokenType.PropertyName) name = reader.GetString();
        return true;
    }

    /// <summary>Whether the escaped JSON string <paramref name="raw"/> holds a <c>\uXXXX</c> surrogate that is not one half of a pair.</summary>
    internal static bool HasLoneSurrogate(ReadOnlySpan<byte> raw)
    {
        bool pendingHigh = false;
        int i = 0;
        while (true)
        {
            int next = raw[i..].IndexOf((byte)'\\');
            if (next < 0) return pendingHigh;
            // Text between escapes ends a pending high surrogate.
            if (pendingHigh && next > 0) return true;
            i += next;
            if (i + 1 >= raw.Length) return pendingHigh;
            if (raw[i + 1] != (byte)'u')
            {
                if (pendingHigh) return true;
                i += 2;
                continue;
            }
            if (i + 6 > raw.Length || !TryHex(raw.Slice(i + 2, 4), out int unit)) return true; // the reader refuses this first
            bool high = unit is >= 0xD800 and <= 0xDBFF, low = unit is >= 0xDC00 and <= 0xDFFF;
            if (pendingHigh != low) return true; // a low without its high, or a high followed by something else
            pendingHigh = high;
            i += 6;
        }
    }

    private static bool TryHex(ReadOnlySpan<byte> hex, out int value)
    {
        value = 0;
        foreach (byte b in hex)
        {
            int d = b is >= (byte)'0' and <= (byte)'9' ? b - '0' : b is >= (byte)'a' and <= (byte)'f' ? b - 'a' + 10 : b is >= (byte)'A' and <= (byte)'F' ? b - 'A' + 10 : -1;
            if (d < 0) return false;
            value = value * 16 + d;
        }
        return true;
    }

    /// <summary>The JSON path of the current value (<c>messages[0].content[1].text</c>), or of the object holding the property.</summary>
    private static string? Param(List<Frame> path, bool includeLast)
    {
        var sb = new StringBuilder();
        int count = path.Count;
        for (int i = 0; i < count; i++)
        {
            var f = path[i];
            bool last = i == count - 1;
            if (f.IsArray)
            {
                if (f.Index >= 0 && (!last || includeLast)) sb.Append('[').Append(f.Index).Append(']');
            }
            else if (f.Name is { } n && (!last || includeLast))
            {
                if (sb.Length > 0) sb.Append('.');
                sb.Append(n);
            }
        }
        return sb.Length == 0 ? null : sb.ToString();
    }

    private static OpenAIException Invalid(string? param, bool propertyName)
    {
        string where = propertyName
            ? param is null ? "A property name of the request body" : $"A property name in '{param}'"
            : $"'{param}'";
        return OpenAIException.BadRequest(
            $"{where} is not valid text: it holds bytes that are not UTF-8, or an escaped lone surrogate such as \\ud800. Send the body as UTF-8 JSON.",
            param, "invalid_encoding");
    }

    /// <summary>One level of the path: an object (with the property being read) or an array (with the index of the current value).</summary>
    private readonly record struct Frame(bool IsArray)
    {
        public string? Name { get; init; }
        public int Index { get; init; } = -1;
    }
}
