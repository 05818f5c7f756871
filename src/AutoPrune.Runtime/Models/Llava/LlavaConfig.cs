using System.Text.Json;
using System.Text.Json.Serialization;

using AutoPrune.Models.Llava;

using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// <c>config.json</c> of a LLaVA checkpoint: Hugging Face <c>LlavaConfig</c> (<c>model_type: llava</c>, LLaVA-1.5) or
/// <c>LlavaNextConfig</c> (<c>llava_next</c>, LLaVA-1.6 "anyres"; its own fields are in LlavaConfig.Next.cs). Missing
/// fields take the Hugging Face defaults. Use <see cref="Load"/>, which also validates; <see cref="Validate"/> checks a
/// config built in code.
/// </summary>
internal sealed partial class LlavaConfig
{
    public const string FileName = "config.json";
    public const string SupportedModelType = "llava";

    internal static readonly string[] SupportedSelectStrategies = { "default", "full" };

    [JsonPropertyName("model_type")] public string? ModelType { get; set; }
    [JsonPropertyName("image_token_index")] public int ImageTokenIndex { get; set; } = 32000;

    /// <summary>Which CLIP hidden state feeds the projector; negative counts from the end of the
    /// <c>hidden_states</c> list (length <c>num_hidden_layers + 1</c>, embeddings first).</summary>
    [JsonPropertyName("vision_feature_layer")] public int VisionFeatureLayer { get; set; } = -2;

