using System.Text.Json.Serialization;

namespace AutoPrune.Loading.Images;

/// <summary>
/// <c>preprocessor_config.json</c> of a CLIP image processor (the <c>CLIPImageProcessor</c> of
/// Hugging Face transformers). Property initialisers are <c>CLIPImageProcessor</c>'s own defaults,
/// so a key the file leaves out means what it means in transformers.
/// </summary>
internal sealed class ClipPreprocessorConfig
{
    /// <summary>OpenAI CLIP's normalisation mean (OPENAI_CLIP_MEAN).</summary>
    public static readonly float[] OpenAiClipMean = [0.48145466f, 0.4578275f, 0.40821073f];

    /// <summary>OpenAI CLIP's normalisation std (OPENAI_CLIP_STD).</summary>
    public static readonly float[] OpenAiClipStd = [0.26862954f, 0.26130258f, 0.27577711f];

    [JsonPropertyName("do_resize")] public bool DoResize { get; set; } = true;

    /// <summary><c>{"shortest_edge": N}</c> (resize the shorter side to N, keep the aspect ratio) or <c>{"height", "width"}</c>.</summary>
    [JsonPropertyName("size")] public ImageSizeSpec Size { get; set; } = new() { ShortestEdge = 224 };

    /// <summary>PIL resampling filter: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic (CLIP), 4 box, 5 hamming.</summary>
    [JsonPropertyName("resample")] public int Resample { get; set; } = 3;

    [JsonPropertyName("do_center_crop")] public bool DoCenterCrop { get; set; } = true;

    [JsonPropertyName("crop_size")] public ImageSizeSpec CropSize { get; set; } = new() { Height = 224, Width = 224 };

    [JsonPropertyName("do_rescale")] public bool DoRescale { get; set; } = true;

    [JsonPropertyName("rescale_factor")] public double RescaleFactor { get; set; } = 1.0 / 255.0;

    [JsonPropertyName("do_normalize")] public bool DoNormalize { get; set; } = true;

    [JsonPropertyName("image_mean")] public float[] ImageMean { get; set; } = (float[])OpenAiClipMean.Clone();

    [JsonPropertyName("image_std")] public float[] ImageStd { get; set; } = (float[])OpenAiClipStd.Clone();

    [JsonPropertyName("do_convert_rgb")] public bool DoConvertRgb { get; set; } = true;

    /// <summary>LLaVA-NeXT's processor (<c>LlavaNextImageProcessor</c>) repeats the model's tiling resolutions here, as [height, width] pairs.</summary>
    [JsonPropertyName("image_grid_pinpoints")] public int[][]? ImageGridPinpoints { get; set; }

    /// <summary>A size in <c>preprocessor_config.json</c>: <c>shortest_edge</c>, or <c>height</c> and <c>width</c>.</summary>
    public sealed class ImageSizeSpec
    {
        [JsonPropertyName("shortest_edge")] public int? ShortestEdge { get; set; }
        [JsonPropertyName("height")] public int? Height { get; set; }
        [JsonPropertyName("width")] public int? Width { get; set; }

        public override string ToString() =>
            ShortestEdge is int s ? $"shortest_edge={s}" : $"{Height}x{Width}";
    }
}
