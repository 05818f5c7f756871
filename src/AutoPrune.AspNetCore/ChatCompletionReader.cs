using System.Text.Json;
using System.Text.RegularExpressions;
using AutoPrune.Extensions.AI;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.AI;

namespace AutoPrune.AspNetCore;

/// <summary>A parsed chat completion request: the chat and options in Microsoft.Extensions.AI terms, ready for <see cref="AutoPruneChatClient.CreateRequest"/>.</summary>
internal sealed record ParsedChatRequest(List<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage, IReadOnlyList<string> IgnoredFields);

/// <summary>
/// Reads the OpenAI chat completion schema into Microsoft.Extensions.AI messages and options. Every refusal is an
/// <see cref="OpenAIException"/> naming the field (its <c>param</c>) and the problem.
/// </summary>
/// <param name="maxOutputTokens">The most tokens the model generates for one answer (its limit and context); larger <c>max_tokens</c> are clamped to it.</param>
internal sealed partial class ChatCompletionReader(AutoPruneServerOptions options, ImageSource images, string modelId, int maxOutputTokens)
{
    /// <summary>Parses a body (already size-limited) into a request object; malformed JSON and wrong types are 400s naming the field.</summary>
    public static ChatCompletionRequest Deserialize(ReadOnlySpan<byte> body)
    {
        if (body.IsEmpty) throw OpenAIException.BadRequest("The request body is empty; send a JSON object with 'messages'.", code: "invalid_json");
        JsonTextValidator.Check(body); // invalid UTF-8 or a lone surrogate anywhere: a 400 naming the field, before any string is read
        ChatCompletionRequest? request;
        try
        {
            request = JsonSerializer.Deserialize(body, OpenAIJson.Default.ChatCompletionRequest);
        }
        catch (JsonException e)
        {
            throw FromJsonException(e);
        }
        return request ?? throw OpenAIException.BadRequest("The request body is JSON null; send a JSON object with 'messages'.", code: "invalid_json");
    }

    private static OpenAIException FromJsonException(JsonException e)
    {
        string path = e.Path is { Length: > 0 } p ? p : "$";
        string param = path.StartsWith("$.", StringComparison.Ordinal) ? path[2..] : path == "$" ? "" : path;
        var conversion = ConvertedTo().Match(e.Message);
        if (conversion.Success)
        {
            string expected = Describe(conversion.Groups[1].Value);
            return param.Length == 0
                ? OpenAIException.BadRequest($"The request body must be a JSON object (got a value of another type).", null, "invalid_type")
                : OpenAIException.BadRequest($"Invalid type for '{param}': expected {expected}.", param, "invalid_type");
        }
        // A syntax error: say where, without the serializer's type names.
        string where = e.LineNumber is long line ? $" (line {line + 1}, byte {e.BytePositionInLine + 1})" : "";
        string detail = e.Message.Split(" Path:", 2)[0].Split(" LineNumber:", 2)[0].TrimEnd('.', ' ');
        return OpenAIException.BadRequest($"The request body is not valid JSON{where}: {detail}.", param.Length == 0 ? null : param, "invalid_json");
    }

    [GeneratedRegex(@"could not be converted to ([^\s]+?)\.?\s(Path|$)")]
    private static partial Regex ConvertedTo();

    private static string Describe(string clrType)
    {
        if (clrType.Contains("Int32", StringComparison.Ordinal) || clrType.Contains("Int64", StringComparison.Ordinal)) return "an integer";
        if (clrType.Contains("Single", StringComparison.Ordinal) || clrType.Contains("Double", StringComparison.Ordinal)) return "a number";
        if (clrType.Contains("Boolean", StringComparison.Ordinal)) return "a boolean";
        if (clrType.Contains("String", StringComparison.Ordinal) && !clrType.Contains("Dictionary", StringComparison.Ordinal)) return "a string";
        if (clrType.Contains("List", StringComparison.Ordinal)) return "an array";
        return "an object";
    }

