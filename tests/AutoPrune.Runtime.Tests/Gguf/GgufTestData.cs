using System.Security.Cryptography;
using System.Text.Json;
using AutoPrune.Loading.Gguf;

using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Tests.Gguf;

/// <summary>
/// The gguf-tiny fixture copied into tests/data/gguf-tiny (the demo model as llama.cpp GGUF files plus references.json),
/// and the two variants not stored there (f16, Q6_K), regenerated once per test run from the demo model's safetensors with
/// <see cref="LlavaGgufExporter"/> and checked against the fixture's sha256 before use.
/// </summary>
internal static class GgufTestData
{
    public static string Dir => Path.Combine(TestData.RepoRoot, "tests", "data", "gguf-tiny");
    public static string Mmproj => Path.Combine(Dir, "mmproj-shapes-llava-tiny-f16.gguf");

    private static readonly Lazy<JsonElement> s_refs = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Dir, "references.json"))).RootElement.Clone());

    public static JsonElement References => s_refs.Value;

    public static readonly string[] Variants = ["f16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"];
    public static readonly string[] Shipped = ["Q8_0", "Q4_0", "Q4_K_M"];

    private static readonly Lazy<string> s_exported = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), "autoprune-gguf-tests-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        LlavaGgufExporter.Export(TestData.ModelDir, dir, LlamaFileType.MostlyF16);
        LlavaGgufExporter.Export(TestData.ModelDir, dir, LlamaFileType.MostlyQ6_K);
        foreach (var v in new[] { "f16", "Q6_K" })
        {
            string path = Path.Combine(dir, $"shapes-llava-tiny-{v}.gguf");
            if (Sha256(path) != References.GetProperty("files").GetProperty(v).GetProperty("sha256").GetString())
                throw new InvalidOperationException($"The regenerated {v} file differs from the fixture's; see GgufExportTests.");
        }
        return dir;
    });

    /// <summary>Path of a text variant: shipped in tests/data, or regenerated (f16, Q6_K).</summary>
    public static string Text(string variant) => Shipped.Contains(variant)
        ? Path.Combine(Dir, $"shapes-llava-tiny-{variant}.gguf")
        : Path.Combine(s_exported.Value, $"shapes-llava-tiny-{variant}.gguf");

    /// <summary>The file a references.json entry names (<c>shapes-llava-tiny-Q8_0.gguf</c>, ...).</summary>
    public static string FileNamed(string fileName) => fileName.StartsWith("mmproj", StringComparison.Ordinal) ? Mmproj
        : Text(fileName["shapes-llava-tiny-".Length..^".gguf".Length]);

    public static string Sha256(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();

    public static string Sha256(ReadOnlySpan<byte> bytes) => Convert.ToHexString(SHA256.HashData(bytes)).ToLowerInvariant();

    public static JsonElement Variant(string v) => References.GetProperty("variants").GetProperty(v);
}
