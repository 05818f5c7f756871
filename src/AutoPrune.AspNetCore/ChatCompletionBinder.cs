using System.Text.Json;

namespace AutoPrune.AspNetCore;

/// <summary>
/// Reads a chat completion body into <see cref="ChatCompletionRequest"/> in one pass of a <see cref="Utf8JsonReader"/>
/// over the body's own bytes, refusing a value of the wrong type with the field's path as <c>param</c>. Nothing large is
/// copied: an image URL stays a slice of the body (decoded straight to image bytes later), fields the server does not
/// read are skipped. (System.Text.Json's deserializer copied every <see cref="JsonElement"/>-typed field, and a
/// <see cref="JsonDocument"/> rents an index as large as the body from the shared array pool, which keeps it: a 31 MB
/// body cost 95 MB and 34 MB that way.)
/// </summary>
internal static class ChatCompletionBinder
{
    /// <summary>The body as a request; empty, malformed, non-text or over-large bodies and wrong types are 400s.</summary>
    public static ChatCompletionRequest Read(ReadOnlySpan<byte> body)
    {
        if (body.IsEmpty) throw OpenAIException.BadRequest("The request body is empty; send a JSON object with 'messages'.", code: "invalid_json");
        // Invalid UTF-8 or a lone surrogate anywhere: a 400 naming the field, before any string is read.
        JsonTextValidator.Check(body);
        var reader = new Utf8JsonReader(body, new JsonReaderOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 64 });
        try
        {
            reader.Read();
            if (reader.TokenType == JsonTokenType.Null) throw OpenAIException.BadRequest("The request body is JSON null; send a JSON object with 'messages'.", code: "invalid_json");
            if (reader.TokenType != JsonTokenType.StartObject) throw OpenAIException.BadRequest("The request body must be a JSON object (got a value of another type).", null, "invalid_type");
            var r = ReadRequest(ref reader, body);
            if (reader.Read()) throw new JsonException("More data follows the JSON object."); // (the reader itself refuses most trailing data)
            return r;
        }
        catch (JsonException e)
        {
            string where = e.LineNumber is long line ? $" (line {line + 1}, byte {e.BytePositionInLine + 1})" : "";
            string detail = e.Message.Split(" LineNumber:", 2)[0].TrimEnd('.', ' ');
            throw OpenAIException.BadRequest($"The request body is not valid JSON{where}: {detail}.", code: "invalid_json");
        }
    }

    private static ChatCompletionRequest ReadRequest(ref Utf8JsonReader reader, ReadOnlySpan<byte> body)
    {
        var r = new ChatCompletionRequest();
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string name = Name(ref reader);
            reader.Read();
            switch (name)
            {
                case "model": r.Model = String(ref reader, name); break;
                case "messages": r.Messages = Messages(ref reader); break;
                case "stream": r.Stream = Bool(ref reader, name); break;
                case "stream_options":
                    if (Object(ref reader, name))
                    {
                        r.HasStreamOptions = true;
                        while (NextProperty(ref reader, out string key))
                            if (key == "include_usage") r.IncludeUsage = Bool(ref reader, "stream_options.include_usage");
                            else reader.Skip();
                    }
                    break;
                case "max_tokens": r.MaxTokens = Count(ref reader, name); break;
                case "max_completion_tokens": r.MaxCompletionTokens = Count(ref reader, name); break;
                case "temperature": r.Temperature = Float(ref reader, name); break;
                case "top_p": r.TopP = Float(ref reader, name); break;
                case "seed": r.Seed = Long(ref reader, name); break;
                case "stop": r.Stop = Stop(ref reader); break;
                case "n": r.N = Int(ref reader, name); break;
                case "frequency_penalty": r.FrequencyPenalty = Float(ref reader, name); break;
                case "presence_penalty": r.PresencePenalty = Float(ref reader, name); break;
                case "logprobs": r.Logprobs = Bool(ref reader, name); break;
                case "top_logprobs":
                    r.HasTopLogprobs = reader.TokenType != JsonTokenType.Null;
                    reader.Skip();
                    break;
                case "logit_bias":
                    if (reader.TokenType == JsonTokenType.Null) break;
                    if (reader.TokenType != JsonTokenType.StartObject) throw Type(name, "an object mapping token ids to biases");
                    r.LogitBiasEntries = 0;
                    while (NextProperty(ref reader, out _)) { r.LogitBiasEntries++; reader.Skip(); }
                    break;
                case "tools":
                    if (reader.TokenType == JsonTokenType.Null) break;
                    if (reader.TokenType != JsonTokenType.StartArray) throw Type(name, "an array");
                    r.ToolCount = CountItems(ref reader);
                    break;
                case "tool_choice":
                    r.ToolChoice = reader.TokenType switch
                    {
                        JsonTokenType.Null => null,
                        JsonTokenType.String => reader.GetString(),
                        JsonTokenType.StartObject => "(object)",
                        _ => throw Type(name, "a string or an object"),
                    };
                    reader.Skip();
                    break;
                case "response_format":
                    r.ResponseFormat = ResponseFormat(ref reader, body);
                    break;
                case "autoprune": r.AutoPrune = Knobs(ref reader); break;
                default:
                    r.Ignored.Add(name);
                    reader.Skip();
                    break;
            }
        }
        return r;
    }

    private static ResponseFormatDto? ResponseFormat(ref Utf8JsonReader reader, ReadOnlySpan<byte> body)
    {
        if (!Object(ref reader, "response_format")) return null;
        var format = new ResponseFormatDto();
        while (NextProperty(ref reader, out string key))
        {
            if (key == "type") format.Type = String(ref reader, "response_format.type");
            else if (key == "json_schema" && reader.TokenType == JsonTokenType.StartObject)
            {
                format.HasJsonSchema = true;
                while (NextProperty(ref reader, out string field))
                {
                    switch (field)
                    {
                        case "schema" when reader.TokenType == JsonTokenType.StartObject:
                            // The schema's own JSON text, as the client sent it (compiled by the reader, then given to the model).
                            int start = checked((int)reader.TokenStartIndex);
                            reader.Skip();
                            format.Schema = System.Text.Encoding.UTF8.GetString(body[start..checked((int)reader.BytesConsumed)]);
                            break;
                        case "name": format.Name = String(ref reader, "response_format.json_schema.name"); break;
                        case "description": format.Description = String(ref reader, "response_format.json_schema.description"); break;
                        default: reader.Skip(); break;
                    }
                }
            }
            else reader.Skip();
        }
        return format;
    }

    private static List<ChatMessageDto?>? Messages(ref Utf8JsonReader reader)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType != JsonTokenType.StartArray) throw Type("messages", "an array");
        var list = new List<ChatMessageDto?>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            string at = $"messages[{list.Count}]";
            if (reader.TokenType == JsonTokenType.Null) { list.Add(null); continue; }
            if (reader.TokenType != JsonTokenType.StartObject) throw Type(at, "an object");
            var m = new ChatMessageDto();
            while (NextProperty(ref reader, out string key))
            {
                switch (key)
                {
                    case "role": m.Role = String(ref reader, $"{at}.role"); break;
                    case "name": m.Name = String(ref reader, $"{at}.name"); break;
                    case "content":
                        m.ContentKind = Kind(reader.TokenType);
                        if (reader.TokenType == JsonTokenType.String) m.ContentText = reader.GetString();
                        else if (reader.TokenType == JsonTokenType.StartArray) m.Parts = Parts(ref reader);
                        else reader.Skip();
                        break;
                    case "tool_calls":
                        if (reader.TokenType == JsonTokenType.StartArray) m.ToolCallCount = CountItems(ref reader);
                        else reader.Skip();
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
            list.Add(m);
        }
        return list;
    }

    private static List<ContentPartDto> Parts(ref Utf8JsonReader reader)
    {
        var parts = new List<ContentPartDto>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            var part = new ContentPartDto { Kind = Kind(reader.TokenType) };
            parts.Add(part);
            if (reader.TokenType != JsonTokenType.StartObject)
            {
                reader.Skip();
                continue;
            }
            while (NextProperty(ref reader, out string key))
            {
                switch (key)
                {
                    case "type" when reader.TokenType == JsonTokenType.String:
                        part.Type = reader.GetString();
                        break;
                    case "text" when reader.TokenType == JsonTokenType.String:
                        part.Text = reader.GetString();
                        part.HasText = true;
                        break;
                    case "image_url" when reader.TokenType == JsonTokenType.String:
                        part.ImageUrl = Slice(ref reader);
                        break;
                    case "image_url" when reader.TokenType == JsonTokenType.StartObject:
                        while (NextProperty(ref reader, out string field))
                            if (field == "url" && reader.TokenType == JsonTokenType.String) part.ImageUrl = Slice(ref reader);
                            else reader.Skip();
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
        }
        return parts;
    }

    private static List<string>? Stop(ref Utf8JsonReader reader)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.String:
                return reader.GetString() is { Length: > 0 } one ? [CheckStop(one, "stop")] : null;
            case JsonTokenType.StartArray:
                var list = new List<string>();
                int i = 0;
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.String) throw Type($"stop[{i}]", "a string");
                    if (reader.GetString() is { Length: > 0 } text) list.Add(CheckStop(text, $"stop[{i}]"));
                    if (list.Count > MaxStopSequences)
                        throw OpenAIException.BadRequest($"'stop' holds more than {MaxStopSequences} sequences; at most {MaxStopSequences} are allowed.", "stop", "invalid_value");
                    i++;
                }
                return list.Count == 0 ? null : list;
            default:
                throw Type("stop", "a string or an array of strings");
        }
    }

    /// <summary>OpenAI's limit on stop sequences.</summary>
    internal const int MaxStopSequences = 4;

    /// <summary>The model's limit on one stop sequence.</summary>
    internal const int MaxStopChars = 4096;

    private static string CheckStop(string stop, string param) => stop.Length <= MaxStopChars ? stop
        : throw OpenAIException.BadRequest($"'{param}' is {stop.Length:N0} characters long; a stop sequence may have at most {MaxStopChars:N0}.", param, "invalid_value");

    private static AutoPruneExtensionDto? Knobs(ref Utf8JsonReader reader)
    {
        if (!Object(ref reader, "autoprune")) return null;
        var knobs = new AutoPruneExtensionDto();
        while (NextProperty(ref reader, out string key))
        {
            switch (key)
            {
                case "method":
                    knobs.Method = reader.TokenType switch
                    {
                        JsonTokenType.Null => null,
                        JsonTokenType.String => reader.GetString(),
                        _ => throw OpenAIException.BadRequest($"'autoprune.method' must be a pruning method name such as \"autoprune\" (got {Describe(reader.TokenType)}).", "autoprune.method", "unknown_method"),
                    };
                    reader.Skip();
                    break;
                case "budget":
                    knobs.Budget = reader.TokenType switch
                    {
                        JsonTokenType.Null => null,
                        JsonTokenType.Number => reader.GetDouble(),
                        JsonTokenType.String => reader.GetString(),
                        _ => throw OpenAIException.BadRequest($"'autoprune.budget' must be a number (got {Describe(reader.TokenType)}).", "autoprune.budget", "invalid_budget"),
                    };
                    reader.Skip();
                    break;
                default:
                    (knobs.Other ??= []).Add(key);
                    reader.Skip();
                    break;
            }
        }
        return knobs;
    }

    /// <summary>The current property's name; a name longer than any field the server reads is not decoded (it can only be ignored).</summary>
    private static string Name(ref Utf8JsonReader reader) =>
        reader.ValueSpan.Length <= 64 ? reader.GetString()! : $"({reader.ValueSpan.Length:N0}-byte name)";

    /// <summary>Moves to the next property of the current object and onto its value; false at the object's end.</summary>
    private static bool NextProperty(ref Utf8JsonReader reader, out string name)
    {
        if (!reader.Read() || reader.TokenType != JsonTokenType.PropertyName)
        {
            name = "";
            return false;
        }
        name = Name(ref reader);
        reader.Read();
        return true;
    }

    /// <summary>Counts the values of the array the reader is on, skipping each; the reader ends on the array's end.</summary>
    private static int CountItems(ref Utf8JsonReader reader)
    {
        int n = 0;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            n++;
            reader.Skip();
        }
        return n;
    }

    private static BodySlice Slice(ref Utf8JsonReader reader) =>
        new(checked((int)reader.TokenStartIndex), reader.ValueSpan.Length + 2, reader.ValueIsEscaped);

    /// <summary>Whether the value is an object (the reader stays on its start); null is no object; anything else is refused.</summary>
    private static bool Object(ref Utf8JsonReader reader, string param) => reader.TokenType switch
    {
        JsonTokenType.Null => false,
        JsonTokenType.StartObject => true,
        _ => throw Type(param, "an object"),
    };

    private static string? String(ref Utf8JsonReader reader, string param) => reader.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.String => reader.GetString(),
        _ => throw Type(param, "a string"),
    };

    private static bool? Bool(ref Utf8JsonReader reader, string param) => reader.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.True => true,
        JsonTokenType.False => false,
        _ => throw Type(param, "a boolean"),
    };

    private static int? Int(ref Utf8JsonReader reader, string param) =>
        reader.TokenType == JsonTokenType.Null ? null : reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out int i) ? i : throw Type(param, "an integer");

    /// <summary>A token count: an integer beyond 32 bits is an integer all the same (clamped later to what the model gives).</summary>
    private static int? Count(ref Utf8JsonReader reader, string param)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.Number)
        {
            if (reader.TryGetInt64(out long l)) return (int)Math.Clamp(l, int.MinValue, int.MaxValue);
            if (reader.TryGetDouble(out double d) && double.IsFinite(d) && d == Math.Floor(d)) return (int)Math.Clamp(d, int.MinValue, int.MaxValue);
        }
        throw Type(param, "an integer");
    }

    private static long? Long(ref Utf8JsonReader reader, string param) =>
        reader.TokenType == JsonTokenType.Null ? null : reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out long l) ? l : throw Type(param, "an integer");

    private static float? Float(ref Utf8JsonReader reader, string param) =>
        reader.TokenType == JsonTokenType.Null ? null
        : reader.TokenType == JsonTokenType.Number && reader.TryGetDouble(out double d) && double.IsFinite(d) ? (float)d
        : throw Type(param, "a number");

    private static JsonValueKind Kind(JsonTokenType token) => token switch
    {
        JsonTokenType.StartObject => JsonValueKind.Object,
        JsonTokenType.StartArray => JsonValueKind.Array,
        JsonTokenType.String => JsonValueKind.String,
        JsonTokenType.Number => JsonValueKind.Number,
        JsonTokenType.True => JsonValueKind.True,
        JsonTokenType.False => JsonValueKind.False,
        JsonTokenType.Null => JsonValueKind.Null,
        _ => JsonValueKind.Undefined,
    };

    private static string Describe(JsonTokenType token) => token switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.Number => "a number",
        JsonTokenType.True or JsonTokenType.False => "a boolean",
        _ => "a value of another type",
    };

    private static OpenAIException Type(string param, string expected) =>
        OpenAIException.BadRequest($"Invalid type for '{param}': expected {expected}.", param, "invalid_type");
}
