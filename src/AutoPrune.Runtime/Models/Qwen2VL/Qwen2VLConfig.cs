using AutoPrune.Models.Llava;
using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// The text-model fields of a Qwen2.5-VL <c>config.json</c>, as written: either flat at the top level (the released
/// checkpoints, transformers 4.4x-4.5x) or nested in <c>text_config</c> (what current transformers saves, often beside a
/// flat copy). Every field is nullable so that <see cref="Qwen2VLConfig"/> can tell "absent" from a value and refuse
/// two different values for one field.
/// </summary>
internal class Qwen2VLTextFields
{
    [JsonPropertyName("model_type")] public string? ModelType { get; set; }
    [JsonPropertyName("vocab_size")] public int? VocabSize { get; set; }
    [JsonPropertyName("hidden_size")] public int? HiddenSize { get; set; }
    [JsonPropertyName("intermediate_size")] public int? IntermediateSize { get; set; }
    [JsonPropertyName("num_hidden_layers")] public int? NumHiddenLayers { get; set; }
    [JsonPropertyName("num_attention_heads")] public int? NumAttentionHeads { get; set; }
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeads { get; set; }

    /// <summary>Not a Qwen2 field (head_dim is hidden_size / num_attention_heads); accepted only when it says the same.</summary>
    [JsonPropertyName("head_dim")] public int? HeadDim { get; set; }
    [JsonPropertyName("hidden_act")] public string? HiddenAct { get; set; }
    [JsonPropertyName("max_position_embeddings")] public int? MaxPositionEmbeddings { get; set; }
    [JsonPropertyName("rms_norm_eps")] public double? RmsNormEps { get; set; }
    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; set; }

    /// <summary>Older form: <c>{"type": "mrope", "mrope_section": [16, 24, 24]}</c> (transformers maps type mrope to rope_type default).</summary>
    [JsonPropertyName("rope_scaling")] public Qwen2VLRope? RopeScaling { get; set; }

    /// <summary>transformers 5 form: <c>{"rope_type": "default", "mrope_section": [...], "rope_theta": 1e6}</c>.</summary>
    [JsonPropertyName("rope_parameters")] public Qwen2VLRope? RopeParameters { get; set; }
    [JsonPropertyName("use_sliding_window")] public bool? UseSlidingWindow { get; set; }
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; set; }
    [JsonPropertyName("tie_word_embeddings")] public bool? TieWordEmbeddings { get; set; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; set; }

    [JsonPropertyName("eos_token_id")]
    [JsonConverter(typeof(IntOrIntArrayConverter))]
    public int[]? EosTokenId { get; set; }
}

/// <summary><c>rope_scaling</c> or <c>rope_parameters</c> of a Qwen2.5-VL text model.</summary>
internal sealed class Qwen2VLRope
{
    [JsonPropertyName("rope_type")] public string? RopeType { get; set; }

    /// <summary>Older spelling of rope_type.</summary>
    [JsonPropertyName("type")] public string? LegacyType { get; set; }
    [JsonPropertyName("mrope_section")] public int[]? MropeSection { get; set; }
    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; set; }

    [JsonIgnore] public string? Type => RopeType ?? LegacyType;
}

