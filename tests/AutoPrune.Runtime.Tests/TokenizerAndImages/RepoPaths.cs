namespace AutoPrune.Tests.TokenizerAndImages;

/// <summary>Repo-relative paths (see <see cref="TestData"/>).</summary>
internal static class RepoPaths
{
    public static string Root => TestData.RepoRoot;
    public static string TinyModel => TestData.ModelDir;
    public static string DevSet => TestData.DevDir;

    public static string NewTempDir()
    {
        string d = Path.Combine(Path.GetTempPath(), "autoprune-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
