using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Loading;
using AutoPrune.Tests.Reliability;
using SkiaSharp;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>Qwen2.5-VL preprocessing against the fixture, bit for bit, and its limits.</summary>
public class Qwen2VLImageProcessorTests
{
    private static readonly Qwen2VLImageProcessor Processor =
        Qwen2VLImageProcessor.Load(QwenFixture.Model(QwenFixture.Current), Qwen2VLConfig.Load(QwenFixture.Model(QwenFixture.Current)).Vision);

    [Theory]
    [MemberData(nameof(QwenFixture.Images), MemberType = typeof(QwenFixture))]
    public void Every_image_matches_the_reference_at_every_stage(string image)
    {
        var c = QwenFixture.OnePerImage(QwenFixture.Current).Single(x => x.Image == image);
        var (rgb, w, h) = ImagePreprocessor.DecodeRgb(File.ReadAllBytes(QwenFixture.Image(image)), long.MaxValue, image);
        Assert.Equal(c.ImageSizeWh!, new[] { w, h });
        // The resized uint8 image, as PIL's BICUBIC resize gives it.
        var (resized, rw, rh) = Processor.Resize(rgb, w, h);
        Assert.Equal(c.ResizedHw!, new[] { rh, rw });
        Assert.Equal(c.ResizedRgbSha256, QwenFixture.Sha256(resized));
        // The patches.
        var p = Processor.PreprocessRgb(rgb, w, h);
        Assert.Equal(c.GridThw!, new[] { p.GridT, p.GridH, p.GridW });
        Assert.Equal(c.PixelShape!, new[] { p.Patches, p.PixelValues.Length / p.Patches });
        Assert.Equal(c.NumImageTokens, p.MergedTokens);
        Assert.Equal(c.PixelSha256, QwenFixture.Sha256(p.PixelValues));
        Assert.Equal(c.PixelFirst8!, p.PixelValues[..8]);
        Assert.Equal(c.PixelSum, p.PixelValues.Sum(v => (double)v), 6);
        // Decoding from the file gives the same.
        Assert.Equal(p.PixelValues, QwenFixture.Preprocess(image).PixelValues);
    }

    [Fact]
    public void The_stored_pixel_values_tensor_is_equal_bit_for_bit()
    {
        var (shape, values, grid) = QwenFixture.PixelValues1000x300();
        var p = QwenFixture.Preprocess("images/03_1000x300.png");
        Assert.Equal([928, 1176], shape);
        Assert.Equal([1L, 16, 58], grid);
        Assert.Equal((1, 16, 58), p.Grid);
        Assert.Equal(values.Length, p.PixelValues.Length);
        for (int i = 0; i < values.Length; i++)
            if (BitConverter.SingleToInt32Bits(values[i]) != BitConverter.SingleToInt32Bits(p.PixelValues[i]))
                Assert.Fail($"pixel_values[{i / 1176}, {i % 1176}] = {p.PixelValues[i]:R}, reference {values[i]:R}");
    }

    [Theory]
    [InlineData(336, 336, 336, 336)]
    [InlineData(480, 640, 364, 504)] // h, w of 640x480
    [InlineData(300, 1000, 224, 812)]
    [InlineData(60, 50, 56, 56)]
    [InlineData(720, 1280, 336, 588)]
    [InlineData(42, 70, 56, 56)]   // 42/28 = 1.5 -> 2 and 70/28 = 2.5 -> 2: Python's round is half to even
    [InlineData(98, 98, 112, 112)] // 3.5 -> 4
    [InlineData(1, 1, 56, 56)]     // tiny: grown to min_pixels
    [InlineData(10, 1000, 28, 560)]
    [InlineData(20000, 100, 6328, 28)] // at the aspect limit, the max(factor, ...) guard keeps a side of 28
    public void Smart_resize_follows_transformers(int h, int w, int eh, int ew)
        => Assert.Equal((eh, ew), Qwen2VLImageProcessor.SmartResize(h, w, 28, 3136, 200704));

    [Fact]
    public void Aspect_ratios_beyond_200_are_refused_before_decoding()
    {
        var e = Assert.Throws<ImageDecodeException>(() => Processor.Preprocess(FuzzSupport.PngHeader(201, 1), "thin.png"));
        Assert.Contains("201x1", e.Message);
        Assert.Contains("more than 200", e.Message);
        Assert.Contains("thin.png", e.Message);
    }

    [Fact]
    public void Huge_images_are_refused_from_the_header()
    {
        var e = Assert.Throws<ImageDecodeException>(() => Processor.Preprocess(FuzzSupport.PngHeader(100_000, 100_000)));
        Assert.Contains("10,000,000,000", e.Message);
        var small = new Qwen2VLImageProcessor(new Qwen2VLPreprocessorConfig()) { MaxPixels = 1000 };
        Assert.Contains("MaxPixels", Assert.Throws<ImageDecodeException>(() => small.PreprocessFile(QwenFixture.Image("images/06_50x60.png"))).Message);
    }

