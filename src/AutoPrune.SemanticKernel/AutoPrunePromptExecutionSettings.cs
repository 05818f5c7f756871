using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Extensions.AI;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;

namespace AutoPrune.SemanticKernel;

/// <summary>
/// Semantic Kernel execution settings for the AutoPrune chat completion service, with snake_case JSON names
/// (<c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>seed</c>, <c>stop_sequences</c>, <c>pruning_method</c>, <c>budget</c>).
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
    };

    private static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowReadingFromString,
        PropertyNameCaseInsensitive = true,
    };

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
        or "pruning_method" or "budget" or PruningKnobs.MethodKey or "service_id" or "model_id" or "function_choice_behavior";
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