/// <summary><c>vision_config</c> of a Qwen2.5-VL checkpoint; initialisers are <c>Qwen2_5_VLVisionConfig</c>'s defaults.</summary>
internal sealed class Qwen2VLVisionConfig
{
    [JsonPropertyName("model_type")] public string? ModelType { get; set; }
    [JsonPropertyName("depth")] public int Depth { get; set; } = 32;
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; set; } = 3584;
    [JsonPropertyName("hidden_act")] public string? HiddenAct { get; set; } = "silu";
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; set; } = 3420;
    [JsonPropertyName("num_heads")] public int NumHeads { get; set; } = 16;

    /// <summary>Released checkpoints' spelling; <see cref="InChannelsNew"/> is current transformers'.</summary>
    [JsonPropertyName("in_chans")] public int? InChans { get; set; }
    [JsonPropertyName("in_channels")] public int? InChannelsNew { get; set; }
    [JsonPropertyName("patch_size")] public int PatchSize { get; set; } = 14;
    [JsonPropertyName("spatial_patch_size")] public int? SpatialPatchSize { get; set; }
    [JsonPropertyName("spatial_merge_size")] public int SpatialMergeSize { get; set; } = 2;
    [JsonPropertyName("temporal_patch_size")] public int TemporalPatchSize { get; set; } = 2;
    [JsonPropertyName("tokens_per_second")] public double TokensPerSecond { get; set; } = 4;
    [JsonPropertyName("window_size")] public int WindowSize { get; set; } = 112;
    [JsonPropertyName("out_hidden_size")] public int OutHiddenSize { get; set; } = 3584;
    [JsonPropertyName("fullatt_block_indexes")] public int[]? FullAttBlockIndexes { get; set; } = [7, 15, 23, 31];

    /// <summary>Input channels: in_channels, else in_chans, else 3.</summary>
    [JsonIgnore] public int InChannels => InChannelsNew ?? InChans ?? 3;
    [JsonIgnore] public int HeadDim => NumHeads > 0 ? HiddenSize / NumHeads : 0;

    /// <summary>Patches merged into one LLM token: spatial_merge_size².</summary>
    [JsonIgnore] public int MergeUnit => SpatialMergeSize * SpatialMergeSize;

    /// <summary>Values of one flattened patch, the patch embedding's input: in_channels · temporal_patch_size · patch_size².</summary>
    [JsonIgnore] public int PatchValues => InChannels * TemporalPatchSize * PatchSize * PatchSize;

    /// <summary>Side of an attention window in merged tokens: window_size / spatial_merge_size / patch_size (4 for 112 px).</summary>
    [JsonIgnore] public int WindowMergedTokens => WindowSize / SpatialMergeSize / PatchSize;

    /// <summary>True when block <paramref name="index"/> attends over the whole image instead of its windows.</summary>
    public bool IsFullAttention(int index) => FullAttBlockIndexes is { } f && Array.IndexOf(f, index) >= 0;

    internal void Validate(ConfigValidator v, int textHidden)
    {
        const string p = "vision_config.";
        if (ModelType is not (null or Qwen2VLConfig.SupportedModelType))
            v.Fail(p + "model_type", ModelType, $"'{Qwen2VLConfig.SupportedModelType}' (the Qwen2.5-VL vision tower)");
        if (InChans is int a && InChannelsNew is int b && a != b)
            v.Fail(p + "in_channels", b, $"the same value as vision_config.in_chans ({a}) or absent");
        v.Range(p + (InChannelsNew is null ? "in_chans" : "in_channels"), InChannels, 1, 16);
        v.Range(p + "depth", Depth, 1, 1024);
        v.Range(p + "hidden_size", HiddenSize, 1, 65536);
        v.Range(p + "intermediate_size", IntermediateSize, 1, 1 << 20);
        v.Range(p + "num_heads", NumHeads, 1, HiddenSize);
        if (HiddenSize % NumHeads != 0) v.Fail(p + "num_heads", NumHeads, $"a divisor of vision_config.hidden_size ({HiddenSize})");
        if (HeadDim % 4 != 0)
            v.Fail(p + "num_heads", NumHeads, $"a value giving a head_dim divisible by 4 (hidden_size / num_heads = {HeadDim}; the 2D rotary embedding splits half of it between rows and columns)");
        v.Range(p + "patch_size", PatchSize, 1, 1024);
        if (SpatialPatchSize is int sp && sp != PatchSize)
            v.Fail(p + "spatial_patch_size", sp, $"the same value as vision_config.patch_size ({PatchSize})");
        v.Range(p + "spatial_merge_size", SpatialMergeSize, 1, 16);
        v.Range(p + "temporal_patch_size", TemporalPatchSize, 1, 16);
        int unit = PatchSize * SpatialMergeSize;
        v.Range(p + "window_size", WindowSize, unit, 1 << 16, $"at least patch_size * spatial_merge_size = {unit}");
        if (WindowSize % unit != 0)
            v.Fail(p + "window_size", WindowSize, $"a multiple of patch_size * spatial_merge_size = {unit}");
        if (!(double.IsFinite(TokensPerSecond) && TokensPerSecond >= 0 && TokensPerSecond <= 1e6))
            v.Fail(p + "tokens_per_second", TokensPerSecond, "a number in [0, 1E+06]");
        v.Range(p + "out_hidden_size", OutHiddenSize, 1, 65536);
        if (OutHiddenSize != textHidden)
            v.Fail(p + "out_hidden_size", OutHiddenSize, $"the text model's hidden_size ({textHidden}): the merger's output is spliced into the language model's embeddings");
        if (HiddenAct != "silu")
            v.Fail(p + "hidden_act", HiddenAct, "'silu' (the Qwen2.5-VL vision MLP: SwiGLU with bias)");
        if (FullAttBlockIndexes is null)
            v.Fail(p + "fullatt_block_indexes", null, "a list of vision block indexes that use full attention");
        var seen = new HashSet<int>();
        foreach (int i in FullAttBlockIndexes)
        {
            v.Range(p + "fullatt_block_indexes", i, 0, Depth - 1, $"vision_config.depth is {Depth}");
            if (!seen.Add(i)) v.Fail(p + "fullatt_block_indexes", i, "each block index listed once");
        }
    }
}

