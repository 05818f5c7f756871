namespace AutoPrune.Tests.Engine;

/// <summary>
/// A copy of the fixture model whose config.json allows 2048 positions (the bundled one says 1024, which two
/// 576-token images exceed), loaded once per test class that asks for it.
/// </summary>
public sealed class LongContextModelFixture : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "autoprune-2048-" + Guid.NewGuid().ToString("N"));

    public LongContextModelFixture()
    {
        Directory.CreateDirectory(_dir);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(_dir, Path.GetFileName(f)));
        var cfgPath = Path.Combine(_dir, "config.json");
        var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))!;
        cfg["text_config"]!["max_position_embeddings"] = 2048;
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        Model = VisionLanguageModel.Load(_dir, new ModelOptions { Device = "cpu" });
    }

    public VisionLanguageModel Model { get; }

    public void Dispose()
    {
        Model.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
