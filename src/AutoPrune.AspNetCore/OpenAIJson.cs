using System.Text.Json;
using System.Text.Json.Serialization;

namespace AutoPrune.AspNetCore;

/// <summary>
/// The body of <c>POST /v1/chat/completions</c>: the fields the server reads, read by <see cref="ChatCompletionBinder"/>
/// (wrong types are refused there, naming the field), checked and translated by <see cref="ChatCompletionReader"/>.
/// Fields it does not know are skipped, never held.
/// </summary>
internal sealed class ChatCompletionRequest
{
    public string? Model { get; set; }
    public List<ChatMessageDto?>? Messages { get; set; }
    public bool? Stream { get; set; }
    /// <summary>Whether a non-null <c>stream_options</c> object was sent.</summary>
    public bool HasStreamOptions { get; set; }
    public bool? IncludeUsage { get; set; }
    public int? MaxTokens { get; set; }
    public int? MaxCompletionTokens { get; set; }
    public float? Temperature { get; set; }
    public float? TopP { get; set; }
    public long? Seed { get; set; }
    /// <summary>The non-empty stop sequences (a string or an array of strings), in order.</summary>
    public List<string>? Stop { get; set; }
    public int? N { get; set; }
    public float? FrequencyPenalty { get; set; }
    public float? PresencePenalty { get; set; }
    public bool? Logprobs { get; set; }
    /// <summary>Whether a non-null <c>top_logprobs</c> was sent.</summary>
    public bool HasTopLogprobs { get; set; }
    /// <summary>How many entries <c>logit_bias</c> holds (null: absent or null).</summary>
    public int? LogitBiasEntries { get; set; }
    /// <summary>How many tools <c>tools</c> holds (null: absent or null).</summary>
    public int? ToolCount { get; set; }
    /// <summary><c>tool_choice</c> as a string; "(object)" for an object naming a function.</summary>
    public string? ToolChoice { get; set; }
    public ResponseFormatDto? ResponseFormat { get; set; }
    public AutoPruneExtensionDto? AutoPrune { get; set; }
    /// <summary>The names of the top-level fields the server ignores.</summary>
    public List<string> Ignored { get; } = [];
}

internal sealed class ChatMessageDto
{
    public string? Role { get; set; }
    /// <summary>The content: a string, or content parts; <see cref="ContentKind"/> says which (or what else was sent).</summary>
    public JsonValueKind ContentKind { get; set; } = JsonValueKind.Undefined;
    public string? ContentText { get; set; }
    public List<ContentPartDto>? Parts { get; set; }
    public string? Name { get; set; }
    /// <summary>How many tool calls <c>tool_calls</c> holds (null: absent, null or not an array).</summary>
    public int? ToolCallCount { get; set; }
}

/// <summary>One content part: its JSON kind, and the fields the server reads.</summary>
internal sealed class ContentPartDto
{
    public JsonValueKind Kind { get; set; }
    /// <summary>The <c>type</c> when it is a string.</summary>
    public string? Type { get; set; }
    /// <summary>The <c>text</c> when it is a string.</summary>
    public string? Text { get; set; }
    public bool HasText { get; set; }
    /// <summary>Where the image URL string lies in the body (the string token, quotes included), so a data: URL is decoded from the body's bytes.</summary>
    public BodySlice? ImageUrl { get; set; }
}

/// <summary>The request's <c>response_format</c> object.</summary>
internal sealed class ResponseFormatDto
{
    public string? Type { get; set; }
    /// <summary>Whether a <c>json_schema</c> object was sent.</summary>
    public bool HasJsonSchema { get; set; }
    /// <summary>The JSON text of <c>json_schema.schema</c> when it is an object.</summary>
    public string? Schema { get; set; }
    public string? Name { get; set; }
    public string? Description { get; set; }
}

/// <summary>A JSON string token in the request body: its bytes (quotes included) and whether it holds escapes.</summary>
internal readonly record struct BodySlice(int Start, int Length, bool Escaped);

/// <summary>The request's <c>"autoprune"</c> extension field: pruning knobs for this request.</summary>
internal sealed class AutoPruneExtensionDto
{
    /// <summary>A method name (see <c>PruningMethods.Names</c>).</summary>
    public string? Method { get; set; }

    /// <summary>A visual-token budget (a number, or a numeric string): &gt;= 1 tokens, (0, 1) a fraction.</summary>
    public object? Budget { get; set; }

    /// <summary>Fields other than method and budget (refused).</summary>
    public List<string>? Other { get; set; }
}

internal sealed record ChatCompletionResponse(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<ChoiceDto> Choices,
    [property: JsonPropertyName("usage")] UsageDto? Usage,
    [property: JsonPropertyName("system_fingerprint")] string? SystemFingerprint,
    [property: JsonPropertyName("autoprune")] AutoPruneResultDto? AutoPrune);

internal sealed record ChoiceDto(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("message"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] ResponseMessageDto? Message,
    [property: JsonPropertyName("delta"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] ResponseMessageDto? Delta,
    [property: JsonPropertyName("finish_reason")] string? FinishReason,
    [property: JsonPropertyName("logprobs")] object? Logprobs);

internal sealed record ResponseMessageDto(
    [property: JsonPropertyName("role"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Role,
    [property: JsonPropertyName("content"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Content);

internal sealed record UsageDto(
    [property: JsonPropertyName("prompt_tokens")] int PromptTokens,
    [property: JsonPropertyName("completion_tokens")] int CompletionTokens,
    [property: JsonPropertyName("total_tokens")] int TotalTokens);

/// <summary>The response's <c>"autoprune"</c> extension field: what pruning did and what it cost.</summary>
internal sealed record AutoPruneResultDto(
    [property: JsonPropertyName("report")] JsonElement Report,
    [property: JsonPropertyName("visual_tokens")] int VisualTokens,
    [property: JsonPropertyName("device")] string Device);

internal sealed record ModelListDto(
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("data")] IReadOnlyList<ModelDto> Data);

internal sealed record ModelDto(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("owned_by")] string OwnedBy);

[JsonSourceGenerationOptions(
    DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    ReadCommentHandling = JsonCommentHandling.Disallow,
    AllowTrailingCommas = false,
    NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(ChatCompletionResponse))]
[JsonSerializable(typeof(OpenAIErrorBody))]
[JsonSerializable(typeof(ModelListDto))]
[JsonSerializable(typeof(ModelDto))]
internal sealed partial class OpenAIJson : JsonSerializerContext
{
    /// <summary>For writing: the same contracts, with apostrophes and other HTML-sensitive characters left as they are (responses are JSON, never HTML).</summary>
    public static OpenAIJson Writer => s_writer ??= new(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });

    private static OpenAIJson? s_writer;
}
