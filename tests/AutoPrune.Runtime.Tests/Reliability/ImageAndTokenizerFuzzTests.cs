using System.Buffers.Binary;
using System.Text;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Loading.Text;
using CsCheck;
using SkiaSharp;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>
/// Mutated image bytes give only <see cref="ImageDecodeException"/> or a valid [3, 336, 336] tensor; mutated
/// or foreign tokenizer files give only <see cref="ModelLoadException"/> or a tokenizer that works.
/// </summary>
public sealed class ImageAndTokenizerFuzzTests : IDisposable
{
    private const long FuzzMaxPixels = 1_000_000;
    private readonly PerThreadDirs _dirs = new();
    public void Dispose() => _dirs.Dispose();

    private static byte[][] ImageBases()
    {
        byte[] png = File.ReadAllBytes(TestData.Image(TestData.Dev[0].Image));
        using var full = SKBitmap.Decode(png);
        using var small = full.Resize(new SKImageInfo(48, 40), SKFilterQuality.Medium);
        byte[] Encode(SKEncodedImageFormat f) { using var img = SKImage.FromBitmap(small); using var d = img.Encode(f, 90); return d.ToArray(); }
        return [png, Encode(SKEncodedImageFormat.Png), Encode(SKEncodedImageFormat.Jpeg), Encode(SKEncodedImageFormat.Webp), Bmp(small), FuzzSupport.PngHeader(64, 64)];
    }

