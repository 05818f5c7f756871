using System.Text.Json;
using AutoPrune.Loading;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Models;

/// <summary>
/// A model family, chosen by <c>config.json</c>'s <c>model_type</c>: it brings its config parsing, tensor-name map,
/// tokenizer and chat template, image processor and model (written once over the backend ops), and returns them loaded
/// as a <see cref="ModelRuntime"/>.
/// </summary>
internal interface IModelFamily
{
    /// <summary>The family's name in messages ("LLaVA", "Qwen2.5-VL").</summary>
    string Name { get; }

    /// <summary>The <c>model_type</c> values it loads.</summary>
    IReadOnlyList<string> ModelTypes { get; }

    /// <summary>What would make a load or a request fail because of the folder's configuration, without reading weights.</summary>
    IReadOnlyList<string> Validate(string folder, ModelOptions options);

    /// <summary>Loads a checkpoint folder onto the device <paramref name="options"/> names.</summary>
    /// <exception cref="ModelLoadException">Anything missing, malformed or inconsistent, named with its file and tensor.</exception>
    ModelRuntime Load(string folder, ModelOptions options, ILogger log, IProgress<LoadProgress>? progress);
}

/// <summary>The model families this runtime loads, and which one a folder is.</summary>
internal static class ModelFamilies
{
    /// <summary>Every family, the one that names unsupported types last.</summary>
    public static IReadOnlyList<IModelFamily> All { get; } = [Llava.LlavaFamily.Instance];

    /// <summary>
    /// The family of <paramref name="folder"/> by its <c>config.json</c>'s <c>model_type</c>. A type no family claims goes
    /// to LLaVA's config reader, whose error names the file, the type found and every supported one.
    /// </summary>
    public static IModelFamily For(string folder, InputFileLimits limits)
    {
        string? type = ReadModelType(folder, limits);
        foreach (var family in All)
            if (type is not null && family.ModelTypes.Contains(type, StringComparer.Ordinal)) return family;
        return Llava.LlavaFamily.Instance;
    }

    /// <summary>config.json's top-level <c>model_type</c>, or null when the file is missing or unreadable (the family's reader then says why).</summary>
    private static string? ReadModelType(string folder, InputFileLimits limits)
    {
        string path = Path.Combine(folder, "config.json");
        if (!File.Exists(path)) return null;
        try
        {
            var bytes = ModelFiles.ReadBytes(path, limits.ConfigBytes, "ModelOptions.FileLimits.ConfigBytes");
            using var doc = JsonDocument.Parse(bytes);
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("model_type", out var t) && t.ValueKind == JsonValueKind.String
                ? t.GetString() : null;
        }
        catch (Exception e) when (e is JsonException or ModelLoadException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