/// <summary>
/// <c>config.json</c> of a Qwen2.5-VL checkpoint (<c>model_type: qwen2_5_vl</c>, Hugging Face
/// <c>Qwen2_5_VLConfig</c>), in both styles: flat text fields with <c>rope_scaling {type: mrope, mrope_section}</c> and
/// <c>rope_theta</c> (released checkpoints), and a nested <c>text_config</c> with <c>rope_parameters</c> (current
/// transformers). Absent fields take transformers' defaults (the 7B model's). Use <see cref="Load"/> or
/// <see cref="Parse"/>, which resolve the two styles into <see cref="Text"/> and validate; errors name the file and the field.
/// </summary>
internal sealed class Qwen2VLConfig : Qwen2VLTextFields
{
    public const string FileName = "config.json";
    public const string SupportedModelType = "qwen2_5_vl";

    /// <summary>Model types of the family that are recognised but not run yet, with their names for the error.</summary>
    internal static readonly (string Type, string Name)[] NotYetSupported =
    [
        ("qwen2_vl", "Qwen2-VL"),
        ("qwen3_vl", "Qwen3-VL"),
        ("qwen3_vl_moe", "Qwen3-VL-MoE"),
        ("qwen2_5_omni", "Qwen2.5-Omni"),
    ];

    [JsonPropertyName("text_config")] public Qwen2VLTextFields? TextConfig { get; set; }
    [JsonPropertyName("vision_config")] public Qwen2VLVisionConfig? VisionConfig { get; set; }
    [JsonPropertyName("image_token_id")] public int ImageTokenId { get; set; } = 151655;
    [JsonPropertyName("video_token_id")] public int VideoTokenId { get; set; } = 151656;
    [JsonPropertyName("vision_start_token_id")] public int VisionStartTokenId { get; set; } = 151652;
    [JsonPropertyName("vision_end_token_id")] public int VisionEndTokenId { get; set; } = 151653;
    [JsonPropertyName("vision_token_id")] public int? VisionTokenId { get; set; }

    /// <summary>The text model, resolved from both styles (set by <see cref="Validate"/>).</summary>
    [JsonIgnore] public Qwen2VLTextConfig Text { get; private set; } = null!;

    /// <summary>The vision tower (defaults when absent; set by <see cref="Validate"/>).</summary>
    [JsonIgnore] public Qwen2VLVisionConfig Vision => VisionConfig!;

