using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// The tensors (canonical name and shape) a LLaVA model of a given config reads, in the order
/// <c>LlavaModel</c> reads them (then, for LLaVA-NeXT, <c>image_newline</c>), so sizes can be worked out without building the model (a 7B model needs
/// 28 GB as fp32). A test checks the list against what the model actually requests.
/// </summary>
internal static class LlavaTensorManifest
{
    /// <summary>
    /// The tensors the model reads; with <paramref name="checkpoint"/> also those a full checkpoint holds but LLaVA
    /// does not use (the CLIP layers from the feature layer on and post_layernorm), appended at the end.
    /// </summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Tensors(LlavaConfig config, bool checkpoint = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        var list = new List<(string, long[])>();
        void Add(string name, params long[] shape) => list.Add((name, shape));
        void Linear(string prefix, long @in, long @out, bool bias)
        {
            Add(prefix + ".weight", @out, @in);
            if (bias) Add(prefix + ".bias", @out);
        }
        void LayerNorm(string prefix, long dim)
        {
            Add(prefix + ".weight", dim);
            Add(prefix + ".bias", dim);
        }

        var v = config.VisionConfig;
        long vh = v.HiddenSize, vi = v.IntermediateSize;
        const string vp = "vision_tower.vision_model";
        Add($"{vp}.embeddings.patch_embedding.weight", vh, v.NumChannels, v.PatchSize, v.PatchSize);
        Add($"{vp}.embeddings.class_embedding", vh);
        Add($"{vp}.embeddings.position_embedding.weight", v.NumPositions, vh);
        LayerNorm($"{vp}.pre_layrnorm", vh);
        void VisionLayer(int i)
        {
            string lp = $"{vp}.encoder.layers.{i}";
            LayerNorm(lp + ".layer_norm1", vh);
            LayerNorm(lp + ".layer_norm2", vh);
            Linear(lp + ".self_attn.q_proj", vh, vh, true);
            Linear(lp + ".self_attn.k_proj", vh, vh, true);
            Linear(lp + ".self_attn.v_proj", vh, vh, true);
            Linear(lp + ".self_attn.out_proj", vh, vh, true);
            Linear(lp + ".mlp.fc1", vh, vi, true);
            Linear(lp + ".mlp.fc2", vi, vh, true);
        }
        int featureLayer = config.ResolvedFeatureLayerIndex;
        for (int i = 0; i < featureLayer; i++) VisionLayer(i);

        var t = config.TextConfig;
        long th = t.HiddenSize, ti = t.IntermediateSize, qd = (long)t.NumAttentionHeads * t.HeadDim, kvd = (long)t.NumKeyValueHeads * t.HeadDim;
        Linear("multi_modal_projector.linear_1", vh, th, config.MultimodalProjectorBias);
        Linear("multi_modal_projector.linear_2", th, th, config.MultimodalProjectorBias);

        const string tp = "language_model.model";
        Add($"{tp}.embed_tokens.weight", t.VocabSize, th);
        for (int i = 0; i < t.NumHiddenLayers; i++)
        {
            string lp = $"{tp}.layers.{i}";
            Add(lp + ".input_layernorm.weight", th);
            Add(lp + ".post_attention_layernorm.weight", th);
            Linear(lp + ".self_attn.q_proj", th, qd, t.AttentionBias);
            Linear(lp + ".self_attn.k_proj", th, kvd, t.AttentionBias);
            Linear(lp + ".self_attn.v_proj", th, kvd, t.AttentionBias);
            Linear(lp + ".self_attn.o_proj", qd, th, t.AttentionBias);
            Linear(lp + ".mlp.gate_proj", th, ti, t.MlpBias);
            Linear(lp + ".mlp.up_proj", th, ti, t.MlpBias);
            Linear(lp + ".mlp.down_proj", ti, th, t.MlpBias);
        }
        Add($"{tp}.norm.weight", th);
        if (!(config.TieWordEmbeddings || t.TieWordEmbeddings))
            Add("language_model.lm_head.weight", t.VocabSize, th);
        // LLaVA-NeXT: read after the backend by the (backend-independent) anyres assembly.
        if (config.IsAnyRes) Add(Models.Llava.AnyResAssembler.ImageNewlineTensor, th);

        if (checkpoint)
        {
            for (int i = Math.Max(featureLayer, 0); i < v.NumHiddenLayers; i++) VisionLayer(i);
            LayerNorm($"{vp}.post_layernorm", vh);
        }
        return list;
    }

    /// <summary>Total elements of <see cref="Tensors"/>.</summary>
    public static long ParameterCount(LlavaConfig config, bool checkpoint = false)
        => Tensors(config, checkpoint).Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d));
}
