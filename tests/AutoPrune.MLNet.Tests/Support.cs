using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace AutoPrune.MLNet.Tests;

internal static class RepoPaths
{
    private static readonly Lazy<string> s_root = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "AutoPrune.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException($"AutoPrune.sln not found above {AppContext.BaseDirectory}");
    });

    public static string Root => s_root.Value;
    public static string TinyModel => Path.Combine(Root, "samples", "models", "shapes-llava-tiny");
    public static string DevSet => Path.Combine(Root, "tests", "data", "shapes-vqa-dev");
}

public sealed record DevRow(
    [property: JsonPropertyName("id")] int Id,
    [property: JsonPropertyName("image")] string Image,
    [property: JsonPropertyName("question")] string Question,
    [property: JsonPropertyName("answer")] string Answer);

/// <summary>An input row: an image path (relative to the dev set) and a question.</summary>
public sealed class VqaInput
{
    public string ImagePath { get; set; } = "";
    public string Question { get; set; } = "";
}

public sealed class VqaOutput
{
    public string ImagePath { get; set; } = "";
    public string Question { get; set; } = "";
    public string Answer { get; set; } = "";
    [ColumnName("Answer_KeptVisualTokens")] public float KeptVisualTokens { get; set; }
    [ColumnName("Answer_FlopsRatio")] public float FlopsRatio { get; set; }
    [ColumnName("Answer_PrefillMs")] public float PrefillMs { get; set; }
    [ColumnName("Answer_Error")] public string Error { get; set; } = "";
}

/// <summary>One loaded fixture model and the dev rows, shared by every test (one collection, so tests run one at a time).</summary>
public sealed class ModelFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(RepoPaths.TinyModel);
    public IReadOnlyList<DevRow> Rows { get; } = File.ReadLines(Path.Combine(RepoPaths.DevSet, "dev.jsonl"))
        .Where(l => l.Trim().Length > 0).Select(l => JsonSerializer.Deserialize<DevRow>(l)!).ToList();

    public static VqaInput Input(DevRow r) => new() { ImagePath = r.Image, Question = r.Question };

    public static VisualQuestionOptions Options(int maxNewTokens = 8) => new()
    {
        Generation = new GenerationOptions { MaxNewTokens = maxNewTokens },
        Pruning = new Pruning.PruningOptions { Method = Pruning.PruningMethod.None },
        ImageFolder = RepoPaths.DevSet,
    };

    public void Dispose() => Model.Dispose();
}

[CollectionDefinition(Name)]
public sealed class ModelCollection : ICollectionFixture<ModelFixture>
{
    public const string Name = "fixture model";
}