    /// <summary>True when config.json's model_type names a Qwen vision-language model, supported or not.</summary>
    public static bool IsQwenVisionLanguage(string? modelType)
        => modelType == SupportedModelType || NotYetSupported.Any(n => n.Type == modelType);

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNameCaseInsensitive = false,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Reads, resolves and validates <c>config.json</c> of a checkpoint folder.</summary>
    /// <exception cref="ModelLoadException">Missing, unreadable, malformed or unsupported, naming the file and field.</exception>
    public static Qwen2VLConfig Load(string folder, InputFileLimits? limits = null)
    {
        if (string.IsNullOrWhiteSpace(folder))
            throw new ModelLoadException("The checkpoint folder path is empty.", folder);
        string full = Path.GetFullPath(folder);
        if (!Directory.Exists(full))
            throw new ModelLoadException($"Checkpoint folder '{full}' does not exist.", full);
        string path = Path.Combine(full, FileName);
        if (!File.Exists(path))
            throw new ModelLoadException($"'{FileName}' not found in '{full}'. Files present: {SafeTensorStore.ListFolder(full)}.", path);
        return Parse(ModelFiles.ReadText(path, (limits ?? new()).ConfigBytes, "ModelOptions.FileLimits.ConfigBytes"), path);
    }

    /// <summary>Parses and validates config JSON; <paramref name="sourcePath"/> names it in errors.</summary>
    public static Qwen2VLConfig Parse(string json, string sourcePath)
    {
        Qwen2VLConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<Qwen2VLConfig>(json, JsonOptions);
        }
        catch (JsonException ex)
        {
            string where = ex.LineNumber is long line ? $"line {line + 1}" : "unknown line";
            if (ex.BytePositionInLine is long col) where += $", byte {col + 1}";
            string field = string.IsNullOrEmpty(ex.Path) || ex.Path == "$" ? "" : $" at '{ex.Path}'";
            int cut = ex.Message.IndexOf(" Path:", StringComparison.Ordinal);
            throw new ModelLoadException($"Config '{sourcePath}' is not valid ({where}{field}): {(cut > 0 ? ex.Message[..cut] : ex.Message)}", sourcePath, null, ex);
        }
        if (config is null)
            throw new ModelLoadException($"Config '{sourcePath}' is JSON null; expected an object.", sourcePath);
        config.Validate(sourcePath);
        return config;
    }

    /// <summary>Resolves the text fields of both styles, fills defaults and checks every field.</summary>
    public void Validate(string? sourcePath = null)
    {
        string src = sourcePath ?? FileName;
        var v = new ConfigValidator(src);
        if (ModelType != SupportedModelType)
        {
            foreach (var (type, name) in NotYetSupported)
                if (ModelType == type)
                    throw new ModelLoadException(
                        $"Config '{src}': model_type '{type}' ({name}) is not supported yet; of the Qwen vision-language models this runtime runs '{SupportedModelType}' (Qwen2.5-VL, e.g. Qwen/Qwen2.5-VL-3B-Instruct).", src);
            throw new ModelLoadException(
                $"Config '{src}': model_type is {ConfigValidator.Show(ModelType)}; a Qwen2.5-VL checkpoint has '{SupportedModelType}' (Qwen2_5_VLForConditionalGeneration).", src);
        }
        Text = Qwen2VLTextConfig.Resolve(this, TextConfig, v);
        VisionConfig ??= new Qwen2VLVisionConfig();
        VisionConfig.Validate(v, Text.HiddenSize);

        var ids = new (string Field, int Id)[]
        {
            ("image_token_id", ImageTokenId), ("video_token_id", VideoTokenId),
            ("vision_start_token_id", VisionStartTokenId), ("vision_end_token_id", VisionEndTokenId),
        };
        foreach (var (field, id) in ids)
            v.Range(field, id, 0, Text.VocabSize - 1, $"an id of the {Text.VocabSize}-token vocabulary");
        if (VisionTokenId is int vt) v.Range("vision_token_id", vt, 0, Text.VocabSize - 1, $"an id of the {Text.VocabSize}-token vocabulary");
        for (int i = 0; i < ids.Length; i++)
            for (int j = 0; j < i; j++)
                if (ids[i].Id == ids[j].Id)
                    v.Fail(ids[i].Field, ids[i].Id, $"an id different from {ids[j].Field} ({ids[j].Id})");
    }
}

