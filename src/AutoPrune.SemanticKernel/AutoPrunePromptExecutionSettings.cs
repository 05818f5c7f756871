using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Extensions.AI;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;

namespace AutoPrune.SemanticKernel;

/// <summary>
/// Semantic Kernel execution settings for the AutoPrune chat completion service, with snake_case JSON names
/// (<c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>seed</c>, <c>stop_sequences</c>, <c>pruning_method</c>, <c>budget</c>,
/// <c>response_format</c>).
/// </summary>
public sealed class AutoPrunePromptExecutionSettings : PromptExecutionSettings
{
    private int? _maxTokens;
    private float? _temperature;
    private float? _topP;
    private long? _seed;
    private IList<string>? _stopSequences;
    private PruningMethod? _pruningMethod;
    private double? _budget;
    private object? _responseFormat;

    /// <summary>Largest number of tokens to generate; null uses the client's default.</summary>
    [JsonPropertyName("max_tokens")]
    public int? MaxTokens { get => _maxTokens; set { ThrowIfFrozen(); _maxTokens = value; } }

    /// <summary>0 decodes greedily; above 0 samples.</summary>
    [JsonPropertyName("temperature")]
    public float? Temperature { get => _temperature; set { ThrowIfFrozen(); _temperature = value; } }

    /// <summary>Nucleus sampling mass.</summary>
    [JsonPropertyName("top_p")]
    public float? TopP { get => _topP; set { ThrowIfFrozen(); _topP = value; } }

    /// <summary>Sampling seed.</summary>
    [JsonPropertyName("seed")]
    public long? Seed { get => _seed; set { ThrowIfFrozen(); _seed = value; } }

    /// <summary>Generation stops when the answer ends with one of these.</summary>
    [JsonPropertyName("stop_sequences")]
    public IList<string>? StopSequences { get => _stopSequences; set { ThrowIfFrozen(); _stopSequences = value; } }

    /// <summary>Visual-token pruning method (see <see cref="PruningMethods.Names"/>); unset uses the service's configured default.</summary>
    [JsonPropertyName("pruning_method")]
    [JsonConverter(typeof(PruningMethodJsonConverter))]
    public PruningMethod? PruningMethod { get => _pruningMethod; set { ThrowIfFrozen(); _pruningMethod = value; } }

    /// <summary>Visual-token budget: &gt;= 1 tokens, in (0, 1) a fraction of the visual tokens.</summary>
    [JsonPropertyName("budget")]
    public double? Budget { get => _budget; set { ThrowIfFrozen(); _budget = value; } }

    /// <summary>
    /// The answer's shape, in the forms Semantic Kernel's OpenAI connector takes: <c>"text"</c> or <c>"json_object"</c>; a
    /// <see cref="Type"/> (the JSON schema Microsoft.Extensions.AI generates for it); a <see cref="ChatResponseFormat"/>; or
    /// OpenAI's JSON object (<c>{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}</c>,
    /// <c>{"type": "json_object"}</c>). JSON answers are constrained token by token and always parse; a schema keyword
    /// outside the supported subset is an <see cref="ArgumentException"/> naming it.
    /// </summary>
    [JsonPropertyName("response_format")]
    [JsonConverter(typeof(ResponseFormatJsonConverter))]
    public object? ResponseFormat { get => _responseFormat; set { ThrowIfFrozen(); _responseFormat = value; } }

    public override void Freeze()
    {
        if (IsFrozen) return;
        if (_stopSequences is not null) _stopSequences = _stopSequences.ToArray().AsReadOnly();
        base.Freeze();
    }

    public override PromptExecutionSettings Clone() => new AutoPrunePromptExecutionSettings
    {
        ServiceId = ServiceId,
        ModelId = ModelId,
        FunctionChoiceBehavior = FunctionChoiceBehavior,
        ExtensionData = ExtensionData is null ? null : new Dictionary<string, object>(ExtensionData),
        MaxTokens = MaxTokens,
        Temperature = Temperature,
        TopP = TopP,
        Seed = Seed,
        StopSequences = StopSequences?.ToList(),
        PruningMethod = PruningMethod,
        Budget = Budget,
        ResponseFormat = ResponseFormat,
    };

