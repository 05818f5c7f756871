namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL's tensor names. Canonical names are current transformers' (<c>model.visual.*</c>,
/// <c>model.language_model.*</c>, <c>lm_head.weight</c>); the released checkpoints' names (<c>visual.*</c>, <c>model.*</c>)
/// map to them as transformers' <c>_checkpoint_conversion_mapping</c> does, the first matching rule winning:
/// <c>^visual</c> → <c>model.visual</c>, <c>^model(?!\.(language_model|visual))</c> → <c>model.language_model</c>.
/// </summary>
internal static class Qwen2VLTensorNames
{
    public const string Visual = "model.visual.";
    public const string Language = "model.language_model.";
    public const string LmHead = "lm_head.weight";

    /// <summary>The canonical name of a checkpoint key (either layout); pass to <c>SafeTensorStore.Open</c>.</summary>
    public static string ToCanonical(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.StartsWith("visual", StringComparison.Ordinal))
            return string.Concat("model.visual", name.AsSpan("visual".Length));
        if (name.StartsWith("model", StringComparison.Ordinal))
        {
            var rest = name.AsSpan("model".Length);
            if (!rest.StartsWith(".language_model", StringComparison.Ordinal) && !rest.StartsWith(".visual", StringComparison.Ordinal))
                return string.Concat("model.language_model", rest);
        }
        return name;
    }
}