/// <summary>The resolved Qwen2 text model of a Qwen2.5-VL checkpoint (<c>Qwen2_5_VLTextConfig</c> defaults filled in).</summary>
internal sealed record Qwen2VLTextConfig
{
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public required double RmsNormEps { get; init; }
    public required double RopeTheta { get; init; }

    /// <summary>Rotary frequencies per position component (temporal, height, width); they sum to head_dim / 2.</summary>
    public required int[] MropeSection { get; init; }
    public required bool TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    public int HeadDim => HiddenSize / NumAttentionHeads;
    public int KvDim => NumKeyValueHeads * HeadDim;

    internal static Qwen2VLTextConfig Resolve(Qwen2VLTextFields flat, Qwen2VLTextFields? nested, ConfigValidator v)
    {
        // One value per field: text_config's, else the flat one, else the default; two different values are refused.
        T Pick<T>(string field, Func<Qwen2VLTextFields, T?> get, T fallback) where T : struct
        {
            T? a = nested is null ? null : get(nested), b = get(flat);
            if (a is T x && b is T y && !EqualityComparer<T>.Default.Equals(x, y))
                v.Fail("text_config." + field, x, $"the same value as the top-level {field} ({ConfigValidator.Show(y)}) or absent in one of them");
            return a ?? b ?? fallback;
        }
        string Name(string field) => nested is not null && Has(nested, field) ? "text_config." + field : field;
        bool Has(Qwen2VLTextFields f, string field) => field switch
        {
            "hidden_size" => f.HiddenSize is not null,
            "num_attention_heads" => f.NumAttentionHeads is not null,
            "num_key_value_heads" => f.NumKeyValueHeads is not null,
            _ => false,
        };

        if (nested?.ModelType is string nt && nt is not ("qwen2_5_vl_text" or "qwen2_5_vl"))
            v.Fail("text_config.model_type", nt, "'qwen2_5_vl_text'");

        int hidden = Pick("hidden_size", f => f.HiddenSize, 8192);
        int heads = Pick("num_attention_heads", f => f.NumAttentionHeads, 64);
        int kvHeads = Pick("num_key_value_heads", f => f.NumKeyValueHeads, 8);
        int vocab = Pick("vocab_size", f => f.VocabSize, 152064);
        int inter = Pick("intermediate_size", f => f.IntermediateSize, 29568);
        int layers = Pick("num_hidden_layers", f => f.NumHiddenLayers, 80);
        int maxPos = Pick("max_position_embeddings", f => f.MaxPositionEmbeddings, 32768);
        double eps = Pick("rms_norm_eps", f => f.RmsNormEps, 1e-5);
        bool tie = Pick("tie_word_embeddings", f => f.TieWordEmbeddings, false);
        bool sliding = Pick("use_sliding_window", f => f.UseSlidingWindow, false);
        int? bos = nested?.BosTokenId ?? flat.BosTokenId;
        int[] eos = nested?.EosTokenId ?? flat.EosTokenId ?? [];
        string act = (nested?.HiddenAct ?? flat.HiddenAct) ?? "silu";

        v.Range(Name("hidden_size"), hidden, 1, 65536);
        v.Range(Name("num_attention_heads"), heads, 1, hidden);
        if (hidden % heads != 0) v.Fail(Name("num_attention_heads"), heads, $"a divisor of hidden_size ({hidden})");
        int headDim = hidden / heads;
        if (headDim % 2 != 0) v.Fail(Name("num_attention_heads"), heads, $"a value giving an even head_dim (hidden_size / heads = {headDim})");
        int? explicitHeadDim = nested?.HeadDim ?? flat.HeadDim;
        if (explicitHeadDim is int hd && hd != headDim)
            v.Fail(nested?.HeadDim is not null ? "text_config.head_dim" : "head_dim", hd, $"hidden_size / num_attention_heads = {headDim} (Qwen2 has no separate head_dim)");
        v.Range(Name("num_key_value_heads"), kvHeads, 1, heads);
        if (heads % kvHeads != 0) v.Fail(Name("num_key_value_heads"), kvHeads, $"a divisor of num_attention_heads ({heads})");
        v.Range("vocab_size", vocab, 1, 10_000_000);
        v.Range("intermediate_size", inter, 1, 1 << 20);
        v.Range("num_hidden_layers", layers, 1, 1024);
        v.Range("max_position_embeddings", maxPos, 1, 1 << 24);
        v.PositiveSmall("rms_norm_eps", eps);
        if (act != "silu") v.Fail("hidden_act", act, "'silu' (the Qwen2 SwiGLU MLP)");
        if (sliding) v.Fail("use_sliding_window", true, "false (Qwen2.5-VL checkpoints attend over the whole sequence; sliding-window attention is not supported)");
        foreach (int id in eos) v.Range("eos_token_id", id, 0, vocab - 1, $"an id of the {vocab}-token vocabulary");
        if (bos is int b) v.Range("bos_token_id", b, 0, vocab - 1, $"an id of the {vocab}-token vocabulary");

        // Rotary: rope_parameters (v5) or rope_scaling (older), from text_config first; theta from them or rope_theta.
        (Qwen2VLRope? rope, string ropeField) = nested?.RopeParameters is { } r1 ? (r1, "text_config.rope_parameters")
            : nested?.RopeScaling is { } r2 ? (r2, "text_config.rope_scaling")
            : flat.RopeParameters is { } r3 ? (r3, "rope_parameters")
            : flat.RopeScaling is { } r4 ? (r4, "rope_scaling")
            : (null, "rope_scaling");
        if (rope is null)
            v.Fail("rope_scaling", null, "an object with mrope_section (e.g. {\"type\": \"mrope\", \"mrope_section\": [16, 24, 24]}): Qwen2.5-VL rotates its query and key dimensions by three position components");
        if (rope.Type is not (null or "mrope" or "default"))
            v.Fail(ropeField + (rope.RopeType is null ? ".type" : ".rope_type"), rope.Type, "'mrope' or 'default' (scaled RoPE variants are not supported)");
        if (rope.MropeSection is not { Length: 3 })
            v.Fail(ropeField + ".mrope_section", rope.MropeSection is null ? null : "[" + string.Join(", ", rope.MropeSection) + "]", "three positive integers (temporal, height, width) that sum to head_dim / 2");
        int[] section = rope.MropeSection;
        foreach (int s in section) v.Range(ropeField + ".mrope_section", s, 1, headDim / 2);
        if (section.Sum() != headDim / 2)
            v.Fail(ropeField + ".mrope_section", "[" + string.Join(", ", section) + "]", $"sections summing to head_dim / 2 = {headDim / 2} (hidden_size {hidden} / {heads} heads = head_dim {headDim})");
        double? thetaA = rope.RopeTheta, thetaB = nested?.RopeTheta ?? flat.RopeTheta;
        if (thetaA is double ta && thetaB is double tb && ta != tb)
            v.Fail(ropeField + ".rope_theta", ta, $"the same value as rope_theta ({ConfigValidator.Show(tb)}) or absent");
        double theta = thetaA ?? thetaB ?? 1_000_000.0;
        v.RopeTheta(thetaA is not null ? ropeField + ".rope_theta" : "rope_theta", theta);

        return new Qwen2VLTextConfig
        {
            VocabSize = vocab, HiddenSize = hidden, IntermediateSize = inter, NumHiddenLayers = layers,
            NumAttentionHeads = heads, NumKeyValueHeads = kvHeads, MaxPositionEmbeddings = maxPos, RmsNormEps = eps,
            RopeTheta = theta, MropeSection = (int[])section.Clone(), TieWordEmbeddings = tie, BosTokenId = bos, EosTokenIds = eos,
        };
    }
}