    /// <summary><c>"default"</c> drops the CLS token, <c>"full"</c> keeps it.</summary>
    [JsonPropertyName("vision_feature_select_strategy")] public string? VisionFeatureSelectStrategy { get; set; } = "default";
    [JsonPropertyName("projector_hidden_act")] public string? ProjectorHiddenAct { get; set; } = "gelu";
    [JsonIgnore] internal Compute.ActivationFunction ProjectorActivation => Compute.ActivationFunctions.Parse(ProjectorHiddenAct, "projector_hidden_act");
    [JsonPropertyName("multimodal_projector_bias")] public bool MultimodalProjectorBias { get; set; } = true;
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; set; }
    [JsonPropertyName("image_seq_length")] public int ImageSeqLength { get; set; } = 576;

    /// <summary>Tolerated for older/odd configs; used for the text model when its own config has no rope theta.</summary>
    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; set; }

    [JsonPropertyName("text_config")] public LlamaTextConfig TextConfig { get; set; } = new();

    /// <summary>When <c>vision_config</c> is absent, Hugging Face's LlavaConfig uses a CLIP ViT-L/14-336 tower.</summary>
    [JsonPropertyName("vision_config")] public ClipVisionConfig VisionConfig { get; set; } = ClipVisionConfig.CreateLlavaDefault();

    /// <summary>Side of the patch grid (image_size / patch_size).</summary>
    [JsonIgnore] public int GridSize => VisionConfig.GridSize;

    /// <summary>Number of image patches (GridSize²), without CLS.</summary>
    [JsonIgnore] public int NumPatches => VisionConfig.NumPatches;

    /// <summary>Visual tokens per image given to the language model: NumPatches ("default") or NumPatches + 1 ("full").</summary>
    [JsonIgnore] public int NumImageTokens => VisionFeatureSelectStrategy == "full" ? NumPatches + 1 : NumPatches;

    /// <summary>True when the CLS token is dropped from the selected hidden state.</summary>
    [JsonIgnore] public bool DropClsToken => VisionFeatureSelectStrategy != "full";

    /// <summary>Index of <see cref="VisionFeatureLayer"/> into the CLIP hidden_states list of length num_hidden_layers + 1
    /// (0 = embeddings, i = output of layer i). E.g. -2 with 24 layers gives 23.</summary>
    [JsonIgnore]
    public int ResolvedFeatureLayerIndex
        => VisionFeatureLayer < 0 ? VisionConfig.NumHiddenLayers + 1 + VisionFeatureLayer : VisionFeatureLayer;

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNameCaseInsensitive = false,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Reads, defaults and validates <c>config.json</c> from a checkpoint folder.</summary>
    public static LlavaConfig Load(string folder, InputFileLimits? limits = null)
    {
        if (string.IsNullOrWhiteSpace(folder))
            throw new ModelLoadException("The checkpoint folder path is empty.", folder);
        string fullFolder = Path.GetFullPath(folder);
        if (!Directory.Exists(fullFolder))
            throw new ModelLoadException($"Checkpoint folder '{fullFolder}' does not exist.", fullFolder);
        string path = Path.Combine(fullFolder, FileName);
        if (!File.Exists(path))
        {
            throw new ModelLoadException(
                $"'{FileName}' not found in '{fullFolder}'. Files present: {SafeTensorStore.ListFolder(fullFolder)}.", path);
        }

        string json = ModelFiles.ReadText(path, (limits ?? new()).ConfigBytes, "ModelOptions.FileLimits.ConfigBytes");
        return Parse(json, path);
    }

    /// <summary>Parses and validates config JSON; <paramref name="sourcePath"/> is used in error messages.</summary>
    public static LlavaConfig Parse(string json, string sourcePath)
    {
        LlavaConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<LlavaConfig>(json, JsonOptions);
        }
        catch (JsonException ex)
        {
            string where = ex.LineNumber is long line ? $"line {line + 1}" : "unknown line";
            if (ex.BytePositionInLine is long col) where += $", byte {col + 1}";
            string field = string.IsNullOrEmpty(ex.Path) || ex.Path == "$" ? "" : $" at '{ex.Path}'";
            throw new ModelLoadException(
                $"Config '{sourcePath}' is not valid ({where}{field}): {FirstSentence(ex.Message)}", sourcePath, null, ex);
        }
        if (config is null)
            throw new ModelLoadException($"Config '{sourcePath}' is JSON null; expected an object.", sourcePath);
        config.Validate(sourcePath);
        return config;
    }

    /// <summary>Fills defaults for null sub-configs and checks every field; throws <see cref="ModelLoadException"/>.</summary>
    public void Validate(string? sourcePath = null)
    {
        string src = sourcePath ?? FileName;
        TextConfig ??= new LlamaTextConfig();
        VisionConfig ??= ClipVisionConfig.CreateLlavaDefault();
        var v = new ConfigValidator(src);

        if (ModelType is not (SupportedModelType or NextModelType))
        {
            throw new ModelLoadException(
                $"Config '{src}': model_type is {ConfigValidator.Show(ModelType)}; supported are '{SupportedModelType}' (LlavaForConditionalGeneration, e.g. llava-hf/llava-1.5-7b-hf) " +
                $"and '{NextModelType}' (LlavaNextForConditionalGeneration, e.g. llava-hf/llava-v1.6-mistral-7b-hf).",
                src);
        }

        if (RopeTheta is double t) v.RopeTheta("rope_theta", t);
        TextConfig.InheritedRopeTheta = RopeTheta;
        TextConfig.Validate(v, "text_config");
        VisionConfig.Validate(v, "vision_config");

        v.OneOf("vision_feature_select_strategy", VisionFeatureSelectStrategy, SupportedSelectStrategies);
        v.OneOf("projector_hidden_act", ProjectorHiddenAct, Compute.ActivationFunctions.Names);
        int layers = VisionConfig.NumHiddenLayers;
        v.Range("vision_feature_layer", VisionFeatureLayer, -(layers + 1), layers,
            $"vision_config has {layers} layers, so hidden_states has {layers + 1} entries");
        // Not bounded by vocab_size: HF's own defaults (32000 / 32000) put it just past the vocabulary, and
        // image positions are replaced by projected features before any embedding lookup.
        v.Range("image_token_index", ImageTokenIndex, 0, int.MaxValue);
        v.Range("image_seq_length", ImageSeqLength, 1, 1 << 20);
        if (IsAnyRes) ValidateNext(v);
    }

    private static string FirstSentence(string message)
    {
        int i = message.IndexOf(" Path:", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }
}

