using System.Globalization;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Configurations of the released Qwen2.5-VL checkpoints, for speed measurements with generated weights
/// (<see cref="Qwen2VLRandomTensorSource"/>) when the checkpoint is not at hand: each preset is the checkpoint's
/// config.json text parsed by <see cref="Qwen2VLConfig.Parse"/>, so defaults and validation are those of a loaded
/// checkpoint. Every call returns a new config.
/// </summary>
internal static class Qwen2VLPresets
{
    public const string Qwen25VL3BName = "qwen2.5-vl-3b";
    public const string Qwen25VL7BName = "qwen2.5-vl-7b";

    /// <summary>The names <see cref="ByName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = [Qwen25VL3BName, Qwen25VL7BName];

    /// <summary>The image a speed measurement uses: 448x448 (1,024 patches, 256 merged tokens after smart_resize).</summary>
    public const int TypicalImageSize = 448;

    /// <summary>True when <paramref name="name"/> is one of <see cref="Names"/> (case-insensitive).</summary>
    public static bool IsPreset(string? name) => Names.Contains(name?.Trim().ToLowerInvariant());

    /// <summary>
    /// Qwen/Qwen2.5-VL-3B-Instruct: 36 decoder layers, hidden 2048, 16 heads / 2 KV heads, MLP 11008, vocabulary 151,936,
    /// tied embeddings; the 32-block vision tower (hidden 1280, 16 heads, MLP 3420) merging into 2048.
    /// </summary>
    public static Qwen2VLConfig Qwen25VL3B(int? decoderLayers = null) => Qwen2VLConfig.Parse(Json(hidden: 2048, intermediate: 11008, layers: decoderLayers ?? 36, heads: 16, kvHeads: 2,
        vocab: 151936, tied: true, maxWindowLayers: 70), "preset " + Qwen25VL3BName);

    /// <summary>
    /// Qwen/Qwen2.5-VL-7B-Instruct: 28 decoder layers, hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocabulary 152,064,
    /// untied; the same vision tower merging into 3584.
    /// </summary>
    public static Qwen2VLConfig Qwen25VL7B(int? decoderLayers = null) => Qwen2VLConfig.Parse(Json(hidden: 3584, intermediate: 18944, layers: decoderLayers ?? 28, heads: 28, kvHeads: 4,
        vocab: 152064, tied: false, maxWindowLayers: 28), "preset " + Qwen25VL7BName);

    /// <summary>
    /// A preset by name (case-insensitive), one of <see cref="Names"/>; <paramref name="decoderLayers"/> builds fewer
    /// decoder layers than released (a measurement that scales per layer, in less memory).
    /// </summary>
    public static Qwen2VLConfig ByName(string name, int? decoderLayers = null) => name?.Trim().ToLowerInvariant() switch
    {
        Qwen25VL3BName => Qwen25VL3B(decoderLayers),
        Qwen25VL7BName => Qwen25VL7B(decoderLayers),
        _ => throw new ArgumentException($"Unknown Qwen2.5-VL preset '{name}'. Known presets: {string.Join(", ", Names)}.", nameof(name)),
    };

    /// <summary>
    /// A preprocessed image of <paramref name="width"/> × <paramref name="height"/> pixels (resized by smart_resize with the
    /// released processor's bounds, 3,136 to 12,845,056 pixels) whose pixel values are generated (uniform in [-2, 2)).
    /// </summary>
    public static Qwen2VLImage SyntheticImage(Qwen2VLConfig config, int width, int height, int seed = 2)
    {
        var v = config.Vision;
        int factor = v.PatchSize * v.SpatialMergeSize;
        var (rh, rw) = Qwen2VLImageProcessor.SmartResize(height, width, factor, 3136, 12845056);
        int gh = rh / v.PatchSize, gw = rw / v.PatchSize;
        var pixels = new float[checked(gh * gw * v.PatchValues)];
        var rng = new Random(seed);
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rng.NextDouble() * 4 - 2);
        return new Qwen2VLImage(pixels, 1, gh, gw, rw, rh, width, height, v.SpatialMergeSize);
    }

    /// <summary>config.json of a released Qwen2.5-VL checkpoint (the fields the two sizes share written once).</summary>
    private static string Json(int hidden, int intermediate, int layers, int heads, int kvHeads, int vocab, bool tied, int maxWindowLayers)
        => string.Create(CultureInfo.InvariantCulture, $$"""
        {
          "architectures": ["Qwen2_5_VLForConditionalGeneration"],
          "model_type": "qwen2_5_vl",
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151645,
          "vision_start_token_id": 151652,
          "vision_end_token_id": 151653,
          "vision_token_id": 151654,
          "image_token_id": 151655,
          "video_token_id": 151656,
          "hidden_act": "silu",
          "hidden_size": {{hidden}},
          "initializer_range": 0.02,
          "intermediate_size": {{intermediate}},
          "max_position_embeddings": 128000,
          "max_window_layers": {{maxWindowLayers}},
          "num_attention_heads": {{heads}},
          "num_hidden_layers": {{layers}},
          "num_key_value_heads": {{kvHeads}},
          "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0,
          "sliding_window": 32768,
          "tie_word_embeddings": {{(tied ? "true" : "false")}},
          "torch_dtype": "bfloat16",
          "use_cache": true,
          "use_sliding_window": false,
          "vision_config": {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": {{hidden}},
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2
          },
          "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
          "vocab_size": {{vocab}}
        }
        """);
}

/// <summary>
/// Generated weights for a Qwen2.5-VL model of any size (<see cref="RandomTensorSource"/>'s values, from (seed, name)):
/// norm weights 1 — the merger's <c>ln_q</c> included, whose name has no "norm" — biases 0, everything else uniform with
/// standard deviation 0.02; with tied embeddings the LM head is reported absent, so the decoder reuses the embedding.
/// </summary>
internal sealed class Qwen2VLRandomTensorSource(Qwen2VLConfig config, ulong seed) : ITensorSource
{
    private readonly RandomTensorSource _inner = new(seed, config.Text.TieWordEmbeddings);

    /// <summary>Total elements generated so far.</summary>
    public long ElementsGenerated => _inner.ElementsGenerated;

    private static bool IsOnes(string name) => name.EndsWith(".ln_q.weight", StringComparison.Ordinal);

    public bool Contains(string name) => _inner.Contains(name);

    public float[] ReadFloat32(string name, params long[] expectedShape)
    {
        var v = _inner.ReadFloat32(name, expectedShape);
        if (IsOnes(name)) v.AsSpan().Fill(1f);
        return v;
    }

    public Half[] ReadFloat16(string name, params long[] expectedShape)
    {
        var v = _inner.ReadFloat16(name, expectedShape);
        if (IsOnes(name)) v.AsSpan().Fill(Half.One);
        return v;
    }

    public WeightData ReadWeight(string name, params long[] expectedShape) => WeightData.Of(ReadFloat16(name, expectedShape));

    public IReadOnlyList<string> UnusedTensors() => [];
}
