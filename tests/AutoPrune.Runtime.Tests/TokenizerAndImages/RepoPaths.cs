namespace AutoPrune.Tests.TokenizerAndImages;

/// <summary>Repo-relative paths, found by walking up from the test binaries to the folder with AutoPrune.sln.</summary>
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

    public static string NewTempDir()
    {
        string d = Path.Combine(Path.GetTempPath(), "autoprune-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