/// <summary>
/// <c>text_config</c> of a LLaVA checkpoint: a Llama (<c>model_type: llama</c>, Hugging Face <c>LlamaConfig</c> defaults)
/// or Mistral (<c>mistral</c>, <c>MistralConfig</c> defaults) decoder. The two are the same network (RMSNorm, RoPE,
/// grouped-query attention, SwiGLU), run by the same decoder; Mistral adds a sliding attention window, and its
/// defaults differ for the fields that leave the file: intermediate_size 14336, num_key_value_heads 8,
/// max_position_embeddings 131072 and sliding_window 4096.
/// </summary>
internal sealed class LlamaTextConfig
{
    internal static readonly string[] SupportedRopeTypes = { "default" };
    internal static readonly string[] SupportedModelTypes = { "llama", "mistral" };
    public const string MistralModelType = "mistral";

    private int? _intermediateSize, _maxPositionEmbeddings, _slidingWindow;
    private bool _slidingWindowSet;

    [JsonPropertyName("model_type")] public string? ModelType { get; set; } = "llama";
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; set; } = 4096;

    [JsonPropertyName("intermediate_size")]
    public int IntermediateSize { get => _intermediateSize ?? (IsMistral ? 14336 : 11008); set => _intermediateSize = value; }

    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; set; } = 32;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; set; } = 32;

    /// <summary>As written in the file; null means "same as num_attention_heads" for Llama, 8 for Mistral (see <see cref="NumKeyValueHeads"/>).</summary>
    [JsonPropertyName("num_key_value_heads")] public int? ExplicitNumKeyValueHeads { get; set; }

    /// <summary>
    /// Mistral's sliding attention window: a token attends to the <c>sliding_window</c> tokens up to and including
    /// itself. As written in the file (null: no window); absent, Mistral's default 4096. Always null for Llama, which
    /// has no window. The runtime refuses prompts longer than the window (see VisionLanguageModel).
    /// </summary>
    [JsonPropertyName("sliding_window")]
    public int? SlidingWindow
    {
        get => !IsMistral ? null : _slidingWindowSet ? _slidingWindow : 4096;
        set { _slidingWindow = value; _slidingWindowSet = true; }
    }

    /// <summary>As written in the file; null means hidden_size / num_attention_heads (see <see cref="HeadDim"/>).</summary>
    [JsonPropertyName("head_dim")] public int? ExplicitHeadDim { get; set; }

    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; set; } = 1e-6;

    /// <summary>Older layout: <c>text_config.rope_theta</c>. See <see cref="RopeTheta"/> for the resolved value.</summary>
    [JsonPropertyName("rope_theta")] public double? ExplicitRopeTheta { get; set; }

    /// <summary>Newer layout (transformers 5): <c>text_config.rope_parameters</c>.</summary>
    [JsonPropertyName("rope_parameters")] public RopeParameters? RopeParameters { get; set; }

    /// <summary>Older layout for rope scaling; only null or type "default" is supported.</summary>
    [JsonPropertyName("rope_scaling")] public RopeParameters? RopeScaling { get; set; }

    [JsonPropertyName("max_position_embeddings")]
    public int MaxPositionEmbeddings { get => _maxPositionEmbeddings ?? (IsMistral ? 4096 * 32 : 2048); set => _maxPositionEmbeddings = value; }
    [JsonPropertyName("vocab_size")] public int VocabSize { get; set; } = 32000;
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; set; } = 1;

    /// <summary>One id or a list of ids in the file; always a list here.</summary>
    [JsonPropertyName("eos_token_id")]
    [JsonConverter(typeof(IntOrIntArrayConverter))]
    public int[]? EosTokenId { get; set; } = { 2 };

    [JsonPropertyName("pad_token_id")] public int? PadTokenId { get; set; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; set; }
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; set; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; set; }
    [JsonPropertyName("hidden_act")] public string? HiddenAct { get; set; } = "silu";

    /// <summary>Top-level llava <c>rope_theta</c>, if any (set by <see cref="LlavaConfig.Validate"/>).</summary>
    [JsonIgnore] internal double? InheritedRopeTheta { get; set; }

    [JsonIgnore] public bool IsMistral => ModelType == MistralModelType;

    [JsonIgnore] public int NumKeyValueHeads => ExplicitNumKeyValueHeads ?? (IsMistral ? 8 : NumAttentionHeads);
    [JsonIgnore] public int HeadDim => ExplicitHeadDim ?? (NumAttentionHeads > 0 ? HiddenSize / NumAttentionHeads : 0);

    /// <summary>Attention heads per key/value head (1 without grouped-query attention).</summary>
    [JsonIgnore] public int NumKeyValueGroups => NumKeyValueHeads > 0 ? NumAttentionHeads / NumKeyValueHeads : 0;

    /// <summary>rope_parameters.rope_theta, else rope_theta, else the llava-level rope_theta, else 10000.</summary>
    [JsonIgnore] public double RopeTheta => RopeParameters?.RopeTheta ?? ExplicitRopeTheta ?? InheritedRopeTheta ?? 10000.0;

    [JsonIgnore] public IReadOnlyList<int> EosTokenIds => EosTokenId ?? Array.Empty<int>();

    internal void Validate(ConfigValidator v, string prefix)
    {
        string F(string name) => prefix + "." + name;

        if (ModelType is not null && !SupportedModelTypes.Contains(ModelType))
            v.Fail(F("model_type"), ModelType, "'llama' or 'mistral' (Llama-family language models)");
        v.Range(F("hidden_size"), HiddenSize, 1, 65536);
        v.Range(F("intermediate_size"), IntermediateSize, 1, 1 << 20);
        v.Range(F("num_hidden_layers"), NumHiddenLayers, 1, 1024);
        v.Range(F("num_attention_heads"), NumAttentionHeads, 1, HiddenSize);
        if (ExplicitHeadDim is int hd)
        {
            v.Range(F("head_dim"), hd, 2, 4096);
            if (hd % 2 != 0) v.Fail(F("head_dim"), hd, "an even number (rotary embeddings rotate pairs)");
        }
        else
        {
            if (HiddenSize % NumAttentionHeads != 0)
            {
                v.Fail(F("num_attention_heads"), NumAttentionHeads,
                    $"a divisor of hidden_size ({HiddenSize}) since head_dim is not given");
            }
            if (HeadDim % 2 != 0)
                v.Fail(F("num_attention_heads"), NumAttentionHeads, $"a value giving an even head_dim (hidden_size / heads = {HeadDim})");
        }
        if (ExplicitNumKeyValueHeads is not null || NumKeyValueHeads != NumAttentionHeads)
        {
            int kv = NumKeyValueHeads;
            v.Range(F("num_key_value_heads"), kv, 1, NumAttentionHeads);
            if (NumAttentionHeads % kv != 0)
                v.Fail(F("num_key_value_heads"), kv, $"a divisor of num_attention_heads ({NumAttentionHeads})");
        }
        if (SlidingWindow is int window)
            v.Range(F("sliding_window"), window, 1, int.MaxValue);
        v.Range(F("vocab_size"), VocabSize, 1, 10_000_000);
        v.Range(F("max_position_embeddings"), MaxPositionEmbeddings, 1, 1 << 24);
        v.PositiveSmall(F("rms_norm_eps"), RmsNormEps);
        // Generation stops at EOS: an id outside the vocabulary could never be produced, a negative one is a typo.
        foreach (int id in EosTokenIds) v.Range(F("eos_token_id"), id, 0, VocabSize - 1, $"an id of the {VocabSize}-token vocabulary");
        if (BosTokenId is int bos) v.Range(F("bos_token_id"), bos, 0, VocabSize - 1, $"an id of the {VocabSize}-token vocabulary");
        if (HiddenAct != "silu")
            v.Fail(F("hidden_act"), HiddenAct, "'silu' (Llama SwiGLU MLP)");

        if (ExplicitRopeTheta is double rt) v.RopeTheta(F("rope_theta"), rt);
        if (RopeParameters is not null)
        {
            if (RopeParameters.RopeTheta is double pt) v.RopeTheta(F("rope_parameters.rope_theta"), pt);
            string? type = RopeParameters.Type;
            if (type is not null && !SupportedRopeTypes.Contains(type))
                v.Fail(F("rope_parameters.rope_type"), type, "'default' (scaled RoPE variants are not supported)");
            if (RopeParameters.RopeTheta is double a && ExplicitRopeTheta is double b && a != b)
                v.Fail(F("rope_theta"), b, $"the same value as rope_parameters.rope_theta ({a}) or absent");
        }
        if (RopeScaling is not null)
        {
            string? type = RopeScaling.Type;
            if (type is null || !SupportedRopeTypes.Contains(type))
                v.Fail(F("rope_scaling"), type ?? "(no type)", "null or type 'default' (scaled RoPE variants such as linear, dynamic, yarn, llama3 are not supported)");
        }
    }
}