    [Fact]
    public void Size_alone_gives_the_pixel_bounds_and_min_max_pixels_win()
    {
        var onlySize = Load("""{"size": {"shortest_edge": 3136, "longest_edge": 50176}}""");
        Assert.Equal((3136, 50176), (onlySize.Config.ResolvedMinPixels, onlySize.Config.ResolvedMaxPixels));
        Assert.Equal((112, 392), onlySize.ResizedSize(1000, 300)); // smaller than with the fixture's 200704
        var both = Load("""{"size": {"shortest_edge": 3136, "longest_edge": 50176}, "max_pixels": 200704, "min_pixels": 3136}""");
        Assert.Equal((224, 812), both.ResizedSize(1000, 300));
        var defaults = Load("{}");
        Assert.Equal((3136L, 28L * 28 * 1280), (defaults.Config.ResolvedMinPixels, defaults.Config.ResolvedMaxPixels));
    }

    private static Qwen2VLImageProcessor Load(string json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("preprocessor_config.json"), json);
        return Qwen2VLImageProcessor.Load(dir.Path);
    }

    [Theory]
    [InlineData("""{"min_pixels": 500000, "max_pixels": 200704}""", "min_pixels = 500,000 is more than max_pixels = 200,704")]
    [InlineData("""{"max_pixels": 100}""", "max_pixels = 100 is out of range")]
    [InlineData("""{"size": {"height": 224, "width": 224}}""", "size has 'height', 'width'")]
    [InlineData("""{"image_std": [0.2, 0, 0.2]}""", "image_std[1] = 0")]
    [InlineData("""{"resample": 9}""", "resample = 9")]
    [InlineData("""{"patch_size": 16}""", "patch_size = 16, but config.json has vision_config.patch_size = 14")]
    [InlineData("""{"merge_size": 3}""", "merge_size = 3, but config.json has vision_config.spatial_merge_size = 2")]
    [InlineData("""{"image_mean": [0.5, 0.5]}""", "3 values")]
    [InlineData("""{"rescale_factor": "x"}""", "not valid")]
    public void Bad_preprocessor_configs_name_the_field(string json, string expected)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("preprocessor_config.json"), json);
        var vision = Qwen2VLConfig.Load(QwenFixture.Model(QwenFixture.Current)).Vision;
        var e = Assert.Throws<ModelLoadException>(() => Qwen2VLImageProcessor.Load(dir.Path, vision));
        Assert.Contains(expected, e.Message);
        Assert.Contains(dir.File("preprocessor_config.json"), e.Message);
    }

    [Fact]
    public void Patches_are_in_merge_order_with_the_frame_repeated()
    {
        // A 56x56 image whose pixel (x, y) has R = x, G = y, B = 7: every patch row must hold its own 14x14 block twice.
        const int side = 56;
        var rgb = new byte[side * side * 3];
        for (int y = 0; y < side; y++)
            for (int x = 0; x < side; x++) { rgb[(y * side + x) * 3] = (byte)x; rgb[(y * side + x) * 3 + 1] = (byte)y; rgb[(y * side + x) * 3 + 2] = 7; }
        var raw = new Qwen2VLImageProcessor(new Qwen2VLPreprocessorConfig { DoRescale = false, DoNormalize = false });
        var p = raw.PreprocessRgb(rgb, side, side);
        Assert.Equal((1, 4, 4), p.Grid);
        for (int row = 0; row < 16; row++)
        {
            // row = ((bh * 2 + bw) * 2 + mh) * 2 + mw
            int mw = row % 2, mh = row / 2 % 2, bw = row / 4 % 2, bh = row / 8;
            int y0 = (bh * 2 + mh) * 14, x0 = (bw * 2 + mw) * 14;
            for (int t = 0; t < 2; t++)
                for (int py = 0; py < 14; py++)
                    for (int px = 0; px < 14; px++)
                    {
                        int basis = row * 1176 + t * 196 + py * 14 + px;
                        Assert.Equal(x0 + px, p.PixelValues[basis]);              // channel 0
                        Assert.Equal(y0 + py, p.PixelValues[basis + 392]);        // channel 1 (after 2 frames of 196)
                        Assert.Equal(7, p.PixelValues[basis + 784]);              // channel 2
                    }
        }
    }

    [Fact]
    public void Alpha_is_dropped_keeping_the_colour()
    {
        using var bmp = new SKBitmap(new SKImageInfo(60, 40, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bmp.Erase(new SKColor(10, 200, 30, 128));
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        var p = Processor.Preprocess(data.ToArray());
        Assert.Equal((1, 4, 6), p.Grid); // 60x40 -> 28x56 is under min_pixels, grown to 84x56
        float r = (float)(10 * (1 / 255.0)), expected = (r - 0.48145466f) / 0.26862954f;
        Assert.Equal(expected, p.PixelValues[0]);
    }
}

internal static partial class QwenFixture
{
    private static readonly Dictionary<string, Qwen2VLImage> Preprocessed = new();

    /// <summary>An image preprocessed by the fixture's processor (cached).</summary>
    public static Qwen2VLImage Preprocess(string image)
    {
        lock (Preprocessed)
        {
            if (!Preprocessed.TryGetValue(image, out var p))
                Preprocessed[image] = p = Qwen2VLImageProcessor.Load(Model(Current)).PreprocessFile(Image(image));
            return p;
        }
    }
}