    private static byte[] Bmp(SKBitmap bmp)
    {
        int w = bmp.Width, h = bmp.Height, stride = (w * 3 + 3) & ~3;
        var b = new byte[54 + stride * h];
        b[0] = (byte)'B'; b[1] = (byte)'M';
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(2), b.Length);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(10), 54);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(14), 40);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(18), w);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(22), h);
        b[26] = 1; b[28] = 24;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var c = bmp.GetPixel(x, h - 1 - y);
                int o = 54 + y * stride + x * 3;
                b[o] = c.Blue; b[o + 1] = c.Green; b[o + 2] = c.Red;
            }
        return b;
    }

    [Fact]
    public void Mutated_images_give_ImageDecodeException_or_a_valid_tensor()
    {
        var bases = ImageBases();
        var pre = ImagePreprocessor.Load(TestData.ModelDir);
        pre.MaxPixels = FuzzMaxPixels;
        int n = 3 * pre.OutputHeight * pre.OutputWidth;
        Assert.Equal(3 * 336 * 336, n);
        var dims = Gen.OneOf<uint>(Gen.OneOf<uint>(0u, 1u, 336u, 999u, 1000u, 1001u, 65535u, 65536u, (uint)int.MaxValue, uint.MaxValue, 0x80000000u), Gen.UInt);
        var gen = Gen.Select(Gen.Int[0, bases.Length - 1], Gen.Int[0, 4], Gen.Select(Gen.Int[0, int.MaxValue], Gen.Byte).Array[1, 8], Gen.Int[0, int.MaxValue], dims, dims)
            .Select((bi, kind, flips, cut, w, h) =>
            {
                var b = (byte[])bases[bi].Clone();
                switch (kind)
                {
                    case 0: foreach (var (p, v) in flips) b[p % b.Length] = v; break;
                    case 1: foreach (var (p, v) in flips) b[p % Math.Min(b.Length, 64)] = v; break; // headers
                    case 2: b = b.AsSpan(0, cut % b.Length).ToArray(); break;
                    case 3: b = b[0] == 0x89 ? FuzzSupport.PngWithDimensions(b, w, h) : b; break; // a lie with a correct CRC
                    default:
                        if (b[0] == 'B') { BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(18), (int)w); BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(22), (int)h); }
                        else b = b.Concat(flips.Select(f => f.Item2)).ToArray();
                        break;
                }
                return (kind, b);
            });
        // Bound: decoding is allowed up to MaxPixels (RGBA + RGB + resize buffers + the result), never the declared size.
        long allocationLimit = FuzzMaxPixels * 16 + (16L << 20);
        int decoded = 0, refused = 0;
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(180), () => gen.Sample((kind, bytes) =>
        {
            float[]? result = null;
            var error = FuzzSupport.Attempt(() => result = pre.Preprocess(bytes), allocationLimit, $"image mutation {kind}");
            FuzzSupport.AssertClean(error, $"image mutation {kind}", typeof(ImageDecodeException));
            if (result is null) { Interlocked.Increment(ref refused); return; }
            Interlocked.Increment(ref decoded);
            Assert.Equal(n, result.Length);
            Assert.All(result, v => Assert.True(float.IsFinite(v) && Math.Abs(v) < 3f));
        }, iter: 2000));
        Assert.True(decoded > 100 && refused > 100, $"decoded {decoded}, refused {refused}");
    }

    [Fact]
    public void Bomb_above_the_limit_allocates_nothing_proportional_to_its_claim()
    {
        var pre = ImagePreprocessor.Load(TestData.ModelDir);
        foreach (var (w, h) in new (uint, uint)[] { (100_000, 100_000), (int.MaxValue, int.MaxValue), (uint.MaxValue, 1), (7072, 7072) })
        {
            byte[] bomb = FuzzSupport.PngHeader(w, h);
            var e = FuzzSupport.Attempt(() => pre.Preprocess(bomb), 256 << 10, $"bomb {w}x{h}");
            Assert.IsType<ImageDecodeException>(e);
        }
    }

    /// <summary>
    /// An honest, tiny 1x100000 PNG under the default 50 MP limit: resizing its shortest edge to 336 would need
    /// 336 x 33.6M pixels (~34 GB). Before the fix it allocated until OutOfMemory; now it is refused up front.
    /// </summary>
    [Fact]
    public void Extreme_aspect_ratio_is_refused_before_resizing()
    {
        using var bmp = new SKBitmap(new SKImageInfo(1, 100_000, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bmp.Erase(SKColors.Orange);
        using var img = SKImage.FromBitmap(bmp);
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        byte[] png = data.ToArray();
        var pre = ImagePreprocessor.Load(TestData.ModelDir);
        var e = FuzzSupport.Attempt(() => pre.Preprocess(png), 8L << 20, "1x100000 image");
        var ide = Assert.IsType<ImageDecodeException>(e);
        Assert.Contains("aspect ratio", ide.Message);
    }

    private static readonly string Prompt = "USER: <image>\nIs there a green circle? ASSISTANT:";

    [Fact]
    public void Mutated_or_foreign_tokenizer_files_give_ModelLoadException_or_a_working_tokenizer()
    {
        string src = TestData.ModelDir;
        byte[] model = File.ReadAllBytes(Path.Combine(src, "tokenizer.model"));
        string config = File.ReadAllText(Path.Combine(src, "tokenizer_config.json"));
        string added = File.ReadAllText(Path.Combine(src, "added_tokens.json"));
        byte[][] foreign =
        [
            [], File.ReadAllBytes(TestData.Image(TestData.Dev[0].Image)), File.ReadAllBytes(Path.Combine(src, "config.json")),
            Encoding.UTF8.GetBytes("{}"), Encoding.UTF8.GetBytes(new string('[', 100_000)), new byte[4096], Enumerable.Repeat((byte)0xFF, 4096).ToArray(),
            File.ReadAllBytes(Path.Combine(src, "model-00002-of-00002.safetensors")).AsSpan(0, 8192).ToArray(),
        ];
        var jsonJunk = Gen.String[Gen.Char["{}[]\",:0123456789-e truefalsn\\"], 0, 8];
        var gen = Gen.Select(Gen.Int[0, 5], Gen.Select(Gen.Int[0, int.MaxValue], Gen.Byte).Array[1, 8], Gen.Int[0, int.MaxValue], jsonJunk, Gen.Int[0, foreign.Length - 1]);
        int loads = 0, refusals = 0;
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(180), () => gen.Sample((kind, flips, at, junk, fi) =>
        {
            string dir = _dirs.Current;
            foreach (var f in Directory.GetFiles(dir)) File.Delete(f);
            byte[] m = (byte[])model.Clone();
            string c = config, a = added;
            string target = "tokenizer.model";
            switch (kind)
            {
                case 0: foreach (var (p, v) in flips) m[p % m.Length] = v; break;
                case 1: m = m.AsSpan(0, at % m.Length).ToArray(); break;
                case 2: c = c.Insert(at % c.Length, junk); break;
                case 3: a = a.Insert(at % a.Length, junk); break;
                case 4: m = foreign[fi]; break;
                default: m = foreign[fi]; target = "tokenizer.json"; break;
            }
            File.WriteAllBytes(Path.Combine(dir, target), m);
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), c);
            File.WriteAllText(Path.Combine(dir, "added_tokens.json"), a);
            LlavaTokenizer? tok = null;
            var error = FuzzSupport.Attempt(() => tok = LlavaTokenizer.Load(dir, 400), 8L << 20, $"tokenizer mutation {kind}");
            FuzzSupport.AssertClean(error, $"tokenizer mutation {kind}", typeof(ModelLoadException));
            if (tok is null) { Interlocked.Increment(ref refusals); return; }
            Interlocked.Increment(ref loads);
            // A tokenizer that loaded must work: encode, decode, stream.
            var ids = tok.EncodePrompt(Prompt, 576);
            Assert.Equal(576, ids.Count(i => i == tok.ImageTokenId));
            _ = tok.Decode(ids.Where(i => i != tok.ImageTokenId).ToArray());
        }, iter: 1500, threads: 1));
        Assert.True(refusals > 100, $"loads {loads}, refusals {refusals}");
    }
}