/// <summary><c>rope_parameters</c> (transformers 5) or <c>rope_scaling</c> (older) object.</summary>
internal sealed class RopeParameters
{
    [JsonPropertyName("rope_type")] public string? RopeType { get; set; }

    /// <summary>Older spelling of rope_type used in rope_scaling.</summary>
    [JsonPropertyName("type")] public string? LegacyType { get; set; }

    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; set; }
    [JsonPropertyName("factor")] public double? Factor { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; set; }

    [JsonIgnore] public string? Type => RopeType ?? LegacyType;
}

/// <summary><c>vision_config</c> of a LLaVA checkpoint (Hugging Face <c>CLIPVisionConfig</c> defaults).</summary>
internal sealed class ClipVisionConfig
{
    [JsonPropertyName("model_type")] public string? ModelType { get; set; } = "clip_vision_model";
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; set; } = 768;
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; set; } = 3072;
    [JsonPropertyName("projection_dim")] public int ProjectionDim { get; set; } = 512;
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; set; } = 12;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; set; } = 12;
    [JsonPropertyName("num_channels")] public int NumChannels { get; set; } = 3;
    [JsonPropertyName("image_size")] public int ImageSize { get; set; } = 224;
    [JsonPropertyName("patch_size")] public int PatchSize { get; set; } = 32;
    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; set; } = 1e-5;
    [JsonPropertyName("hidden_act")] public string? HiddenAct { get; set; } = "quick_gelu";
    [JsonIgnore] internal Compute.ActivationFunction Activation => Compute.ActivationFunctions.Parse(HiddenAct, "vision_config.hidden_act");

    [JsonIgnore] public int HeadDim => NumAttentionHeads > 0 ? HiddenSize / NumAttentionHeads : 0;
    [JsonIgnore] public int GridSize => PatchSize > 0 ? ImageSize / PatchSize : 0;
    [JsonIgnore] public int NumPatches => GridSize * GridSize;

    /// <summary>Positions in the vision transformer: patches + CLS.</summary>
    [JsonIgnore] public int NumPositions => NumPatches + 1;

    /// <summary>The tower Hugging Face's LlavaConfig builds when vision_config is absent (CLIP ViT-L/14 at 336 px).</summary>
    public static ClipVisionConfig CreateLlavaDefault() => new()
    {
        HiddenSize = 1024,
        IntermediateSize = 4096,
        ProjectionDim = 768,
        NumHiddenLayers = 24,
        NumAttentionHeads = 16,
        ImageSize = 336,
        PatchSize = 14,
    };

    internal void Validate(ConfigValidator v, string prefix)
    {
        string F(string name) => prefix + "." + name;

        if (ModelType is not (null or "clip_vision_model"))
            v.Fail(F("model_type"), ModelType, "'clip_vision_model' (only CLIP vision towers are supported)");
        v.Range(F("hidden_size"), HiddenSize, 1, 65536);
        v.Range(F("intermediate_size"), IntermediateSize, 1, 1 << 20);
        v.Range(F("num_hidden_layers"), NumHiddenLayers, 1, 1024);
        v.Range(F("num_attention_heads"), NumAttentionHeads, 1, HiddenSize);
        if (HiddenSize % NumAttentionHeads != 0)
            v.Fail(F("num_attention_heads"), NumAttentionHeads, $"a divisor of hidden_size ({HiddenSize})");
        v.Range(F("num_channels"), NumChannels, 1, 16);
        v.Range(F("image_size"), ImageSize, 1, 16384);
        v.Range(F("patch_size"), PatchSize, 1, ImageSize);
        if (ImageSize % PatchSize != 0)
            v.Fail(F("image_size"), ImageSize, $"a multiple of patch_size ({PatchSize})");
        v.PositiveSmall(F("layer_norm_eps"), LayerNormEps);
        v.OneOf(F("hidden_act"), HiddenAct, Compute.ActivationFunctions.Names);
    }
}