    /// <summary>Checks the request and translates it; images are decoded (or downloaded, when allowed) here.</summary>
    public async Task<ParsedChatRequest> ReadAsync(ChatCompletionRequest r, CancellationToken ct)
    {
        if (r.Messages is null) throw OpenAIException.BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
        if (r.Messages.Count == 0) throw OpenAIException.BadRequest("'messages' must hold at least one message.", "messages", "empty_array");
        if (r.Messages.Count > options.MaxMessages)
            throw OpenAIException.BadRequest($"'messages' holds {r.Messages.Count} messages; this server accepts at most {options.MaxMessages}.", "messages", "too_many_messages");
        if (r.Model is { Length: > 0 } model && !string.Equals(model, modelId, StringComparison.Ordinal))
            throw new OpenAIException(StatusCodes.Status404NotFound, $"The model '{model}' does not exist; this server serves '{modelId}' (see GET /v1/models).", "model", "model_not_found");
        CheckOptions(r);

        CountImages(r.Messages);
        var messages = new List<ChatMessage>(r.Messages.Count);
        int imageCount = 0;
        for (int i = 0; i < r.Messages.Count; i++)
        {
            var m = r.Messages[i] ?? throw OpenAIException.BadRequest($"'messages[{i}]' is null; each message is an object with 'role' and 'content'.", $"messages[{i}]", "invalid_value");
            messages.Add(await ReadMessageAsync(m, i, () => ++imageCount, ct).ConfigureAwait(false));
        }

        var chat = new ChatOptions
        {
            // Clients send large defaults (4096, 16384): more than the model can give is clamped to what it can, and the
            // answer ends with finish_reason "length" where the limit or the context stops it.
            MaxOutputTokens = (r.MaxCompletionTokens ?? r.MaxTokens) is int max ? Math.Min(max, maxOutputTokens) : null,
            Temperature = r.Temperature,
            TopP = r.TopP,
            Seed = r.Seed,
            StopSequences = ReadStop(r.Stop),
        };
        if (r.AutoPrune is { } knobs)
        {
            chat.AdditionalProperties = [];
            if (knobs.Method is { ValueKind: not JsonValueKind.Null } method)
                chat.AdditionalProperties[PruningKnobs.MethodKey] = Knob(() => PruningKnobs.ReadMethod(method, "autoprune.method"), "autoprune.method", "unknown_method");
            if (knobs.Budget is { ValueKind: not JsonValueKind.Null } budget)
                chat.AdditionalProperties[PruningKnobs.BudgetKey] = Knob(() => PruningKnobs.ReadBudget(budget, "autoprune.budget"), "autoprune.budget", "invalid_budget");
            if (knobs.Other is { Count: > 0 } other)
                throw OpenAIException.BadRequest($"Unknown field(s) in 'autoprune': {string.Join(", ", other.Keys.Select(k => $"'{k}'"))}; expected 'method' and 'budget'.", "autoprune", "unknown_parameter");
        }
        var ignored = r.Other?.Keys.ToList() ?? [];
        return new ParsedChatRequest(messages, chat, r.Stream == true, r.StreamOptions?.IncludeUsage == true, ignored);
    }

