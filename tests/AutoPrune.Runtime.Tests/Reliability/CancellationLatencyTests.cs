using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Reliability;

/// <summary>
/// Issue 16, row 20: cancellation and <see cref="ModelOptions.RequestTimeout"/> arrive on time while both cores are
/// busy. The load is the test's own: two threads spinning at normal priority, plus the request's parallel GEMMs. Each
/// latency is a median over several requests cancelled at different points (vision tower, prefill, decoding).
/// </summary>
[Collection(SerialReliability.Name)]
public sealed class CancellationLatencyTests(ITestOutputHelper output) : IDisposable
{
    // The fixture with EOS moved to <pad>, a token it never generates, so every request decodes all its tokens (~1 s):
    // long enough that a cancellation or a timeout always lands while it computes.
    private readonly ModelFolder _folder = new ModelFolder().EditJson("tokenizer_config.json", t => t["eos_token"] = "<pad>");

    public void Dispose() => _folder.Dispose();

    private static readonly TestData.DevRow Row = TestData.Dev[1];

    private static VisionRequest Long => VisionRequest.Create(Row.Question, ImageInput.FromFile(TestData.Image(Row.Image))) with
    {
        Generation = new() { MaxNewTokens = 120 },
    };

    /// <summary>One token about the same image cut to 32 visual tokens by VisionZip: a short prefill (with the image's
    /// vision features cached, a few milliseconds of compute).</summary>
    private static VisionRequest Probe => VisionRequest.Create(Row.Question, ImageInput.FromFile(TestData.Image(Row.Image))) with
    {
        Generation = new() { MaxNewTokens = 1 },
        Pruning = new Pruning.PruningOptions { Method = Pruning.PruningMethod.VisionZip, Budget = 32 },
    };

    /// <summary>As many tokens as the context leaves: seconds of decoding on any machine.</summary>
    private static VisionRequest Longest => Long with { Generation = new() { MaxNewTokens = 1024 - Row.PromptLen } };

    private static double Median(IEnumerable<double> xs)
    {
        var a = xs.Order().ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    /// <summary>Threads that spin until disposed: the cores are never idle while the test measures.</summary>
    private sealed class CpuLoad : IDisposable
    {
        private volatile bool _stop;
        private readonly Thread[] _threads;
        public CpuLoad(int threads)
        {
            _threads = Enumerable.Range(0, threads).Select(_ => new Thread(() => { while (!_stop) Thread.SpinWait(1000); }) { IsBackground = true }).ToArray();
            foreach (var t in _threads) t.Start();
        }
        public void Dispose() { _stop = true; foreach (var t in _threads) t.Join(); }
    }

    /// <summary>
    /// How long after the cancellation the compute slot was free again: a probe queued right after the cancellation waits
    /// for it (the other slot is busy with a background request), so its wall time minus its own compute time is that wait.
    /// </summary>
    private static async Task<(double Wait, double Compute)> SlotWait(VisionLanguageModel model)
    {
        var sw = Stopwatch.StartNew();
        var probe = await model.AskAsync(Probe);
        return (sw.Elapsed.TotalMilliseconds - probe.Timings.TotalMs, probe.Timings.TotalMs);
    }

    private static string Show(IEnumerable<double> xs) => string.Join(", ", xs.Select(x => x.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)));