/// <summary>Uniform "field = value, expected ..." errors for config validation.</summary>
internal sealed class ConfigValidator
{
    private readonly string _path;

    public ConfigValidator(string path) => _path = path;

    public static string Show(object? value) => value switch
    {
        null => "(missing)",
        string s => $"'{s}'",
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public void Fail(string field, object? value, string expected)
        => throw new ModelLoadException($"Config '{_path}': {field} = {Show(value)} is not supported; expected {expected}.", _path);

    public void Range(string field, long value, long min, long max, string? why = null)
    {
        if (value < min || value > max)
            Fail(field, value, $"a value in [{min}, {max}]" + (why is null ? "" : $" ({why})"));
    }

    /// <summary>RoPE's base: inverse frequencies are theta^(-2i/d), so a base below 1 grows them exponentially and 1e-300 overflows.</summary>
    public void RopeTheta(string field, double value)
    {
        if (!(double.IsFinite(value) && value >= 1 && value <= 1e12))
            Fail(field, value, "a number in [1, 1E+12] (10000 for Llama 2, 500000 for Llama 3)");
    }

    public void PositiveSmall(string field, double value)
    {
        if (!(double.IsFinite(value) && value > 0 && value < 1))
            Fail(field, value, "a positive number below 1");
    }

    public void OneOf(string field, string? value, string[] allowed)
    {
        if (value is null || !allowed.Contains(value))
            Fail(field, value, "one of " + string.Join(", ", allowed.Select(a => $"'{a}'")));
    }
}

/// <summary>Reads <c>2</c> or <c>[2, 32007]</c> (or null) as an int array.</summary>
internal sealed class IntOrIntArrayConverter : JsonConverter<int[]?>
{
    public override int[]? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.Number:
                return new[] { reader.GetInt32() };
            case JsonTokenType.StartArray:
                var list = new List<int>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.Number)
                        throw new JsonException("Expected an integer token id in the list.");
                    list.Add(reader.GetInt32());
                }
                return list.ToArray();
            default:
                throw new JsonException("Expected an integer token id or a list of them.");
        }
    }

    public override void Write(Utf8JsonWriter writer, int[]? value, JsonSerializerOptions options)
    {
        if (value is null) { writer.WriteNullValue(); return; }
        if (value.Length == 1) { writer.WriteNumberValue(value[0]); return; }
        writer.WriteStartArray();
        foreach (var x in value) writer.WriteNumberValue(x);
        writer.WriteEndArray();
    }
}
