using AutoPrune.Models.Llava;

namespace AutoPrune;

/// <summary>Facts about a loaded model.</summary>
/// <param name="VisualTokensPerImage">Visual tokens one image takes; for LLaVA-NeXT, where it depends on the image's size, the most it can be.</param>
/// <param name="GridSize">Patches per side of the vision tower's grid (of each view, for LLaVA-NeXT).</param>
public sealed record ModelInfo(string Directory, string Device, int DecoderLayers, int HiddenSize, int Heads, int KvHeads,
    int VisualTokensPerImage, int GridSize, int VocabSize, int ContextLength)
{
    /// <summary>config.json's model_type: "llava" (LLaVA-1.5) or "llava_next" (LLaVA-1.6, anyres).</summary>
    public string ModelType { get; init; } = Models.Llava.LlavaConfig.SupportedModelType;
    /// <summary>The text model's type: "llama" or "mistral".</summary>
    public string TextModelType { get; init; } = "llama";
    /// <summary>The prompt format conversations are written in.</summary>
    public PromptFormat PromptFormat { get; init; } = PromptFormat.Vicuna;
}
