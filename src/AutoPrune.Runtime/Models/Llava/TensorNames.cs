namespace AutoPrune.Models.Llava;

/// <summary>
/// The one place where checkpoint key names are renamed. Canonical names are the legacy
/// llava-hf ones (<c>vision_tower.vision_model...</c>, <c>multi_modal_projector...</c>,
/// <c>language_model.model...</c>, <c>language_model.lm_head...</c>); newer checkpoints
/// (transformers >= 4.52) use a <c>model.</c> prefix and a top-level <c>lm_head</c>, and
/// transformers 5 saves the CLIP tower without its <c>vision_model.</c> level
/// (<c>vision_tower.encoder...</c>, as in samples/models/shapes-llava-tiny); all map here. LLaVA-NeXT adds one
/// tensor, <c>image_newline</c> (newer layout: <c>model.image_newline</c>).
/// </summary>
internal static class TensorNames
{
    private static readonly (string From, string To)[] PrefixMap =
    {
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.image_newline", "image_newline"),
    };

    /// <summary>Maps a checkpoint key (legacy or newer layout) to its canonical name.</summary>
    private const string VisionTower = "vision_tower.";
    private const string VisionModel = "vision_tower.vision_model.";

    /// <summary>A LLaVA checkpoint's safetensors, under these canonical names.</summary>
    public static Loading.SafeTensorStore Open(string folder, InputFileLimits? limits = null) => Loading.SafeTensorStore.Open(folder, limits, ToCanonical);

    public static string ToCanonical(string name)
    {
        foreach (var (from, to) in PrefixMap)
        {
            if (name.StartsWith(from, StringComparison.Ordinal))
            {
                name = string.Concat(to, name.AsSpan(from.Length));
                break;
            }
        }
        if (name.StartsWith(VisionTower, StringComparison.Ordinal) && !name.StartsWith(VisionModel, StringComparison.Ordinal))
            name = string.Concat(VisionModel, name.AsSpan(VisionTower.Length));
        return name;
    }
}
