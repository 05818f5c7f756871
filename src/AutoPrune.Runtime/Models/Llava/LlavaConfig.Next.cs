using System.Text.Json.Serialization;

using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// The LLaVA-NeXT (<c>model_type: llava_next</c>, Hugging Face <c>LlavaNextConfig</c>) part of the config: the
/// resolutions an image may be tiled at. Everything else (text and vision configs, projector, feature layer) is
/// shared with LLaVA-1.5; the learned <c>image_newline</c> vector is a tensor of the checkpoint, not a config field.
/// </summary>
internal sealed partial class LlavaConfig
{
    public const string NextModelType = "llava_next";

    /// <summary>Most tiles a pinpoint may have along one side, and in all (a bound on the visual tokens of one image).</summary>
    internal const int MaxTilesPerSide = 16, MaxTiles = 64;

    /// <summary>Hugging Face's default pinpoints (those of every released LLaVA-1.6 checkpoint), as [height, width].</summary>
    internal static int[][] DefaultImageGridPinpoints() => [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

    /// <summary>
    /// <c>image_grid_pinpoints</c>: the [height, width] resolutions an image may be tiled at, each a multiple of
    /// <c>vision_config.image_size</c> on both sides. As written in the file (null when absent; see
    /// <see cref="GridPinpoints"/>). Only <c>llava_next</c> uses it.
    /// </summary>
    [JsonPropertyName("image_grid_pinpoints")] public int[][]? ImageGridPinpoints { get; set; }

    /// <summary>True for LLaVA-NeXT: an image becomes a base view plus tiles, and its token count depends on its size.</summary>
    [JsonIgnore] public bool IsAnyRes => ModelType == NextModelType;

    /// <summary>The pinpoints in effect, as (height, width): the file's, or Hugging Face's default when absent.</summary>
    [JsonIgnore]
    public IReadOnlyList<(int Height, int Width)> GridPinpoints
        => (ImageGridPinpoints ?? DefaultImageGridPinpoints()).Select(p => (p[0], p[1])).ToArray();

    private void ValidateNext(ConfigValidator v)
    {
        // Hugging Face lays each tile's features out as a patch grid, which the [CLS] row would break.
        if (VisionFeatureSelectStrategy != "default")
            v.Fail("vision_feature_select_strategy", VisionFeatureSelectStrategy, "'default' for llava_next (its tiles are laid out as patch grids, without [CLS])");
        var pinpoints = ImageGridPinpoints ?? DefaultImageGridPinpoints();
        if (pinpoints.Length == 0)
            v.Fail("image_grid_pinpoints", "[]", "a non-empty list of [height, width] resolutions");
        int tile = VisionConfig.ImageSize;
        for (int i = 0; i < pinpoints.Length; i++)
        {
            string field = $"image_grid_pinpoints[{i}]";
            var p = pinpoints[i];
            if (p is not { Length: 2 })
                v.Fail(field, p is null ? null : "[" + string.Join(", ", p) + "]", "a [height, width] pair");
            string shown = $"[{p[0]}, {p[1]}]";
            if (p[0] <= 0 || p[1] <= 0 || p[0] % tile != 0 || p[1] % tile != 0)
                v.Fail(field, shown, $"positive multiples of the tile size (vision_config.image_size = {tile}) on both sides");
            int rows = p[0] / tile, cols = p[1] / tile;
            if (rows > MaxTilesPerSide || cols > MaxTilesPerSide || rows * cols > MaxTiles)
                v.Fail(field, shown, $"at most {MaxTilesPerSide} tiles of {tile} px per side and {MaxTiles} in all");
        }
    }
}
