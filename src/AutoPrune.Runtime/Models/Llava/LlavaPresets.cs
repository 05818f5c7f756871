using System.Globalization;

using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// Configurations of known LLaVA checkpoints, for speed measurements with generated weights
/// (<see cref="RandomTensorSource"/>) when the checkpoint itself is not at hand. Each preset is a config.json
/// text parsed by <see cref="LlavaConfig.Parse"/>, so defaults, derived values and validation are exactly those
/// of a loaded checkpoint. Every call returns a new (mutable) config.
/// </summary>
internal static class LlavaPresets
{
    public const string Llava15_7BName = "llava-1.5-7b";
    public const string Llava15_13BName = "llava-1.5-13b";
    public const string TinyTestName = "tiny-test";
    public const string Llava16Vicuna7BName = "llava-1.6-vicuna-7b";
    public const string Llava16Mistral7BName = "llava-1.6-mistral-7b";
    public const string TinyNextTestName = "tiny-next-test";
    public const string Tiny32LayersName = "tiny-32-layers";

    /// <summary>The names <see cref="ByName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } =
        [Llava15_7BName, Llava15_13BName, Llava16Vicuna7BName, Llava16Mistral7BName, TinyTestName, TinyNextTestName, Tiny32LayersName];

    /// <summary>For LLaVA-NeXT presets, the image size a speed measurement uses: 672x672 fills the 2x2-tile pinpoint (2,928 visual tokens).</summary>
    public const int TypicalNextImageSize = 672;

    /// <summary>llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B (Llama, 32 layers, hidden 4096).</summary>
    public static LlavaConfig Llava15_7B()
        => LlavaConfig.Parse(LlavaJson("llava", VicunaTextJson(hidden: 4096, layers: 32, heads: 32, intermediate: 11008)), "preset " + Llava15_7BName);

    /// <summary>llava-hf/llava-1.5-13b-hf: CLIP ViT-L/14-336 + Vicuna-13B (Llama, 40 layers, hidden 5120).</summary>
    public static LlavaConfig Llava15_13B()
        => LlavaConfig.Parse(LlavaJson("llava", VicunaTextJson(hidden: 5120, layers: 40, heads: 40, intermediate: 13824)), "preset " + Llava15_13BName);

    /// <summary>llava-hf/llava-v1.6-vicuna-7b-hf: LLaVA-NeXT, CLIP ViT-L/14-336 + Vicuna-7B v1.5 (Llama, 32 layers, hidden 4096).</summary>
    public static LlavaConfig Llava16Vicuna7B()
        => LlavaConfig.Parse(LlavaJson("llava_next", VicunaTextJson(hidden: 4096, layers: 32, heads: 32, intermediate: 11008)), "preset " + Llava16Vicuna7BName);

    /// <summary>
    /// llava-hf/llava-v1.6-mistral-7b-hf: LLaVA-NeXT, CLIP ViT-L/14-336 + Mistral-7B-Instruct v0.2 (32 layers, hidden 4096,
    /// 8 KV heads, rope_theta 1e6, no sliding window).
    /// </summary>
    public static LlavaConfig Llava16Mistral7B() => LlavaConfig.Parse(LlavaJson("llava_next", """
        {
            "model_type": "mistral",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "vocab_size": 32064,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": false
          }
        """), "preset " + Llava16Mistral7BName);

    /// <summary>The LLaVA-NeXT Mistral fixture model (tests/data/llava-next-tiny/llava-next-tiny-mistral/config.json).</summary>
    public static LlavaConfig TinyNextTest() => LlavaConfig.Parse(TinyNextTestJson, "preset " + TinyNextTestName);

    /// <summary>The repository's fixture model (samples/models/shapes-llava-tiny/config.json).</summary>
    public static LlavaConfig TinyTest() => LlavaConfig.Parse(TinyTestJson, "preset " + TinyTestName);

    /// <summary>
    /// The fixture's dimensions with LLaVA-1.5-7B's 32 decoder layers (and its 576 visual tokens): what the GPU code path's
    /// counters (host syncs, launches, copies per layer) are measured on without a GPU.
    /// </summary>
    public static LlavaConfig Tiny32Layers()
        => LlavaConfig.Parse(TinyTestJson.Replace("\"num_hidden_layers\": 8,", "\"num_hidden_layers\": 32,", StringComparison.Ordinal), "preset " + Tiny32LayersName);

    /// <summary>A preset by name (case-insensitive), one of <see cref="Names"/>.</summary>
    public static LlavaConfig ByName(string name)
    {
        switch (name?.Trim().ToLowerInvariant())
        {
            case Llava15_7BName: return Llava15_7B();
            case Llava15_13BName: return Llava15_13B();
            case TinyTestName: return TinyTest();
            case Llava16Vicuna7BName: return Llava16Vicuna7B();
            case Llava16Mistral7BName: return Llava16Mistral7B();
            case TinyNextTestName: return TinyNextTest();
            case Tiny32LayersName: return Tiny32Layers();
            default:
                throw new ArgumentException(
                    $"Unknown model preset '{name}'. Known presets: {string.Join(", ", Names)}.", nameof(name));
        }
    }

