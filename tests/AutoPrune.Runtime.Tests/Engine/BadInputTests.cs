using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>What a user sees through the public API when a folder, a file or a request is wrong.</summary>
public sealed class BadInputTests(PublicModelFixture fx) : IClassFixture<PublicModelFixture>, IDisposable
{
    private readonly string _tmp = Path.Combine(Path.GetTempPath(), "autoprune-bad-" + Guid.NewGuid().ToString("N"));

    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    private string CopyModel()
    {
        var dir = Path.Combine(_tmp, "model");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    /// <summary>A copy of the fixture whose config.json was changed by <paramref name="edit"/>.</summary>
    private string ModelWithConfig(Action<JsonNode> edit)
    {
        var dir = CopyModel();
        var cfgPath = Path.Combine(dir, "config.json");
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!;
        edit(cfg);
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        return dir;
    }

    private static ModelLoadException LoadFails(string dir) => Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(dir));

    [Fact]
    public void MissingFolder()
    {
        var e = LoadFails(Path.Combine(_tmp, "nope"));
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void MissingConfig()
    {
        var dir = CopyModel();
        File.Delete(Path.Combine(dir, "config.json"));
        Assert.Contains("config.json", LoadFails(dir).Message);
    }

    [Fact]
    public void MissingShard()
    {
        var dir = CopyModel();
        File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"));
        Assert.Contains("model-00002-of-00002.safetensors", LoadFails(dir).Message);
    }

    [Fact]
    public void TruncatedSafetensors()
    {
        var dir = CopyModel();
        var path = Path.Combine(dir, "model-00001-of-00002.safetensors");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        var e = LoadFails(dir);
        Assert.Contains("model-00001-of-00002.safetensors", e.Message);
    }

    [Fact]
    public void CorruptHeader()
    {
        var dir = CopyModel();
        var path = Path.Combine(dir, "model-00002-of-00002.safetensors");
        var bytes = File.ReadAllBytes(path);
        for (int i = 8; i < 40; i++) bytes[i] = (byte)'#';
        File.WriteAllBytes(path, bytes);
        Assert.Contains("model-00002-of-00002.safetensors", LoadFails(dir).Message);
    }

    [Fact]
    public void ShardPathOutsideTheFolder()
    {
        var dir = CopyModel();
        var indexPath = Path.Combine(dir, "model.safetensors.index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        index["weight_map"]!["language_model.model.norm.weight"] = "../../etc/passwd";
        File.WriteAllText(indexPath, index.ToJsonString());
        var e = LoadFails(dir);
        Assert.Contains("../../etc/passwd", e.Message);
        Assert.Equal("language_model.model.norm.weight", e.TensorName);
    }

    [Fact]
    public void WrongShapeNamesTensorAndShapes()
    {
        var dir = ModelWithConfig(c => c["text_config"]!["intermediate_size"] = 256); // checkpoint has 512
        var e = LoadFails(dir);
        Assert.Contains("512", e.Message);
        Assert.Contains("256", e.Message);
        Assert.NotNull(e.TensorName);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var dir = ModelWithConfig(c => c["text_config"]!["num_hidden_layers"] = 9); // checkpoint has 8
        var e = LoadFails(dir);
        Assert.Contains("language_model.model.layers.8", e.Message);
    }

    [Fact]
    public void UnexpectedTensorsAreReported()
    {
        var dir = ModelWithConfig(c => c["text_config"]!["num_hidden_layers"] = 7); // checkpoint has 8
        var e = LoadFails(dir);
        Assert.Contains("language_model.model.layers.7", e.Message);
    }

    [Fact]
    public void UnsupportedModelType()
    {
        var dir = ModelWithConfig(c => c["model_type"] = "qwen2_vl");
        var e = LoadFails(dir);
        Assert.Contains("qwen2_vl", e.Message);
        Assert.Contains("not supported yet", e.Message);
        Assert.Contains("qwen2_5_vl", e.Message);
        Assert.Contains("llava", e.Message);
    }

    [Fact]
    public async Task UndecodableAndEmptyImages()
    {
        var junk = await Assert.ThrowsAsync<ImageDecodeException>(() =>
            fx.Model.AskAsync("What is it?", ImageInput.FromBytes("not an image at all"u8.ToArray(), "junk.bin")));
        Assert.NotEmpty(junk.Message);
        await Assert.ThrowsAsync<ImageDecodeException>(() => fx.Model.AskAsync("What is it?", ImageInput.FromBytes(Array.Empty<byte>())));
        var missing = Path.Combine(_tmp, "missing.png");
        var e = await Assert.ThrowsAsync<ImageDecodeException>(() => fx.Model.AskAsync("What is it?", ImageInput.FromFile(missing)));
        Assert.Contains("missing.png", e.Message);
    }

    [Fact]
    public async Task EmptyQuestion()
    {
        var e = await Assert.ThrowsAsync<ArgumentException>(() => fx.Model.AskAsync("   ", ImageInput.FromFile(TestData.Image("images/0000.png"))));
        Assert.Contains("question is empty", e.Message);
    }

    [Fact]
    public async Task PromptLongerThanTheContext()
    {
        // The fixture's context is 1024 tokens; two images alone take 1152.
        var img = ImageInput.FromFile(TestData.Image("images/0000.png"));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => fx.Model.AskAsync(VisionRequest.Create("How many?", img, img)));
        Assert.Contains("1024", e.Message);
        // And the model still answers.
        var ok = await fx.Model.AskAsync("How many objects are there?", img, new GenerationOptions { MaxNewTokens = 2 });
        Assert.NotEmpty(ok.TokenIds);
    }

    [Fact]
    public void CudaWithoutAGpuNamesWhatIsMissing()
    {
        var e = Assert.Throws<NotSupportedException>(() => VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cuda" }));
        Assert.Matches("driver|device|cublas|CPU backend only", e.Message);
    }

    [Fact]
    public void UnknownDevice()
    {
        var e = Assert.Throws<ArgumentException>(() => VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "tpu" }));
        Assert.Contains("tpu", e.Message);
    }
}