    private static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowReadingFromString,
        PropertyNameCaseInsensitive = true,
        Converters = { new TypeAsNullJsonConverter() }, // another connector's Type-valued response format (taken from the property itself)
    };

    /// <summary>Writes a <see cref="Type"/> as null, so that settings holding one serialize.</summary>
    private sealed class TypeAsNullJsonConverter : JsonConverter<Type>
    {
        public override Type? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) { reader.Skip(); return null; }
        public override void Write(Utf8JsonWriter writer, Type value, JsonSerializerOptions options) => writer.WriteNullValue();
    }

    /// <summary>
    /// Converts any settings (these, the base <see cref="PromptExecutionSettings"/> loaded from JSON or a prompt template,
    /// or another connector's settings) into AutoPrune settings. Missing keys stay null; unknown keys stay in
    /// <see cref="PromptExecutionSettings.ExtensionData"/>. Also accepts <c>max_output_tokens</c> and <c>method</c> as aliases.
    /// </summary>
    public static AutoPrunePromptExecutionSettings FromExecutionSettings(PromptExecutionSettings? executionSettings, int? defaultMaxTokens = null)
    {
        AutoPrunePromptExecutionSettings result;
        switch (executionSettings)
        {
            case null:
                return new AutoPrunePromptExecutionSettings { MaxTokens = defaultMaxTokens };
            case AutoPrunePromptExecutionSettings own:
                result = (AutoPrunePromptExecutionSettings)own.Clone();
                break;
            default:
                var json = JsonSerializer.Serialize(executionSettings, executionSettings.GetType(), Json);
                result = JsonSerializer.Deserialize<AutoPrunePromptExecutionSettings>(json, Json) ?? new();
                // Another connector's response format that JSON does not carry (a Type, a ChatResponseFormat) is taken as it is.
                if (executionSettings.GetType().GetProperty(nameof(ResponseFormat))?.GetValue(executionSettings) is { } format and (Type or ChatResponseFormat))
                    result.ResponseFormat = format;
                result.ServiceId = executionSettings.ServiceId;
                result.ModelId = executionSettings.ModelId;
                result.FunctionChoiceBehavior = executionSettings.FunctionChoiceBehavior;
                break;
        }
        result.ApplyAliases();
        result.MaxTokens ??= defaultMaxTokens;
        return result;
    }

    private void ApplyAliases()
    {
        if (ExtensionData is null) return;
        if (MaxTokens is null && ExtensionData.TryGetValue("max_output_tokens", out var max) && max is not null)
            MaxTokens = ToJson(max).Deserialize<int>(Json);
        if (PruningMethod is null && ExtensionData.TryGetValue(PruningKnobs.MethodKey, out var m) && m is not null)
            PruningMethod = PruningKnobs.ReadMethod(m is string or AutoPrune.Pruning.PruningMethod ? m : ToJson(m), PruningKnobs.MethodKey);
    }

    private static JsonElement ToJson(object value) => value as JsonElement? ?? JsonSerializer.SerializeToElement(value, value.GetType(), Json);

    /// <summary>
    /// The <see cref="ChatOptions"/> the AutoPrune <see cref="IChatClient"/> reads (pruning knobs in AdditionalProperties).
    /// <see cref="PromptExecutionSettings.ExtensionData"/> keys these settings do not know are passed on as
    /// AdditionalProperties, where the client logs each as ignored.
    /// </summary>
    public ChatOptions ToChatOptions()
    {
        var options = new ChatOptions
        {
            ModelId = ModelId,
            MaxOutputTokens = MaxTokens,
            Temperature = Temperature,
            TopP = TopP,
            Seed = Seed,
            StopSequences = StopSequences?.ToList(),
            ResponseFormat = ToChatResponseFormat(ResponseFormat),
        };
        var extra = new AdditionalPropertiesDictionary();
        if (PruningMethod is { } pm) extra[PruningKnobs.MethodKey] = PruningMethods.Name(pm);
        if (Budget is double b) extra[PruningKnobs.BudgetKey] = b;
        if (ExtensionData is not null)
            foreach (var (key, value) in ExtensionData)
                if (!IsKnownKey(key)) extra[key] = value;
        if (extra.Count > 0) options.AdditionalProperties = extra;
        return options;
    }

    /// <summary>The JSON names these settings read (their properties and aliases).</summary>
    private static bool IsKnownKey(string key) => key is "max_tokens" or "max_output_tokens" or "temperature" or "top_p" or "seed" or "stop_sequences"
        or "pruning_method" or "budget" or PruningKnobs.MethodKey or "service_id" or "model_id" or "function_choice_behavior" or "response_format";

    /// <summary>A <see cref="ResponseFormat"/> value as Microsoft.Extensions.AI's format (null: free text).</summary>
    /// <exception cref="ArgumentException">A value of none of the accepted forms, naming it.</exception>
    internal static ChatResponseFormat? ToChatResponseFormat(object? value) => value switch
    {
        null => null,
        ChatResponseFormat format => format,
        Type type => ChatResponseFormat.ForJsonSchema(type, schemaName: type.Name),
        string name => FromName(name),
        JsonElement { ValueKind: JsonValueKind.Null } => null,
        JsonElement { ValueKind: JsonValueKind.String } e => FromName(e.GetString()!),
        JsonElement { ValueKind: JsonValueKind.Object } e => FromOpenAIObject(e),
        _ => throw new ArgumentException($"response_format must be \"text\", \"json_object\", a Type, a ChatResponseFormat or an OpenAI response_format object (got {Describe(value)}).", nameof(ResponseFormat)),
    };

    private static ChatResponseFormat FromName(string name) => name switch
    {
        "text" => ChatResponseFormat.Text,
        "json_object" => ChatResponseFormat.Json,
        _ => throw new ArgumentException($"response_format \"{name}\" is not \"text\" or \"json_object\" (for a schema give a Type or {{\"type\": \"json_schema\", \"json_schema\": {{...}}}}).", nameof(ResponseFormat)),
    };

    private static ChatResponseFormat FromOpenAIObject(JsonElement e)
    {
        string? type = e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        switch (type)
        {
            case "text": return ChatResponseFormat.Text;
            case "json_object": return ChatResponseFormat.Json;
            case "json_schema":
                if (!e.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object || !js.TryGetProperty("schema", out var schema) || schema.ValueKind != JsonValueKind.Object)
                    throw new ArgumentException("response_format of type \"json_schema\" needs \"json_schema\": {\"schema\": {...}}.", nameof(ResponseFormat));
                string? Text(string key) => js.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
                return ChatResponseFormat.ForJsonSchema(schema.Clone(), Text("name"), Text("description"));
            default:
                throw new ArgumentException($"response_format's \"type\" must be \"text\", \"json_object\" or \"json_schema\" (got {(type is null ? "none" : $"\"{type}\"")}).", nameof(ResponseFormat));
        }
    }

    private static string Describe(object value) => value is JsonElement e ? $"JSON {e.ValueKind}" : value.GetType().Name;
}

