using System.Diagnostics;
using AutoPrune.Loading.Images;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>Each <see cref="ModelOptions"/> limit does what its documentation says.</summary>
[Collection(SerialReliability.Name)]
public sealed class ResourceLimitTests
{
    private static readonly TestData.DevRow Row = TestData.Dev[0];

    private static VisionRequest Ask(TestData.DevRow row, int maxNew = 2, string? question = null) =>
        VisionRequest.Create(question ?? row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with { Generation = new GenerationOptions { MaxNewTokens = maxNew } };

    private static VisionLanguageModel Load(ModelOptions o) => VisionLanguageModel.Load(TestData.ModelDir, o with { Device = "cpu" });

    [Fact]
    public async Task MaxConcurrentRequests_one_serialises_compute_and_queues_the_rest()
    {
        using var model = Load(new ModelOptions { MaxConcurrentRequests = 1, VisionCacheSize = 0 });
        await model.AskAsync(Ask(Row)); // warm-up
        var sw = Stopwatch.StartNew();
        var answers = await Task.WhenAll(Enumerable.Range(0, 6).Select(i => Task.Run(() => model.AskAsync(Ask(TestData.Dev[i])))));
        double wall = sw.Elapsed.TotalMilliseconds, compute = answers.Sum(a => a.Timings.TotalMs);
        // Serialised: the compute times (queueing excluded) fit one after another into the wall time.
        Assert.True(compute <= wall + 20, $"compute {compute:0} ms > wall {wall:0} ms: requests overlapped");
    }

    [Fact]
    public async Task MaxNewTokensLimit_refuses_larger_requests_before_queueing()
    {
        using var model = Load(new ModelOptions { MaxNewTokensLimit = 3 });
        var e = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => model.AskAsync(Ask(Row, maxNew: 4)));
        Assert.Contains("between 1 and 3", e.Message);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => model.AskAsync(Ask(Row, maxNew: 0)));
        var ok = await model.AskAsync(Ask(Row, maxNew: 3));
        Assert.InRange(ok.TokenIds.Count, 1, 3);
    }

    [Fact]
    public async Task MaxPromptTokens_is_exact()
    {
        using var model = Load(new ModelOptions { MaxPromptTokens = Row.PromptLen });
        var ok = await model.AskAsync(Ask(Row));
        Assert.Equal(Row.PromptLen, ok.PromptTokens);
        var e = await Assert.ThrowsAsync<ArgumentException>(() => model.AskAsync(Ask(Row, question: Row.Question + " Answer with one word please.")));
        Assert.Contains($"the limit is {Row.PromptLen}", e.Message);
        // Without the option the context length (1024) applies.
        using var plain = Load(new ModelOptions());
        var e2 = await Assert.ThrowsAsync<ArgumentException>(() => plain.AskAsync(Ask(Row, question: string.Join(" ", Enumerable.Repeat("circle", 600)))));
        Assert.Contains("the limit is 1024", e2.Message);
    }

    [Fact]
    public async Task RequestTimeout_fires_as_TimeoutException_and_the_model_recovers()
    {
        using var model = Load(new ModelOptions { RequestTimeout = TimeSpan.FromMilliseconds(30), VisionCacheSize = 0, MaxConcurrentRequests = 1 });
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<TimeoutException>(() => model.AskAsync(Ask(Row, maxNew: 8)));
        Assert.Contains("request timeout", e.Message);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"the timeout fired after {sw.ElapsedMilliseconds} ms");
        // A caller's own cancellation stays an OperationCanceledException.
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var oce = await Record.ExceptionAsync(() => model.AskAsync(Ask(Row), cts.Token));
        Assert.IsAssignableFrom<OperationCanceledException>(oce);
        // Queueing counts: with one slot busy, a queued request times out too.
        using var generous = Load(new ModelOptions { RequestTimeout = TimeSpan.FromSeconds(30), MaxConcurrentRequests = 1 });
        var reference = await generous.AskAsync(Ask(Row));
        Assert.Equal(reference.TopLogits, (await generous.AskAsync(Ask(Row))).TopLogits);
    }

    [Fact]
    public async Task MaxImagePixels_is_checked_from_the_header()
    {
        int pixels = 336 * 336;
        using var tight = Load(new ModelOptions { MaxImagePixels = pixels - 1 });
        var e = await Assert.ThrowsAsync<ImageDecodeException>(() => tight.AskAsync(Ask(Row)));
        Assert.Contains("MaxPixels", e.Message);
        using var exact = Load(new ModelOptions { MaxImagePixels = pixels });
        Assert.Equal(Row.PromptLen, (await exact.AskAsync(Ask(Row))).PromptTokens);
        // A decompression bomb through the public API with the default limit (50 MP): refused from its 65-byte header.
        using var plain = Load(new ModelOptions());
        var bomb = await Assert.ThrowsAsync<ImageDecodeException>(() =>
            plain.AskAsync(VisionRequest.Create("What is it?", ImageInput.FromBytes(FuzzSupport.PngHeader(100_000, 100_000))) with { Generation = new() { MaxNewTokens = 1 } }));
        Assert.Contains("10,000,000,000", bomb.Message);
    }

    [Fact]
    public async Task VisionCacheSize_keeps_that_many_recent_images()
    {
        using var model = Load(new ModelOptions { VisionCacheSize = 2, MaxConcurrentRequests = 1 });
        var (a, b, c) = (TestData.Dev[0], TestData.Dev[1], TestData.Dev[2]);
        bool Hit(VisionAnswer x) => x.Timings.PreprocessMs == 0; // a cache hit skips decoding and the tower
        var first = await model.AskAsync(Ask(a));
        Assert.False(Hit(first));
        Assert.False(Hit(await model.AskAsync(Ask(b))));
        var again = await model.AskAsync(Ask(a));
        Assert.True(Hit(again));
        Assert.Equal(first.TopLogits, again.TopLogits);           // the cached features give the same answer
        Assert.False(Hit(await model.AskAsync(Ask(c))));        // c evicts b (least recently used)
        Assert.True(Hit(await model.AskAsync(Ask(a))));
        Assert.False(Hit(await model.AskAsync(Ask(b))));
        using var none = Load(new ModelOptions { VisionCacheSize = 0 });
        await none.AskAsync(Ask(a));
        Assert.False(Hit(await none.AskAsync(Ask(a))));
    }
}
