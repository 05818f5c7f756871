using System.Text.Json;
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
internal sealed class ChatCompletionReader(AutoPruneServerOptions options, ImageSource images, string modelId, int maxOutputTokens)
{
    /// <summary>Checks the request and translates it; images are decoded (or downloaded, when allowed) here.</summary>
    /// <param name="body">The request body that <paramref name="r"/> was read from (its image URLs are slices of it).</param>
    public async Task<ParsedChatRequest> ReadAsync(ChatCompletionRequest r, Memory<byte> body, CancellationToken ct)
    {
        if (r.Messages is null) throw OpenAIException.BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
        if (r.Messages.Count == 0) throw OpenAIException.BadRequest("'messages' must hold at least one message.", "messages", "empty_array");
        if (r.Messages.Count > options.MaxMessages)
            throw OpenAIException.BadRequest($"'messages' holds {r.Messages.Count} messages; this server accepts at most {options.MaxMessages}.", "messages", "too_many_messages");
        if (r.Model is { Length: > 0 } model && !string.Equals(model, modelId, StringComparison.Ordinal))
            throw new OpenAIException(StatusCodes.Status404NotFound, $"The model '{Shorten(model)}' does not exist; this server serves '{modelId}' (see GET /v1/models).", "model", "model_not_found");
        CheckOptions(r);
        var responseFormat = ReadResponseFormat(r.ResponseFormat);
        if (responseFormat is not null && r.Stop is { Count: > 0 })
            throw OpenAIException.BadRequest("'stop' cannot be combined with a JSON 'response_format': a stop sequence could cut the JSON document short; the document ends by itself.", "stop", "invalid_value");

        CountImages(r.Messages);
        var messages = new List<ChatMessage>(r.Messages.Count);
        for (int i = 0; i < r.Messages.Count; i++)
        {
            var m = r.Messages[i] ?? throw OpenAIException.BadRequest($"'messages[{i}]' is null; each message is an object with 'role' and 'content'.", $"messages[{i}]", "invalid_value");
            messages.Add(await ReadMessageAsync(m, i, body, ct).ConfigureAwait(false));
        }

        var chat = new ChatOptions
        {
            // Clients send large defaults (4096, 16384): more than the model can give is clamped to what it can, and the
            // answer ends with finish_reason "length" where the limit or the context stops it.
            MaxOutputTokens = (r.MaxCompletionTokens ?? r.MaxTokens) is int max ? Math.Min(max, maxOutputTokens) : null,
            Temperature = r.Temperature,
            TopP = r.TopP,
            Seed = r.Seed,
            StopSequences = r.Stop,
            ResponseFormat = responseFormat,
        };
        if (r.AutoPrune is { } knobs)
        {
            chat.AdditionalProperties = [];
            if (knobs.Method is { } method)
                chat.AdditionalProperties[PruningKnobs.MethodKey] = Knob(() => PruningKnobs.ReadMethod(method, "autoprune.method"), "autoprune.method", "unknown_method");
            if (knobs.Budget is { } budget)
                chat.AdditionalProperties[PruningKnobs.BudgetKey] = Knob(() => PruningKnobs.ReadBudget(budget, "autoprune.budget"), "autoprune.budget", "invalid_budget");
            if (knobs.Other is { Count: > 0 } other)
                throw OpenAIException.BadRequest($"Unknown field(s) in 'autoprune': {string.Join(", ", other.Select(k => $"'{Shorten(k)}'"))}; expected 'method' and 'budget'.", "autoprune", "unknown_parameter");
        }
        return new ParsedChatRequest(messages, chat, r.Stream == true, r.IncludeUsage == true, r.Ignored);
    }

