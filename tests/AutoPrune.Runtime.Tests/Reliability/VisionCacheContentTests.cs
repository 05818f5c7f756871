using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>Issue 16, row 10: the vision cache is keyed by the image's content, not its path, length and time.</summary>
public sealed class VisionCacheContentTests : IDisposable
{
    private readonly string _tmp = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "autoprune-cache-" + Guid.NewGuid().ToString("N"))).FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    [Fact]
    public async Task An_image_rewritten_in_place_with_the_same_length_and_time_is_not_answered_from_the_cache()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", VisionCacheSize = 4 });
        var (a, b) = (TestData.Dev[0], TestData.Dev[2]);
        byte[] pngA = File.ReadAllBytes(TestData.Image(a.Image)), pngB = File.ReadAllBytes(TestData.Image(b.Image));
        // Same length: the shorter PNG gets zero bytes after its IEND chunk, which decoders ignore.
        int length = Math.Max(pngA.Length, pngB.Length);
        Array.Resize(ref pngA, length);
        Array.Resize(ref pngB, length);
        var path = Path.Combine(_tmp, "photo.png");
        var time = new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc);
        VisionRequest Ask() => VisionRequest.Create(a.Question, ImageInput.FromFile(path)) with { Generation = new() { MaxNewTokens = 2 } };

        File.WriteAllBytes(path, pngA);
        File.SetLastWriteTimeUtc(path, time);
        var first = await model.AskAsync(Ask());
        Assert.True((await model.AskAsync(Ask())).Timings.PreprocessMs == 0); // same content: a cache hit

        File.WriteAllBytes(path, pngB);
        File.SetLastWriteTimeUtc(path, time);
        var info = new FileInfo(path);
        Assert.Equal((length, time), (info.Length, info.LastWriteTimeUtc));
        var second = await model.AskAsync(Ask());
        Assert.True(second.Timings.PreprocessMs > 0, "the rewritten image was answered from the cache");

        // The answer is image B's, as a model that never saw image A gives it.
        using var fresh = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", VisionCacheSize = 0 });
        var reference = await fresh.AskAsync(VisionRequest.Create(a.Question, ImageInput.FromBytes(pngB)) with { Generation = new() { MaxNewTokens = 2 } });
        Assert.Equal(reference.TopLogits, second.TopLogits);
        Assert.NotEqual(first.TopLogits, second.TopLogits);
        // The same content under another path or in memory is one cache entry.
        var copy = Path.Combine(_tmp, "copy.png");
        File.WriteAllBytes(copy, pngB);
        Assert.True((await model.AskAsync(VisionRequest.Create(a.Question, ImageInput.FromFile(copy)) with { Generation = new() { MaxNewTokens = 2 } })).Timings.PreprocessMs == 0);
        Assert.True((await model.AskAsync(VisionRequest.Create(a.Question, ImageInput.FromBytes(pngB)) with { Generation = new() { MaxNewTokens = 2 } })).Timings.PreprocessMs == 0);
    }
}
