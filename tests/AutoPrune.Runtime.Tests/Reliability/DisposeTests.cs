using System.Diagnostics;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>Disposing a model with requests queued and running: every request ends, nothing hangs, memory is released.</summary>
public sealed class DisposeTests
{
    [Theory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    public async Task DisposeEndsQueuedAndRunningRequestsWithoutHanging(string device)
    {
        var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = device, MaxConcurrentRequests = 1, VisionCacheSize = 0 });
        var row = TestData.Dev[5];
        var request = VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 64, StopSequences = ["never appears"] },
        };
        // One computing, the rest queued behind the single slot: far more work than the 100 ms before the dispose,
        // even on a much faster machine (each request runs the vision tower and a prefill).
        var tasks = Enumerable.Range(0, 20).Select(_ => Task.Run(() => model.AskAsync(request))).ToArray();
        await Task.Delay(100);
        var sw = Stopwatch.StartNew();
        model.Dispose();
        var all = Task.WhenAll(tasks);
        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(60)));
        Assert.Same(all, finished); // no request hangs
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60));
        foreach (var t in tasks)
        {
            // Each request either finished before the dispose reached it or ended with ObjectDisposedException.
            if (t.IsFaulted) Assert.IsType<ObjectDisposedException>(t.Exception!.InnerException);
            else Assert.True(t.IsCompletedSuccessfully);
        }
        Assert.Contains(tasks, t => t.IsFaulted); // at least the queued ones were refused
        await Assert.ThrowsAsync<ObjectDisposedException>(() => model.AskAsync(request));
    }
}
