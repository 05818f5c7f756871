using System.Buffers.Binary;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;
using AutoPrune.Models.Qwen2VL;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>
/// The Qwen2.5-VL fixture copied into tests/data/qwen25vl-tiny: two random-weight checkpoints (current key names, one
/// file; released key names, sharded), eight images and what transformers' Qwen2.5-VL code computed for each image ×
/// question and one text-only prompt (see its README).
/// </summary>
internal static partial class QwenFixture
{
    public const string Current = "qwen25vl-tiny";
    public const string Legacy = "qwen25vl-tiny-legacy";

    public static string Dir => Path.Combine(TestData.RepoRoot, "tests", "data", "qwen25vl-tiny");
    public static string Model(string checkpoint) => Path.Combine(Dir, checkpoint);
    public static string Image(string relative) => Path.Combine(Dir, relative);

    public sealed record Case(
        string? Image, string Question, string PromptText, int[] InputIds, int[]? ImageSizeWh, int[]? ResizedHw, int[]? GridThw,
        int NumImageTokens, int[]? PixelShape, double PixelSum, float[]? PixelFirst8, string? PixelSha256, string? ResizedRgbSha256,
        int NumWindows, int[]? CuWindowSeqlens, int[]? WindowIndexFirst16, int[]? VisionShape, double VisionSum, float[]? VisionFirst8,
        int[][] PositionIds, int RopeDeltas, int[] DecodePositionIds, float[] LastLogits, int[] GreedyIds, bool GreedyNearTie, string GreedyText)
    {
        public override string ToString() => $"{Image ?? "text-only"} / {Question}";
    }

    private static readonly Dictionary<string, IReadOnlyList<Case>> Cache = new();

    /// <summary>Every case of a checkpoint's reference: 8 images × 3 questions, then the text-only prompt.</summary>
    public static IReadOnlyList<Case> Cases(string checkpoint)
    {
        lock (Cache)
        {
            if (Cache.TryGetValue(checkpoint, out var c)) return c;
            using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Dir, $"reference-{checkpoint}.json")));
            var root = doc.RootElement;
            var list = root.GetProperty("cases").EnumerateArray().Select(Parse).ToList();
            list.Add(Parse(root.GetProperty("text_only")));
            return Cache[checkpoint] = list;
        }
    }

    public static IEnumerable<Case> ImageCases(string checkpoint) => Cases(checkpoint).Where(c => c.Image is not null);

    /// <summary>One case per image (the first question).</summary>
    public static IEnumerable<Case> OnePerImage(string checkpoint) => ImageCases(checkpoint).GroupBy(c => c.Image).Select(g => g.First());

    public static Case TextOnly(string checkpoint) => Cases(checkpoint).Single(c => c.Image is null);

    /// <summary>(checkpoint, case index) for every case of both checkpoints.</summary>
    public static TheoryData<string, int> AllCases()
    {
        var data = new TheoryData<string, int>();
        foreach (var ck in new[] { Current, Legacy })
            for (int i = 0; i < Cases(ck).Count; i++) data.Add(ck, i);
        return data;
    }

    /// <summary>The eight image paths.</summary>
    public static TheoryData<string> Images()
    {
        var data = new TheoryData<string>();
        foreach (var c in OnePerImage(Current)) data.Add(c.Image!);
        return data;
    }

    private static Case Parse(JsonElement e)
    {
        static int[]? Ints(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array ? v.EnumerateArray().Select(x => x.GetInt32()).ToArray() : null;
        static float[] Floats(JsonElement v) => v.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();
        string? image = e.GetProperty("image").ValueKind == JsonValueKind.String ? e.GetProperty("image").GetString() : null;
        JsonElement pv = default, win = default, vis = default;
        bool hasImage = image is not null && e.TryGetProperty("pixel_values", out pv) && e.TryGetProperty("vision_windows", out win) && e.TryGetProperty("vision_output", out vis);
        return new Case(
            image,
            e.GetProperty("question").GetString()!,
            e.GetProperty("prompt_text").GetString()!,
            Ints(e, "input_ids")!,
            Ints(e, "image_size_wh"), Ints(e, "resized_hw"), Ints(e, "image_grid_thw"),
            e.TryGetProperty("num_image_tokens", out var nit) && nit.ValueKind == JsonValueKind.Number ? nit.GetInt32() : 0,
            hasImage ? Ints(pv, "shape") : null,
            hasImage ? pv.GetProperty("sum").GetDouble() : 0,
            hasImage ? Floats(pv.GetProperty("first8_row0")) : null,
            hasImage ? pv.GetProperty("sha256_f32le").GetString() : null,
            image is not null ? e.GetProperty("resized_rgb_uint8_sha256").GetString() : null,
            hasImage ? win.GetProperty("num_windows").GetInt32() : 0,
            hasImage ? Ints(win, "cu_window_seqlens") : null,
            hasImage ? Ints(win, "window_index_first16") : null,
            hasImage ? Ints(vis, "shape") : null,
            hasImage ? vis.GetProperty("sum").GetDouble() : 0,
            hasImage ? Floats(vis.GetProperty("first8_row0")) : null,
            e.GetProperty("position_ids").EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray(),
            e.GetProperty("rope_deltas").GetInt32(),
            Ints(e, "decode_position_ids")!,
            Floats(e.GetProperty("logits_last").GetProperty("values")),
            Ints(e, "greedy_ids")!,
            e.GetProperty("greedy_near_tie").GetBoolean(),
            e.GetProperty("greedy_text").GetString()!);
    }

    /// <summary>The reference pixel_values of image 03 (1000x300): [928, 1176] F32 and its image_grid_thw, stored gzipped.</summary>
    public static (int[] Shape, float[] Values, long[] Grid) PixelValues1000x300()
    {
        using var gz = new GZipStream(File.OpenRead(Path.Combine(Dir, "pixel_values-03_1000x300.safetensors.gz")), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        var bytes = ms.ToArray();
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        int dataStart = 8 + (int)headerLength;
        var t = header.RootElement.GetProperty("pixel_values");
        Assert.Equal("F32", t.GetProperty("dtype").GetString());
        var shape = t.GetProperty("shape").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var off = t.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var values = new float[(off[1] - off[0]) / 4];
        Buffer.BlockCopy(bytes, dataStart + off[0], values, 0, values.Length * 4);
        var g = header.RootElement.GetProperty("image_grid_thw");
        Assert.Equal("I64", g.GetProperty("dtype").GetString());
        var goff = g.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var grid = new long[(goff[1] - goff[0]) / 8];
        Buffer.BlockCopy(bytes, dataStart + goff[0], grid, 0, grid.Length * 8);
        return (shape, values, grid);
    }

    public static string Sha256(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    public static string Sha256(float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return Sha256(bytes);
    }
}