    /// <summary>
    /// config.json of a llava-hf LLaVA-1.5 (<paramref name="modelType"/> "llava") or LLaVA-1.6 ("llava_next", with
    /// Hugging Face's default pinpoints) checkpoint around <paramref name="textConfig"/>: the CLIP ViT-L/14-336 tower,
    /// the GELU projector and image token 32000 are common to all of them.
    /// </summary>
    private static string LlavaJson(string modelType, string textConfig) => string.Create(CultureInfo.InvariantCulture, $$"""
        {
          "architectures": ["{{(modelType == "llava" ? "LlavaForConditionalGeneration" : "LlavaNextForConditionalGeneration")}}"],
          "model_type": "{{modelType}}",
          {{(modelType == "llava" ? "" : "\"image_grid_pinpoints\": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],")}}
          "image_token_index": 32000,
          "pad_token_id": 32001,
          "image_seq_length": 576,
          "projector_hidden_act": "gelu",
          "multimodal_projector_bias": true,
          "tie_word_embeddings": false,
          "vision_feature_layer": -2,
          "vision_feature_select_strategy": "default",
          "vocab_size": 32064,
          "text_config": {{textConfig}},
          "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "projection_dim": 768,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_channels": 3,
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-05
          }
        }
        """);

    /// <summary>
    /// The Vicuna (Llama) text config of llava-hf's LLaVA checkpoints, written out in full rather than left to the
    /// Llama defaults (7B and 13B differ only in the Llama sizes). pad_token_id, top-level in the Hugging Face file, is
    /// repeated here, the only place <see cref="LlamaTextConfig"/> keeps it.
    /// </summary>
    private static string VicunaTextJson(int hidden, int layers, int heads, int intermediate) => string.Create(CultureInfo.InvariantCulture, $$"""
        {
            "model_type": "llama",
            "hidden_size": {{hidden}},
            "intermediate_size": {{intermediate}},
            "num_hidden_layers": {{layers}},
            "num_attention_heads": {{heads}},
            "num_key_value_heads": {{heads}},
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "vocab_size": 32064,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 32001,
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false
          }
        """);

    /// <summary>Verbatim copy of samples/models/shapes-llava-tiny/config.json (a test checks they agree).</summary>
    private const string TinyTestJson = """
        {
          "architectures": [
            "LlavaForConditionalGeneration"
          ],
          "dtype": "float16",
          "image_seq_length": 576,
          "image_token_index": 400,
          "model_type": "llava",
          "multimodal_projector_bias": true,
          "pad_token_id": 401,
          "projector_hidden_act": "gelu",
          "text_config": {
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 48,
            "hidden_act": "silu",
            "hidden_size": 192,
            "initializer_range": 0.02,
            "intermediate_size": 512,
            "max_position_embeddings": 1024,
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 8,
            "num_key_value_heads": 4,
            "pad_token_id": 401,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_parameters": {
              "rope_theta": 10000.0,
              "rope_type": "default"
            },
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": 402
          },
          "tie_word_embeddings": false,
          "transformers_version": "5.17.0",
          "vision_config": {
            "attention_dropout": 0.0,
            "hidden_act": "quick_gelu",
            "hidden_size": 128,
            "image_size": 336,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 512,
            "layer_norm_eps": 1e-05,
            "model_type": "clip_vision_model",
            "num_attention_heads": 4,
            "num_channels": 3,
            "num_hidden_layers": 4,
            "patch_size": 14,
            "projection_dim": 128
          },
          "vision_feature_layer": -2,
          "vision_feature_select_strategy": "default"
        }
        """;

    /// <summary>Verbatim copy of tests/data/llava-next-tiny/llava-next-tiny-mistral/config.json (a test checks they agree).</summary>
    private const string TinyNextTestJson = """
        {
          "architectures": [
            "LlavaNextForConditionalGeneration"
          ],
          "dtype": "float16",
          "image_grid_pinpoints": [
            [
              336,
              672
            ],
            [
              672,
              336
            ],
            [
              672,
              672
            ],
            [
              1008,
              336
            ],
            [
              336,
              1008
            ]
          ],
          "image_seq_length": 576,
          "image_token_index": 400,
          "model_type": "llava_next",
          "multimodal_projector_bias": true,
          "pad_token_id": 401,
          "projector_hidden_act": "gelu",
          "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 24,
            "hidden_act": "silu",
            "hidden_size": 96,
            "initializer_range": 0.02,
            "intermediate_size": 192,
            "max_position_embeddings": 8192,
            "model_type": "mistral",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
            "num_key_value_heads": 2,
            "pad_token_id": 401,
            "rms_norm_eps": 1e-05,
            "rope_parameters": {
              "rope_theta": 1000000.0,
              "rope_type": "default"
            },
            "sliding_window": 4096,
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": 402
          },
          "tie_word_embeddings": false,
          "transformers_version": "5.17.0",
          "vision_config": {
            "attention_dropout": 0.0,
            "hidden_act": "quick_gelu",
            "hidden_size": 64,
            "image_size": 336,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "layer_norm_eps": 1e-05,
            "model_type": "clip_vision_model",
            "num_attention_heads": 4,
            "num_channels": 3,
            "num_hidden_layers": 3,
            "patch_size": 14,
            "projection_dim": 64
          },
          "vision_feature_layer": -2,
          "vision_feature_select_strategy": "default"
        }
        """;
}