    /// <summary>More images than the limit are refused before any of them is decoded, naming the first one over it.</summary>
    private void CountImages(List<ChatMessageDto?> messages)
    {
        int count = 0;
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i]?.Content is not { ValueKind: JsonValueKind.Array } parts) continue;
            int p = 0;
            foreach (var part in parts.EnumerateArray())
            {
                if (part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String &&
                    type.ValueEquals("image_url"u8) && ++count > options.MaxImagesPerRequest)
                    throw OpenAIException.BadRequest($"The request holds more than {options.MaxImagesPerRequest} image(s), this server's limit per request.", $"messages[{i}].content[{p}]", "too_many_images");
                p++;
            }
        }
    }

    /// <summary>The sampling and feature fields, each refused with its own name as <c>param</c> (OpenAI's ranges; what the model cannot do by name).</summary>
    private static void CheckOptions(ChatCompletionRequest r)
    {
        if (r.N is int n && n != 1) throw OpenAIException.BadRequest($"'n' must be 1 (got {n}): one choice per request.", "n", "unsupported_value");
        if (r.MaxTokens is < 1) throw OpenAIException.BadRequest($"'max_tokens' must be at least 1 (got {r.MaxTokens}).", "max_tokens", "invalid_value");
        if (r.MaxCompletionTokens is < 1) throw OpenAIException.BadRequest($"'max_completion_tokens' must be at least 1 (got {r.MaxCompletionTokens}).", "max_completion_tokens", "invalid_value");
        if (r.Temperature is float t && !(t >= 0 && t <= 2))
            throw OpenAIException.BadRequest($"'temperature' must be between 0 and 2 (got {Number(t)}).", "temperature", "invalid_value");
        if (r.TopP is float p && !(p > 0 && p <= 1))
            throw OpenAIException.BadRequest($"'top_p' must be greater than 0 and at most 1 (got {Number(p)}).", "top_p", "invalid_value");
        if (r.Seed is long seed && seed is < int.MinValue or > int.MaxValue)
            throw OpenAIException.BadRequest($"'seed' must fit in a 32-bit signed integer (got {seed}).", "seed", "invalid_value");
        Penalty(r.FrequencyPenalty, "frequency_penalty");
        Penalty(r.PresencePenalty, "presence_penalty");
        if (r.Logprobs == true) throw OpenAIException.BadRequest("'logprobs' is not supported by this server: it returns no log probabilities.", "logprobs", "unsupported_parameter");
        if (r.TopLogprobs is { ValueKind: not JsonValueKind.Null })
            throw OpenAIException.BadRequest("'top_logprobs' is not supported by this server: it returns no log probabilities.", "top_logprobs", "unsupported_parameter");
        switch (r.LogitBias)
        {
            case null or { ValueKind: JsonValueKind.Null }:
                break;
            case { ValueKind: JsonValueKind.Object } bias:
                if (bias.EnumerateObject().Any())
                    throw OpenAIException.BadRequest("'logit_bias' is not supported by this server: token probabilities cannot be biased; send {} or leave it out.", "logit_bias", "unsupported_parameter");
                break;
            default:
                throw OpenAIException.BadRequest("Invalid type for 'logit_bias': expected an object mapping token ids to biases.", "logit_bias", "invalid_type");
        }
        switch (r.Tools)
        {
            case null or { ValueKind: JsonValueKind.Null }:
                break;
            case { ValueKind: JsonValueKind.Array } tools:
                if (tools.GetArrayLength() > 0) throw OpenAIException.BadRequest("'tools' is not supported: the local model has no function calling.", "tools", "unsupported_parameter");
                break;
            default:
                throw OpenAIException.BadRequest("Invalid type for 'tools': expected an array.", "tools", "invalid_type");
        }
        switch (r.ToolChoice)
        {
            case null or { ValueKind: JsonValueKind.Null }:
                break;
            case { ValueKind: JsonValueKind.String } choice when choice.ValueEquals("none") || choice.ValueEquals("auto"):
                break;
            case { ValueKind: JsonValueKind.String or JsonValueKind.Object }:
                throw OpenAIException.BadRequest("'tool_choice' can only be 'none' or 'auto': the local model has no function calling.", "tool_choice", "unsupported_value");
            default:
                throw OpenAIException.BadRequest("Invalid type for 'tool_choice': expected a string or an object.", "tool_choice", "invalid_type");
        }
        if (r.ResponseFormat?.Type is { } format && format != "text")
            throw OpenAIException.BadRequest($"'response_format' type '{format}' is not supported: the model answers in free text only.", "response_format", "unsupported_value");
        if (r.StreamOptions is not null && r.Stream != true)
            throw OpenAIException.BadRequest("'stream_options' is only allowed when 'stream' is true.", "stream_options", "invalid_value");
    }

    /// <summary>OpenAI's penalties are in [-2, 2]; the model has none, so only 0 (or nothing) is accepted.</summary>
    private static void Penalty(float? value, string name)
    {
        if (value is not float v || v == 0) return;
        if (!(v >= -2 && v <= 2)) throw OpenAIException.BadRequest($"'{name}' must be between -2 and 2 (got {Number(v)}).", name, "invalid_value");
        throw OpenAIException.BadRequest($"'{name}' is not supported by this server (got {Number(v)}): the model has no repetition penalties; send 0 or leave it out.", name, "unsupported_parameter");
    }

    private static string Number(float v) => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);

    private static object Knob<T>(Func<T> read, string param, string code) where T : notnull
    {
        try { return read(); }
        catch (ArgumentException e) { throw OpenAIException.BadRequest(e.Message.Split(" (Parameter", 2)[0], param, code); }
    }

    private static List<string>? ReadStop(JsonElement? stop)
    {
        if (stop is not { } s || s.ValueKind == JsonValueKind.Null) return null;
        if (s.ValueKind == JsonValueKind.String) return s.GetString() is { Length: > 0 } one ? [CheckStop(one, "stop")] : null;
        if (s.ValueKind != JsonValueKind.Array) throw OpenAIException.BadRequest("Invalid type for 'stop': expected a string or an array of strings.", "stop", "invalid_type");
        var list = new List<string>();
        int i = 0;
        foreach (var item in s.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw OpenAIException.BadRequest($"Invalid type for 'stop[{i}]': expected a string.", $"stop[{i}]", "invalid_type");
            if (item.GetString() is { Length: > 0 } text) list.Add(CheckStop(text, $"stop[{i}]"));
            i++;
        }
        if (list.Count > 4) throw OpenAIException.BadRequest($"'stop' holds {list.Count} sequences; at most 4 are allowed.", "stop", "invalid_value");
        return list.Count == 0 ? null : list;
    }

    /// <summary>The model's limit on one stop sequence.</summary>
    internal const int MaxStopChars = 4096;

    private static string CheckStop(string stop, string param) => stop.Length <= MaxStopChars ? stop
        : throw OpenAIException.BadRequest($"'{param}' is {stop.Length:N0} characters long; a stop sequence may have at most {MaxStopChars:N0}.", param, "invalid_value");

    private async Task<ChatMessage> ReadMessageAsync(ChatMessageDto m, int index, Func<int> nextImage, CancellationToken ct)
    {
        string at = $"messages[{index}]";
        var role = m.Role switch
        {
            null => throw OpenAIException.BadRequest($"Missing required parameter: '{at}.role'.", $"{at}.role", "missing_required_parameter"),
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            _ => throw OpenAIException.BadRequest($"'{at}.role' is '{m.Role}'; this server supports 'system', 'developer', 'user' and 'assistant' (no tools or functions).", $"{at}.role", "unsupported_value"),
        };
        if (m.ToolCalls is { ValueKind: JsonValueKind.Array } calls && calls.GetArrayLength() > 0)
            throw OpenAIException.BadRequest($"'{at}.tool_calls' is not supported: the local model has no function calling.", $"{at}.tool_calls", "unsupported_parameter");
        var contents = new List<AIContent>();
        switch (m.Content)
        {
            case null or { ValueKind: JsonValueKind.Null }:
                throw OpenAIException.BadRequest($"Missing required parameter: '{at}.content'.", $"{at}.content", "missing_required_parameter");
            case { ValueKind: JsonValueKind.String } text:
                contents.Add(new TextContent(text.GetString()));
                break;
            case { ValueKind: JsonValueKind.Array } parts:
                int p = 0;
                foreach (var part in parts.EnumerateArray())
                {
                    contents.Add(await ReadPartAsync(part, role, $"{at}.content[{p}]", nextImage, ct).ConfigureAwait(false));
                    p++;
                }
                break;
            default:
                throw OpenAIException.BadRequest($"Invalid type for '{at}.content': expected a string or an array of content parts.", $"{at}.content", "invalid_type");
        }
        return new ChatMessage(role, contents) { AuthorName = m.Name };
    }

    private async Task<AIContent> ReadPartAsync(JsonElement part, ChatRole role, string at, Func<int> nextImage, CancellationToken ct)
    {
        if (part.ValueKind != JsonValueKind.Object)
            throw OpenAIException.BadRequest($"Invalid type for '{at}': expected an object with 'type'.", at, "invalid_type");
        if (!part.TryGetProperty("type", out var typeElement) || typeElement.ValueKind != JsonValueKind.String)
            throw OpenAIException.BadRequest($"Missing required parameter: '{at}.type' (a string: 'text' or 'image_url').", $"{at}.type", "missing_required_parameter");
        string type = typeElement.GetString()!;
        switch (type)
        {
            case "text":
                if (!part.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                    throw OpenAIException.BadRequest($"'{at}.text' must be a string.", $"{at}.text", "invalid_type");
                return new TextContent(text.GetString());
            case "image_url" when role == ChatRole.User:
                if (nextImage() > options.MaxImagesPerRequest)
                    throw OpenAIException.BadRequest($"The request holds more than {options.MaxImagesPerRequest} image(s), this server's limit per request.", at, "too_many_images");
                JsonElement? url = null;
                if (part.TryGetProperty("image_url", out var image))
                {
                    if (image.ValueKind == JsonValueKind.String) url = image;
                    else if (image.ValueKind == JsonValueKind.Object && image.TryGetProperty("url", out var u) && u.ValueKind == JsonValueKind.String) url = u;
                }
                if (url is not { } urlString || urlString.ValueEquals(""u8))
                    throw OpenAIException.BadRequest($"'{at}.image_url.url' must be a string: a data: URL (data:image/png;base64,...) or an allowed http(s) URL.", $"{at}.image_url.url", "invalid_type");
                return await images.ReadAsync(urlString, $"{at}.image_url.url", ct).ConfigureAwait(false);
            case "image_url":
                throw OpenAIException.BadRequest($"'{at}' is an image in a {role} message; images are allowed in user messages only.", at, "unsupported_content_type");
            default:
                throw OpenAIException.BadRequest($"'{at}.type' is '{type}', an unsupported content type; this server accepts 'text' and 'image_url'.", $"{at}.type", "unsupported_content_type");
        }
    }
}
