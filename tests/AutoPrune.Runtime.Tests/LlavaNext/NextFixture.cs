using System.Buffers.Binary;
using System.IO.Compression;
using System.Text.Json;
using Xunit;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>
/// The LLaVA-NeXT fixture copied into tests/data/llava-next-tiny: two random-weight llava_next checkpoints (Llama and
/// Mistral text models), eight images, and what Hugging Face transformers computed for each (see its README).
/// </summary>
internal static class NextFixture
{
    public static string Dir => Path.Combine(TestData.RepoRoot, "tests", "data", "llava-next-tiny");
    public static string Model(string variant) => Path.Combine(Dir, $"llava-next-tiny-{variant}");
    public static string Image(string relative) => Path.Combine(Dir, relative);

    /// <summary>
    /// (model variant, image) cases: the smallest image on the Llama model and the 640x480 one on the Mistral model by
    /// default; <c>AUTOPRUNE_FULL_NEXT=1</c> gives all eight images on both models.
    /// </summary>
    public static TheoryData<string, string> ImageCases()
    {
        var data = new TheoryData<string, string>();
        if (Environment.GetEnvironmentVariable("AUTOPRUNE_FULL_NEXT") == "1")
        {
            foreach (var variant in new[] { "llama", "mistral" })
                foreach (var r in NextFixture.References(variant)) data.Add(variant, r.Image);
        }
        else
        {
            data.Add("llama", "images/06_50x60.png");
            data.Add("mistral", "images/01_640x480.png");
        }
        return data;
    }

    public sealed record TileStats(double Mean, double Std, double AbsSum);

    public sealed record Reference(string Image, int Width, int Height, string Question, string Prompt, int[] ImageSizes,
        int[] PixelValuesShape, TileStats[] PixelValuesPatches, int ImageTokens, int[] InputIds, float[] LastLogits, int[] Top5Ids, int[] GreedyIds);

    private static readonly JsonSerializerOptions Snake = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
    private static readonly Dictionary<string, IReadOnlyList<Reference>> Cache = new();

    /// <summary>The reference entries of "llama" or "mistral", one per image.</summary>
    public static IReadOnlyList<Reference> References(string variant)
    {
        lock (Cache)
        {
            if (!Cache.TryGetValue(variant, out var r))
                Cache[variant] = r = JsonSerializer.Deserialize<List<Reference>>(File.ReadAllText(Path.Combine(Dir, $"reference-{variant}.json")), Snake)!;
            return r;
        }
    }

    /// <summary>The reference pixel_values of image 01 (640x480): [5, 3, 336, 336] fp32, stored gzipped.</summary>
    public static (int[] Shape, float[] Values) PixelValues640x480()
    {
        using var gz = new GZipStream(File.OpenRead(Path.Combine(Dir, "pixel_values-01_640x480.safetensors.gz")), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        var bytes = ms.ToArray();
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        var t = header.RootElement.GetProperty("pixel_values");
        if (t.GetProperty("dtype").GetString() != "F32") throw new InvalidDataException("pixel_values is not F32");
        var shape = t.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var offsets = t.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var values = new float[(offsets[1] - offsets[0]) / 4];
        Buffer.BlockCopy(bytes, 8 + (int)headerLength + offsets[0], values, 0, values.Length * 4);
        return (shape, values);
    }
}