    /// <summary>More images than the limit are refused before any of them is decoded, naming the first one over it.</summary>
    private void CountImages(List<ChatMessageDto?> messages)
    {
        int count = 0;
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i]?.Parts is not { } parts) continue;
            for (int p = 0; p < parts.Count; p++)
                if (parts[p].Type == "image_url" && ++count > options.MaxImagesPerRequest)
                    throw OpenAIException.BadRequest($"The request holds more than {options.MaxImagesPerRequest} image(s), this server's limit per request.", $"messages[{i}].content[{p}]", "too_many_images");
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
        if (r.HasTopLogprobs)
            throw OpenAIException.BadRequest("'top_logprobs' is not supported by this server: it returns no log probabilities.", "top_logprobs", "unsupported_parameter");
        if (r.LogitBiasEntries > 0)
            throw OpenAIException.BadRequest("'logit_bias' is not supported by this server: token probabilities cannot be biased; send {} or leave it out.", "logit_bias", "unsupported_parameter");
        if (r.ToolCount > 0) throw OpenAIException.BadRequest("'tools' is not supported: the local model has no function calling.", "tools", "unsupported_parameter");
        if (r.ToolChoice is { } choice && choice is not ("none" or "auto"))
            throw OpenAIException.BadRequest("'tool_choice' can only be 'none' or 'auto': the local model has no function calling.", "tool_choice", "unsupported_value");
        if (r.HasStreamOptions && r.Stream != true)
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

    /// <summary>A client's string quoted in a message: at most 64 characters of it.</summary>
    private static string Shorten(string s) => s.Length <= 64 ? s : s[..64] + "...";

    /// <summary>
    /// <c>response_format</c>: <c>text</c> (or absent), <c>json_object</c>, or <c>json_schema</c> with
    /// <c>json_schema.schema</c> (and optional <c>name</c>, <c>description</c>; answers are always strict). The schema is
    /// compiled here, so one outside the supported subset is a 400 naming the keyword, with <c>param</c> the schema.
    /// </summary>
    private static ChatResponseFormat? ReadResponseFormat(ResponseFormatDto? format)
    {
        if (format is null) return null;
        switch (format.Type)
        {
            case null:
                throw OpenAIException.BadRequest("Missing required parameter: 'response_format.type'.", "response_format.type", "missing_required_parameter");
            case "text":
                return null;
            case "json_object":
                return ChatResponseFormat.Json;
            case "json_schema":
                if (!format.HasJsonSchema)
                    throw OpenAIException.BadRequest("'response_format' of type 'json_schema' needs a 'json_schema' object.", "response_format.json_schema", "missing_required_parameter");
                if (format.Schema is not { } schema)
                    throw OpenAIException.BadRequest("Missing required parameter: 'response_format.json_schema.schema' (a JSON schema object).", "response_format.json_schema.schema", "missing_required_parameter");
                try { _ = AutoPrune.ResponseFormat.ForJsonSchema(schema, format.Name); }
                catch (ArgumentException e) { throw OpenAIException.BadRequest(e.Message.Split(" (Parameter", 2)[0], "response_format.json_schema.schema", "invalid_value"); }
                using (var document = JsonDocument.Parse(schema))
                    return ChatResponseFormat.ForJsonSchema(document.RootElement.Clone(), format.Name, format.Description);
            default:
                throw OpenAIException.BadRequest($"'response_format' type '{Shorten(format.Type)}' is not supported; use 'text', 'json_object' or 'json_schema'.", "response_format.type", "unsupported_value");
        }
    }

    private static object Knob<T>(Func<T> read, string param, string code) where T : notnull
    {
        try { return read(); }
        catch (ArgumentException e) { throw OpenAIException.BadRequest(e.Message.Split(" (Parameter", 2)[0], param, code); }
    }

    private async Task<ChatMessage> ReadMessageAsync(ChatMessageDto m, int index, Memory<byte> body, CancellationToken ct)
    {
        string at = $"messages[{index}]";
        var role = m.Role switch
        {
            null => throw OpenAIException.BadRequest($"Missing required parameter: '{at}.role'.", $"{at}.role", "missing_required_parameter"),
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            _ => throw OpenAIException.BadRequest($"'{at}.role' is '{Shorten(m.Role)}'; this server supports 'system', 'developer', 'user' and 'assistant' (no tools or functions).", $"{at}.role", "unsupported_value"),
        };
        if (m.ToolCallCount > 0)
            throw OpenAIException.BadRequest($"'{at}.tool_calls' is not supported: the local model has no function calling.", $"{at}.tool_calls", "unsupported_parameter");
        var contents = new List<AIContent>();
        switch (m.ContentKind)
        {
            case JsonValueKind.Undefined or JsonValueKind.Null:
                throw OpenAIException.BadRequest($"Missing required parameter: '{at}.content'.", $"{at}.content", "missing_required_parameter");
            case JsonValueKind.String:
                contents.Add(new TextContent(m.ContentText));
                break;
            case JsonValueKind.Array:
                for (int p = 0; p < m.Parts!.Count; p++)
                    contents.Add(await ReadPartAsync(m.Parts[p], role, $"{at}.content[{p}]", body, ct).ConfigureAwait(false));
                break;
            default:
                throw OpenAIException.BadRequest($"Invalid type for '{at}.content': expected a string or an array of content parts.", $"{at}.content", "invalid_type");
        }
        return new ChatMessage(role, contents) { AuthorName = m.Name };
    }

    private async Task<AIContent> ReadPartAsync(ContentPartDto part, ChatRole role, string at, Memory<byte> body, CancellationToken ct)
    {
        if (part.Kind != JsonValueKind.Object)
            throw OpenAIException.BadRequest($"Invalid type for '{at}': expected an object with 'type'.", at, "invalid_type");
        switch (part.Type)
        {
            case null:
                throw OpenAIException.BadRequest($"Missing required parameter: '{at}.type' (a string: 'text' or 'image_url').", $"{at}.type", "missing_required_parameter");
            case "text":
                if (!part.HasText) throw OpenAIException.BadRequest($"'{at}.text' must be a string.", $"{at}.text", "invalid_type");
                return new TextContent(part.Text);
            case "image_url" when role == ChatRole.User:
                if (part.ImageUrl is not { } url || url.Length <= 2)
                    throw OpenAIException.BadRequest($"'{at}.image_url.url' must be a string: a data: URL (data:image/png;base64,...) or an allowed http(s) URL.", $"{at}.image_url.url", "invalid_type");
                return await images.ReadAsync(body.Slice(url.Start, url.Length), url.Escaped, $"{at}.image_url.url", ct).ConfigureAwait(false);
            case "image_url":
                throw OpenAIException.BadRequest($"'{at}' is an image in a {role} message; images are allowed in user messages only.", at, "unsupported_content_type");
            default:
                throw OpenAIException.BadRequest($"'{at}.type' is '{Shorten(part.Type)}', an unsupported content type; this server accepts 'text' and 'image_url'.", $"{at}.type", "unsupported_content_type");
        }
    }
}
