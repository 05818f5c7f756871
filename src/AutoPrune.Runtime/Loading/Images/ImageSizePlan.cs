namespace AutoPrune.Loading.Images;

/// <summary>
/// The size of an image after each preprocessing stage (pad to square, resize, centre crop), computed with checked
/// 64-bit arithmetic and checked against the pixel limit before any buffer of that stage exists, so a small file with
/// an extreme shape (a 1 × 40,000 PNG padded to a square) is refused with a message instead of allocating gigabytes.
/// </summary>
internal readonly record struct ImageSizePlan(int PaddedSide, int ResizedWidth, int ResizedHeight, int OutputWidth, int OutputHeight)
{
    /// <summary>Most pixels one RGBA buffer (4 bytes a pixel) can hold in a .NET array; MaxPixels never goes above it.</summary>
    public static readonly long MaxBufferPixels = Array.MaxLength / 4;

    /// <exception cref="ImageDecodeException">A stage would need more than <paramref name="maxPixels"/> pixels.</exception>
    public static ImageSizePlan Create(int width, int height, bool padToSquare, ClipPreprocessorConfig c, long maxPixels, string? path = null)
    {
        maxPixels = Math.Min(maxPixels, MaxBufferPixels);
        if (width <= 0 || height <= 0) throw new ImageDecodeException($"The image has a zero size ({width}x{height}).", path);
        if ((long)width * height > maxPixels)
            throw new ImageDecodeException($"The image is {width}x{height} = {(long)width * height:N0} pixels, more than the limit of {maxPixels:N0} (MaxPixels).", path);
        int w = width, h = height, padded = 0;
        if (padToSquare && w != h)
        {
            int n = Math.Max(w, h);
            long square = (long)n * n;
            if (square > maxPixels)
                throw new ImageDecodeException($"Padding the {width}x{height} image to a square (PadToSquare) needs {n}x{n} = {square:N0} pixels, more than the limit of {maxPixels:N0} (MaxPixels).", path);
            padded = w = h = n;
        }
        int rw = w, rh = h;
        if (c.DoResize)
        {
            long nh, nw;
            (nh, nw) = ResizeOutputSizeLong(h, w, c);
            // The horizontal pass runs first, so its nw x h buffer counts too.
            long resized = Math.Max(nw * nh, nw * h);
            if (nw > int.MaxValue || nh > int.MaxValue || resized > maxPixels)
                throw new ImageDecodeException($"The {width}x{height} image's aspect ratio is too extreme: resizing it to {nw}x{nh} needs {resized:N0} pixels, more than the limit of {maxPixels:N0} (MaxPixels).", path);
            (rw, rh) = ((int)nw, (int)nh);
        }
        int ow = rw, oh = rh;
        if (c.DoCenterCrop)
        {
            (oh, ow) = (c.CropSize.Height!.Value, c.CropSize.Width!.Value);
            if ((long)ow * oh > maxPixels)
                throw new ImageDecodeException($"The crop size {ow}x{oh} is more than the limit of {maxPixels:N0} pixels (MaxPixels).", path);
        }
        return new ImageSizePlan(padded, rw, rh, ow, oh);
    }

    // transformers.image_transforms.get_resize_output_image_size(default_to_square=False) / fixed size, in 64 bits.
    internal static (long H, long W) ResizeOutputSizeLong(long height, long width, ClipPreprocessorConfig c)
    {
        if (c.Size?.ShortestEdge is int s)
        {
            if (s <= 0) throw new ArgumentException($"size.shortest_edge must be positive (got {s}).");
            bool wIsShort = width <= height;
            long shortSide = wIsShort ? width : height, longSide = wIsShort ? height : width;
            long newLong = (long)((double)checked(s * longSide) / shortSide);
            return wIsShort ? (newLong, s) : (s, newLong);
        }
        if (c.Size?.Height is int h && c.Size.Width is int w && h > 0 && w > 0) return (h, w);
        throw new ArgumentException($"size must have shortest_edge or height and width (got {c.Size}).");
    }
}
