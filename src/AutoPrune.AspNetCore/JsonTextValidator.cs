using System.Buffers;
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
    /// <summary>Escaped strings up to this many bytes are unescaped into a pooled buffer; longer ones into a buffer of their own (never pooled).</summary>
    private const int PooledUnescapeBytes = 64 * 1024;

    /// <summary>
    /// Throws a 400 naming the first string that is not text. Syntax errors are left to the deserializer (it reports them
    /// with its own line and position), so a body that is not JSON passes this check.
    /// </summary>
    public static void Check(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 64 });
        var path = new List<Frame>();
        try
        {
            while (reader.Read())
            {
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

    /// <summary>Whether the current string token is text; its value (decoded) when it is a property name.</summary>
    private static bool IsText(ref Utf8JsonReader reader, out string? name)
    {
        name = null;
        bool wantName = reader.TokenType == JsonTokenType.PropertyName;
        if (!reader.ValueIsEscaped)
        {
            bool valid = reader.HasValueSequence ? IsValid(reader.ValueSequence) : Utf8.IsValid(reader.ValueSpan);
            if (valid && wantName) name = reader.GetString();
            return valid;
        }
        // Escapes: unescape to UTF-8 (which refuses a lone surrogate escape) and check what comes out.
        long length = reader.HasValueSequence ? reader.ValueSequence.Length : reader.ValueSpan.Length;
        byte[]? rented = length <= PooledUnescapeBytes ? ArrayPool<byte>.Shared.Rent((int)length) : null;
        var buffer = rented ?? new byte[length];
        try
        {
            int written = reader.CopyString(buffer);
            var text = buffer.AsSpan(0, written);
            if (!Utf8.IsValid(text)) return false;
            if (wantName) name = Encoding.UTF8.GetString(text);
            return true;
        }
        catch (InvalidOperationException)
        {
            return false; // an escaped lone surrogate (or an escape that does not decode)
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static bool IsValid(ReadOnlySequence<byte> sequence)
    {
        if (sequence.IsSingleSegment) return Utf8.IsValid(sequence.FirstSpan);
        return Utf8.IsValid(sequence.ToArray());
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
