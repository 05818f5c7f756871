namespace AutoPrune.Loading.Images;

/// <summary>
/// Range checks of <c>preprocessor_config.json</c>, and its agreement with the vision tower, done at load so that a bad
/// value fails there with the field named instead of at the first request (or as an empty answer).
/// </summary>
internal static class PreprocessorConfigChecks
{
    /// <summary>Largest side accepted for size and crop_size: the same bound as vision_config.image_size.</summary>
    public const int MaxSide = 16384;

    /// <summary>Largest |value| a normalised pixel may take (CLIP's lie within ±3; unnormalised bytes reach 255).</summary>
    public const float MaxPixelValue = 1e4f;

    /// <exception cref="ArgumentException">A field out of range, named.</exception>
    public static void Validate(ClipPreprocessorConfig c)
    {
        if (c.ImageMean is not { Length: 3 } || c.ImageStd is not { Length: 3 })
            throw new ArgumentException("image_mean and image_std must have 3 values (RGB).", nameof(c));
        for (int i = 0; i < 3; i++)
        {
            if (!float.IsFinite(c.ImageMean[i])) throw new ArgumentException(FormattableString.Invariant($"image_mean[{i}] = {c.ImageMean[i]} is not a finite number."), nameof(c));
            if (!(float.IsFinite(c.ImageStd[i]) && c.ImageStd[i] > 0)) throw new ArgumentException(FormattableString.Invariant($"image_std values must be positive finite numbers (image_std[{i}] = {c.ImageStd[i]})."), nameof(c));
        }
        if (!(double.IsFinite(c.RescaleFactor) && c.RescaleFactor > 0))
            throw new ArgumentException(FormattableString.Invariant($"rescale_factor = {c.RescaleFactor} must be a positive finite number (1/255 for CLIP)."), nameof(c));
        if (c.Resample is < 0 or > 5)
            throw new ArgumentException($"resample {c.Resample} is not a PIL filter (0..5).", nameof(c));
        if (c.DoResize)
        {
            if (c.Size is null) throw new ArgumentException("do_resize is true but size is missing.", nameof(c));
            Side("size.shortest_edge", c.Size.ShortestEdge);
            Side("size.height", c.Size.Height);
            Side("size.width", c.Size.Width);
        }
        if (c.DoCenterCrop)
        {
            if (c.CropSize?.Height is not int h || c.CropSize.Width is not int w)
                throw new ArgumentException($"crop_size must have positive height and width (got {c.CropSize}).", nameof(c));
            Side("crop_size.height", h);
            Side("crop_size.width", w);
        }

        static void Side(string field, int? value)
        {
            if (value is int v && (v < 1 || v > MaxSide))
                throw new ArgumentException($"{field} = {v} is out of range; expected 1..{MaxSide}.", nameof(c));
        }
    }

    /// <summary>Every byte value must map to a finite, moderate float: rescale and std together can overflow.</summary>
    public static void CheckPixelValues(float[][] lut)
    {
        for (int ch = 0; ch < lut.Length; ch++)
            for (int v = 0; v < lut[ch].Length; v++)
                if (!(MathF.Abs(lut[ch][v]) <= MaxPixelValue))
                    throw new ArgumentException(
                        $"rescale_factor, image_mean and image_std turn byte value {v} of channel {ch} into {lut[ch][v].ToString(System.Globalization.CultureInfo.InvariantCulture)}; normalised pixels must be finite and within ±{MaxPixelValue:0}.");
    }

    /// <summary>The preprocessing must produce the square the vision tower was trained on, for every image.</summary>
    /// <exception cref="ModelLoadException">It would not, naming both files' values.</exception>
    public static void MatchVisionTower(ImagePreprocessor pre, int imageSize, string path)
    {
        if (pre.OutputHeight < 0)
            throw new ModelLoadException(
                $"preprocessor_config.json: do_center_crop is false and size is {pre.Config.Size}, so the output size would depend on each image; " +
                $"the vision tower needs exactly {imageSize}x{imageSize} (config.json vision_config.image_size). Use do_center_crop with crop_size {imageSize}.", path);
        if (pre.OutputHeight != imageSize || pre.OutputWidth != imageSize)
            throw new ModelLoadException(
                $"preprocessor_config.json produces {pre.OutputWidth}x{pre.OutputHeight} images (crop_size {pre.Config.CropSize}), but the vision tower " +
                $"needs {imageSize}x{imageSize} (config.json vision_config.image_size).", path);
    }
}