    [Fact]
    public async Task Cancellation_under_two_core_load_arrives_within_100_ms_and_frees_the_slot()
    {
        // No vision cache: every request runs the vision tower, so early cancellations land in it. Two slots: a background
        // request computes in one the whole time (with the measured one, two computing requests: as many as there are
        // cores, and as many as the thread pool starts with, which is what made cancellations late when compute ran on it).
        using var model = VisionLanguageModel.Load(_folder.Path, new ModelOptions { Device = "cpu", MaxConcurrentRequests = 2, VisionCacheSize = 0 });
        await model.AskAsync(Probe); // JIT and first touch out of the way
        using var load = new CpuLoad(2);
        using var stopBackground = new CancellationTokenSource();
        var background = Task.Run(async () =>
        {
            while (!stopBackground.IsCancellationRequested)
                try { await model.AskAsync(Longest, stopBackground.Token); } catch (OperationCanceledException) { }
        });
        var late = new List<double>();
        var slotFree = new List<double>();
        var probeMs = new List<double>();
        // CancelAfter armed at the start (vision tower, projector, prefill) or once k tokens have streamed (decoding):
        // the deadline always falls inside the request, which takes seconds, whatever the machine's speed.
        foreach (var (afterTokens, delayMs) in new[] { (0, 5), (0, 30), (0, 80), (1, 20), (30, 20), (60, 20), (90, 20) })
        {
            using var cts = new CancellationTokenSource();
            var sw = Stopwatch.StartNew();
            double deadline = double.NaN;
            if (afterTokens == 0) { cts.CancelAfter(delayMs); deadline = delayMs; }
            int seen = 0;
            var e = await Record.ExceptionAsync(async () =>
            {
                await foreach (var chunk in model.StreamAsync(Long, cts.Token))
                    if (chunk.TokenId is not null && ++seen == afterTokens) { deadline = sw.Elapsed.TotalMilliseconds + delayMs; cts.CancelAfter(delayMs); }
            });
            Assert.True(e is OperationCanceledException, $"cancel {delayMs} ms after {afterTokens} tokens: {e?.GetType().Name ?? "answered"}");
            late.Add(sw.Elapsed.TotalMilliseconds - deadline);
            double submitted = sw.Elapsed.TotalMilliseconds;
            var (wait, compute) = await SlotWait(model);
            slotFree.Add(submitted + wait - deadline);
            probeMs.Add(compute);
        }
        // A reader that cancels by itself after some streamed tokens.
        var direct = new List<double>();
        foreach (int tokens in new[] { 1, 40, 80 })
        {
            using var cts = new CancellationTokenSource();
            var sw = new Stopwatch();
            int seen = 0;
            var e = await Record.ExceptionAsync(async () =>
            {
                await foreach (var chunk in model.StreamAsync(Long, cts.Token))
                    if (chunk.TokenId is not null && ++seen == tokens) { sw.Start(); cts.Cancel(); }
            });
            Assert.IsAssignableFrom<OperationCanceledException>(e);
            direct.Add(sw.Elapsed.TotalMilliseconds);
            double submitted = sw.Elapsed.TotalMilliseconds;
            slotFree.Add(submitted + (await SlotWait(model)).Wait);
        }
        stopBackground.Cancel();
        await background;
        output.WriteLine($"CancelAfter observed late by (ms): {Show(late)}; reader's Cancel() to exception (ms): {Show(direct)}; " +
                         $"slot free after the cancellation (ms): {Show(slotFree)}; probe compute (ms): {Show(probeMs)}");
        Assert.True(Median(late) < 100, $"CancelAfter arrived {Median(late):0} ms late (median): {Show(late)}");
        Assert.True(Median(direct) < 100, $"a reader's cancellation took {Median(direct):0} ms (median): {Show(direct)}");
        Assert.True(Median(slotFree) < 100, $"the compute slot was free {Median(slotFree):0} ms after the cancellation (median): {Show(slotFree)}");
        // And none as late as the starved thread pool made them (a second and more).
        Assert.True(late.Concat(slotFree).Max() < 1000, $"a cancellation took a second or more: {Show(late)}; slots: {Show(slotFree)}");
    }

    [Fact]
    public async Task RequestTimeout_under_two_core_load_fires_on_time()
    {
        // The timeout is half of what the longest request takes here without load (warm): under load it takes longer
        // still, so the timeout always lands while it computes, on a slow machine or a fast one (on a fast CI machine a
        // fixed 1.5 s let the whole request finish first).
        double unloadedMs;
        using (var warm = VisionLanguageModel.Load(_folder.Path, new ModelOptions { Device = "cpu" }))
        {
            await warm.AskAsync(Probe); // JIT, first touch
            var full = Stopwatch.StartNew();
            await warm.AskAsync(Longest);
            unloadedMs = full.Elapsed.TotalMilliseconds;
        }
        var timeout = TimeSpan.FromMilliseconds(Math.Min(1500, unloadedMs / 2));
        var model = VisionLanguageModel.Load(_folder.Path, new ModelOptions { Device = "cpu", MaxConcurrentRequests = 1, RequestTimeout = timeout });
        using var load = new CpuLoad(2);
        var elapsed = new List<double>();
        for (int i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            var e = await Record.ExceptionAsync(() => model.AskAsync(Longest));
            elapsed.Add(sw.Elapsed.TotalMilliseconds);
            Assert.IsType<TimeoutException>(e);
        }
        // The last request stopped computing: the dispose, which waits for running requests, does not wait for the rest of
        // its 433 tokens (seconds under this load).
        var disposing = Stopwatch.StartNew();
        model.Dispose();
        double disposeMs = disposing.Elapsed.TotalMilliseconds;
        output.WriteLine($"unloaded {unloadedMs:0} ms; timeout {timeout.TotalMilliseconds:0} ms; requests ended after (ms): {Show(elapsed)}; dispose {disposeMs:0.0} ms");
        // Never early, up to the timer's clock: .NET timers count coarse milliseconds (a few ms per tick on Linux).
        Assert.All(elapsed, ms => Assert.True(ms >= timeout.TotalMilliseconds - 10, $"a request timed out early, after {ms:0} ms"));
        // Late by at most 10% of the timeout, or 50 ms where that is less (a short timeout on a fast machine).
        double allowed = Math.Max(timeout.TotalMilliseconds * 0.1, 50);
        Assert.True(Median(elapsed) <= timeout.TotalMilliseconds + allowed,
            $"the timeout ({timeout.TotalMilliseconds:0} ms) fired at {Median(elapsed):0} ms (median), more than {allowed:0} ms late: {Show(elapsed)}");
        Assert.True(disposeMs < 3000, $"the dispose waited {disposeMs:0} ms for a request still computing after its timeout");
    }
}
