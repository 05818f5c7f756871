using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using SkiaSharp;
using Xunit;

namespace AutoPrune.Tests.TokenizerAndImages;

public class ImagePreprocessorTests
{
    private static readonly float[] Mean = [0.48145467042922974f, 0.45782750844955444f, 0.40821072459220886f];
    private static readonly float[] Std = [0.2686295509338379f, 0.2613025903701782f, 0.27577710151672363f];
    private const int S = 336;

    private static ImagePreprocessor Pre() => ImagePreprocessor.Load(RepoPaths.TinyModel);
    private static string Image(int i) => Path.Combine(RepoPaths.DevSet, "images", $"{i:D4}.png");

    private static float Expected(byte v, int ch) => ((float)(v * (1.0 / 255.0)) - Mean[ch]) / Std[ch];

    [Fact]
    public void Config_is_read_from_the_fixture()
    {
        var c = Pre().Config;
        Assert.Equal(336, c.Size.ShortestEdge);
        Assert.Equal(336, c.CropSize.Height);
        Assert.Equal(336, c.CropSize.Width);
        Assert.Equal(3, c.Resample);
        Assert.Equal(Mean, c.ImageMean);
        Assert.Equal(Std, c.ImageStd);
        Assert.True(c.DoConvertRgb && c.DoNormalize && c.DoRescale && c.DoCenterCrop && c.DoResize);
        Assert.Equal((122, 116, 104), ((int)Pre().PadColor.R, (int)Pre().PadColor.G, (int)Pre().PadColor.B));
    }

