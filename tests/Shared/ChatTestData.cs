namespace AutoPrune.Tests.Shared;

/// <summary>Paths to the repository's own model and dev images.</summary>
/// <remarks>Linked into the Extensions.AI and Semantic Kernel test projects.</remarks>
internal static class TestData
{
    public static string RepoRoot { get; } = FindRoot();
    public static string ModelDir => Path.Combine(RepoRoot, "samples", "models", "shapes-llava-tiny");
    public static string Image(string name) => Path.Combine(RepoRoot, "tests", "data", "shapes-vqa-dev", "images", name);

    /// <summary>The known-good pair: the fixture model answers "0".</summary>
    public const string KnownImage = "0002.png";
    public const string KnownQuestion = "How many blue objects are there?";

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
        throw new InvalidOperationException("AutoPrune.sln not found above " + AppContext.BaseDirectory);
    }
}
