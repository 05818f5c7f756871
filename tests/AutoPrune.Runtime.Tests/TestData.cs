using System.Text.Json;

namespace AutoPrune.Tests;

/// <summary>Paths to the repository's own model and dev set (never ../shared).</summary>
internal static class TestData
{
    public static string RepoRoot { get; } = FindRoot();
    public static string ModelDir => Path.Combine(RepoRoot, "samples", "models", "shapes-llava-tiny");
    public static string DevDir => Path.Combine(RepoRoot, "tests", "data", "shapes-vqa-dev");
    public static string Image(string relative) => Path.Combine(DevDir, relative);

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
        throw new InvalidOperationException("AutoPrune.sln not found above " + AppContext.BaseDirectory);
    }

    public sealed record DevRow(int Id, string Image, string Question, string Answer, string Type, string HfPred, int PromptLen, int[] Top5Ids, float[] Top5Logits);
    public sealed record ReferenceLogits(int Id, int[] InputIds, float[] LastLogits);

    private static readonly JsonSerializerOptions Snake = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static IReadOnlyList<DevRow> Dev { get; } = File.ReadLines(Path.Combine(DevDir, "dev.jsonl"))
        .Where(l => l.Trim().Length > 0).Select(l => JsonSerializer.Deserialize<DevRow>(l, Snake)!).ToList();

    public static IReadOnlyList<ReferenceLogits> References { get; } =
        JsonSerializer.Deserialize<List<ReferenceLogits>>(File.ReadAllText(Path.Combine(DevDir, "reference_logits.json")), Snake)!;
}