    [Fact]
    public void Missing_config_gives_clip_defaults_sized_from_config_json()
    {
        string dir = RepoPaths.NewTempDir();
        try
        {
            var p = ImagePreprocessor.Load(dir);
            Assert.Equal(224, p.OutputHeight);
            Assert.Equal(ClipPreprocessorConfig.OpenAiClipMean, p.Config.ImageMean);
            File.Copy(Path.Combine(RepoPaths.TinyModel, "config.json"), Path.Combine(dir, "config.json"));
            Assert.Equal(336, ImagePreprocessor.Load(dir).OutputWidth);
            File.WriteAllText(Path.Combine(dir, "preprocessor_config.json"), "{ \"image_mean\": 3 }");
            var ex = Assert.Throws<ModelLoadException>(() => ImagePreprocessor.Load(dir));
            Assert.EndsWith("preprocessor_config.json", ex.FilePath);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    public void Fixture_image_is_exactly_rescaled_and_normalised(int index)
    {
        // The fixture images are 336x336: no resize, no crop; each value is (byte/255 - mean)/std.
        byte[] file = File.ReadAllBytes(Image(index));
        var (w, h, rgb) = MiniPng.DecodeRgb8(file);
        Assert.Equal((S, S), (w, h));
        float[] x = Pre().Preprocess(file);
        Assert.Equal(3 * S * S, x.Length);
        foreach (var (px, py) in new[] { (0, 0), (335, 335), (100, 200), (168, 168), (17, 300), (250, 3) })
            for (int ch = 0; ch < 3; ch++)
                Assert.Equal(Expected(rgb[(py * S + px) * 3 + ch], ch), x[ch * S * S + py * S + px]);
        for (int i = 0; i < S * S; i++)
            for (int ch = 0; ch < 3; ch++)
                Assert.Equal(Expected(rgb[i * 3 + ch], ch), x[ch * S * S + i]);
        // Same through the file entry point, and padToSquare is a no-op for a square image.
        Assert.Equal(x, Pre().PreprocessFile(Image(index), padToSquare: true));
    }

    [Fact]
    public void Hand_computed_pixel_value()
    {
        // A 336x336 PNG with a known colour at (5, 7): (200/255 - 0.48145467) / 0.26862955 = 1.12735...
        using var bmp = new SKBitmap(new SKImageInfo(S, S, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bmp.Erase(new SKColor(0, 128, 255));
        bmp.SetPixel(5, 7, new SKColor(200, 10, 30));
        float[] x = Pre().Preprocess(Encode(bmp, SKEncodedImageFormat.Png));
        Assert.Equal((200 / 255.0 - 0.48145467042922974) / 0.2686295509338379, x[0 * S * S + 7 * S + 5], 5);
        Assert.Equal((10 / 255.0 - 0.45782750844955444) / 0.2613025903701782, x[1 * S * S + 7 * S + 5], 5);
        Assert.Equal((30 / 255.0 - 0.40821072459220886) / 0.27577710151672363, x[2 * S * S + 7 * S + 5], 5);
        Assert.Equal((255 / 255.0 - 0.40821072459220886) / 0.27577710151672363, x[2 * S * S], 5);
    }

    public static TheoryData<int, int, SKEncodedImageFormat> Formats => new()
    {
        { 1600, 1200, SKEncodedImageFormat.Jpeg },
        { 900, 3000, SKEncodedImageFormat.Webp },
        { 500, 200, SKEncodedImageFormat.Png },
        { 100, 60, SKEncodedImageFormat.Jpeg },
    };

    [Theory]
    [MemberData(nameof(Formats))]
    public void Any_size_and_format_comes_out_3x336x336(int w, int h, SKEncodedImageFormat format)
    {
        byte[] data = Encode(Gradient(w, h), format);
        foreach (bool pad in new[] { false, true })
        {
            float[] x = Pre().Preprocess(data, pad);
            Assert.Equal(3 * S * S, x.Length);
            Assert.All(x, v => Assert.True(float.IsFinite(v) && v > -2.5f && v < 2.8f));
        }
    }

    [Fact]
    public void Pad_to_square_puts_the_mean_colour_in_the_pad()
    {
        // 600x300 red image: padded to 600x600 with (122,116,104) above and below, then resized to 336.
        using var bmp = new SKBitmap(new SKImageInfo(600, 300, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bmp.Erase(new SKColor(255, 0, 0));
        byte[] png = Encode(bmp, SKEncodedImageFormat.Png);
        float[] x = Pre().Preprocess(png, padToSquare: true);
        var pad = new byte[] { 122, 116, 104 };
        foreach (var (px, py) in new[] { (0, 0), (335, 0), (168, 40), (10, 335), (200, 300) })
            for (int ch = 0; ch < 3; ch++)
                Assert.Equal(Expected(pad[ch], ch), x[ch * S * S + py * S + px]);
        // The image itself is in the middle band (rows 84..251).
        Assert.Equal(Expected(255, 0), x[0 * S * S + 168 * S + 168]);
        Assert.Equal(Expected(0, 1), x[1 * S * S + 168 * S + 168]);
        // Without padding the centre crop of a uniform red image is all red.
        float[] y = Pre().Preprocess(png);
        Assert.Equal(Expected(255, 0), y[0]);
        Assert.Equal(Expected(0, 2), y[2 * S * S + S * S - 1]);
    }

    [Fact]
    public void Alpha_is_dropped_like_pil_convert_rgb()
    {
        using var bmp = new SKBitmap(new SKImageInfo(S, S, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bmp.Erase(new SKColor(40, 80, 120, 128));
        float[] x = Pre().Preprocess(Encode(bmp, SKEncodedImageFormat.Png));
        Assert.Equal(Expected(40, 0), x[0]);
        Assert.Equal(Expected(80, 1), x[S * S]);
        Assert.Equal(Expected(120, 2), x[2 * S * S]);
    }

    [Fact]
    public void Resize_follows_transformers_sizes_and_pil_resampling()
    {
        var c = Pre().Config;
        Assert.Equal((336, 448), ImagePreprocessor.ResizeOutputSize(1200, 1600, c));
        Assert.Equal((1120, 336), ImagePreprocessor.ResizeOutputSize(3000, 900, c));
        Assert.Equal((336, 840), ImagePreprocessor.ResizeOutputSize(200, 500, c));
        Assert.Equal((336, 559), ImagePreprocessor.ResizeOutputSize(601, 1000, c)); // int(336*1000/601) = 559
        // Unchanged size: the very same bytes.
        byte[] img = new byte[5 * 4 * 3];
        new Random(1).NextBytes(img);
        Assert.Same(img, PilResampler.Resize(img, 5, 4, 5, 4, 3));
        // A constant image stays constant under bicubic up- and downscaling.
        byte[] flat = Enumerable.Repeat((byte)77, 50 * 30 * 3).ToArray();
        Assert.All(PilResampler.Resize(flat, 50, 30, 17, 71, 3), b => Assert.Equal(77, b));
        // Box filter halving = mean of each pair, rounded half up (Pillow's fixed point).
        byte[] row = [10, 20, 30, 11, 21, 31, 0, 255, 100, 1, 0, 101];
        Assert.Equal(new byte[] { 11, 21, 31, 1, 128, 101 }, PilResampler.Resize(row, 4, 1, 2, 1, 4));
        // Bicubic 2x upscale of a step [0, 255], computed by hand with Pillow's formulas: for output 1,
        // centre 0.75, taps k(0.25)=0.8671875, k(0.75)=0.2265625, normalised 0.2071429, fixed point
        // (255 * 868820 + 2^21) >> 22 = 53; output 0 has a negative weight on 255 and clips to 0.
        byte[] step = [0, 0, 0, 255, 255, 255];
        byte[] up = PilResampler.Resize(step, 2, 1, 4, 1, 3);
        Assert.Equal(new byte[] { 0, 53, 202, 255 }, new[] { up[0], up[3], up[6], up[9] });
        for (int i = 0; i < 4; i++) Assert.Equal(255, up[i * 3] + up[(3 - i) * 3]);
    }

    [Fact]
    public void Bad_data_gives_ImageDecodeException()
    {
        var p = Pre();
        var e1 = Assert.Throws<ImageDecodeException>(() => p.Preprocess(ReadOnlySpan<byte>.Empty));
        Assert.Contains("empty", e1.Message);
        var e2 = Assert.Throws<ImageDecodeException>(() => p.Preprocess(Encoding.ASCII.GetBytes("definitely not an image, just some text bytes")));
        Assert.Contains("format", e2.Message);
        Assert.Throws<ImageDecodeException>(() => p.Preprocess(new byte[1000]));
        byte[] png = File.ReadAllBytes(Image(0));
        var e3 = Assert.Throws<ImageDecodeException>(() => p.Preprocess(png.AsSpan(0, png.Length / 2)));
        Assert.Contains("truncated", e3.Message);
        Assert.Throws<ImageDecodeException>(() => p.Preprocess(MiniPng.HeaderOnly(0, 0)));
        // A decompression bomb: a few bytes declaring 20000x20000 pixels.
        var e4 = Assert.Throws<ImageDecodeException>(() => p.Preprocess(MiniPng.HeaderOnly(20000, 20000)));
        Assert.Contains("20000", e4.Message);
        // The limit is checked from the header: a real image over a lowered limit.
        var small = new ImagePreprocessor(p.Config) { MaxPixels = 1000 };
        var e5 = Assert.Throws<ImageDecodeException>(() => small.Preprocess(png));
        Assert.Contains("MaxPixels", e5.Message);
        // Files: the path is named.
        string dir = RepoPaths.NewTempDir();
        try
        {
            string f = Path.Combine(dir, "broken.png");
            File.WriteAllBytes(f, png.AsSpan(0, 100).ToArray());
            var e6 = Assert.Throws<ImageDecodeException>(() => p.PreprocessFile(f));
            Assert.Equal(f, e6.FilePath);
            Assert.Contains(f, e6.Message);
            Assert.IsAssignableFrom<ArgumentException>(e6);
            Assert.Throws<ImageDecodeException>(() => p.PreprocessFile(Path.Combine(dir, "missing.png")));
        }
        finally { Directory.Delete(dir, true); }
    }

    private static SKBitmap Gradient(int w, int h)
    {
        var bmp = new SKBitmap(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Opaque));
        using var canvas = new SKCanvas(bmp);
        using var paint = new SKPaint { Shader = SKShader.CreateLinearGradient(new SKPoint(0, 0), new SKPoint(w, h), [SKColors.Red, SKColors.Blue, SKColors.Yellow], SKShaderTileMode.Clamp) };
        canvas.DrawRect(0, 0, w, h, paint);
        using var p2 = new SKPaint { Color = SKColors.Green };
        canvas.DrawCircle(w / 2f, h / 2f, Math.Min(w, h) / 4f, p2);
        return bmp;
    }

    private static byte[] Encode(SKBitmap bmp, SKEncodedImageFormat format)
    {
        using var data = bmp.Encode(format, 90);
        Assert.NotNull(data);
        return data.ToArray();
    }
}

/// <summary>A tiny independent PNG reader (8-bit RGB, non-interlaced) and writer of header-only PNGs.</summary>
internal static class MiniPng
{
    public static (int W, int H, byte[] Rgb) DecodeRgb8(byte[] file)
    {
        int pos = 8, w = 0, h = 0;
        using var idat = new MemoryStream();
        while (pos < file.Length)
        {
            int len = BinaryPrimitives.ReadInt32BigEndian(file.AsSpan(pos));
            string type = Encoding.ASCII.GetString(file, pos + 4, 4);
            var body = file.AsSpan(pos + 8, len);
            if (type == "IHDR")
            {
                w = BinaryPrimitives.ReadInt32BigEndian(body);
                h = BinaryPrimitives.ReadInt32BigEndian(body[4..]);
                if (body[8] != 8 || body[9] != 2 || body[12] != 0) throw new NotSupportedException("only 8-bit RGB non-interlaced");
            }
            else if (type == "IDAT") idat.Write(body);
            pos += 12 + len;
        }
        idat.Position = 0;
        using var z = new ZLibStream(idat, CompressionMode.Decompress);
        using var raw = new MemoryStream();
        z.CopyTo(raw);
        byte[] r = raw.ToArray();
        int stride = w * 3;
        var rgb = new byte[h * stride];
        for (int y = 0; y < h; y++)
        {
            int f = r[y * (stride + 1)];
            for (int x = 0; x < stride; x++)
            {
                int v = r[y * (stride + 1) + 1 + x];
                int a = x >= 3 ? rgb[y * stride + x - 3] : 0;
                int b = y > 0 ? rgb[(y - 1) * stride + x] : 0;
                int c = x >= 3 && y > 0 ? rgb[(y - 1) * stride + x - 3] : 0;
                v += f switch
                {
                    0 => 0, 1 => a, 2 => b, 3 => (a + b) / 2,
                    4 => Paeth(a, b, c),
                    _ => throw new InvalidDataException("filter " + f),
                };
                rgb[y * stride + x] = (byte)v;
            }
        }
        return (w, h, rgb);
    }

    private static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    /// <summary>Signature + a valid IHDR (correct CRC) declaring w x h RGB + a small garbage IDAT.</summary>
    public static byte[] HeaderOnly(int w, int h)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, w);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), h);
        ihdr[8] = 8; ihdr[9] = 2;
        Chunk(ms, "IHDR", ihdr);
        Chunk(ms, "IDAT", [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
        return ms.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> b4 = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(b4, data.Length);
        s.Write(b4);
        byte[] td = [.. Encoding.ASCII.GetBytes(type), .. data];
        s.Write(td);
        BinaryPrimitives.WriteUInt32BigEndian(b4, Crc32(td));
        s.Write(b4);
    }

    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
        }
        return ~crc;
    }
}