/// <summary>
/// Reads <c>response_format</c> as JSON (a string or an object, kept as a <see cref="JsonElement"/>); writes strings and
/// JSON as they are, a <see cref="Type"/> or a <see cref="ChatResponseFormat"/> as OpenAI's object (a type's schema included).
/// </summary>
internal sealed class ResponseFormatJsonConverter : JsonConverter<object?>
{
    public override object? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        using var doc = JsonDocument.ParseValue(ref reader);
        return doc.RootElement.ValueKind == JsonValueKind.Null ? null : doc.RootElement.Clone();
    }

    public override void Write(Utf8JsonWriter writer, object? value, JsonSerializerOptions options)
    {
        switch (value)
        {
            case null: writer.WriteNullValue(); break;
            case string s: writer.WriteStringValue(s); break;
            case JsonElement e: e.WriteTo(writer); break;
            default:
                switch (AutoPrunePromptExecutionSettings.ToChatResponseFormat(value))
                {
                    case ChatResponseFormatJson { Schema: { } schema } json:
                        writer.WriteStartObject();
                        writer.WriteString("type", "json_schema");
                        writer.WriteStartObject("json_schema");
                        if (json.SchemaName is { } name) writer.WriteString("name", name);
                        if (json.SchemaDescription is { } description) writer.WriteString("description", description);
                        writer.WritePropertyName("schema");
                        schema.WriteTo(writer);
                        writer.WriteEndObject();
                        writer.WriteEndObject();
                        break;
                    case ChatResponseFormatJson:
                        writer.WriteStartObject(); writer.WriteString("type", "json_object"); writer.WriteEndObject();
                        break;
                    default:
                        writer.WriteStartObject(); writer.WriteString("type", "text"); writer.WriteEndObject();
                        break;
                }
                break;
        }
    }

    public override bool HandleNull => true;
}

/// <summary>Writes a pruning method as its lower-case name; reads any spelling <see cref="PruningMethods.Parse"/> accepts.</summary>
internal sealed class PruningMethodJsonConverter : JsonConverter<PruningMethod?>
{
    public override PruningMethod? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.String => PruningMethods.Parse(reader.GetString(), "'pruning_method'"),
        JsonTokenType.Number when reader.TryGetInt32(out var i) && Enum.IsDefined((PruningMethod)i) => (PruningMethod)i,
        _ => throw new JsonException($"'pruning_method' must be a method name such as \"autoprune\" (got {reader.TokenType})."),
    };

    public override void Write(Utf8JsonWriter writer, PruningMethod? value, JsonSerializerOptions options)
    {
        if (value is { } m) writer.WriteStringValue(PruningMethods.Name(m));
        else writer.WriteNullValue();
    }

    public override bool HandleNull => true;
}
