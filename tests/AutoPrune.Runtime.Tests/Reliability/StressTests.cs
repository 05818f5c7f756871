using System.Collections.Concurrent;
using System.Diagnostics;
using AutoPrune.Loading.Images;
using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Reliability;

/// <summary>Timing- and memory-sensitive tests run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialReliability { public const string Name = "Reliability (serial)"; }

/// <summary>One model, MaxConcurrentRequests 2 (so requests queue).</summary>
public sealed class StressModelFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", MaxConcurrentRequests = 2, VisionCacheSize = 4 });
    public void Dispose() => Model.Dispose();
}

[Collection(SerialReliability.Name)]
public sealed class StressTests(StressModelFixture fx, ITestOutputHelper output) : IClassFixture<StressModelFixture>
{
    private static readonly (PruningMethod Method, int Budget)[] Mixes =
    [
        (PruningMethod.None, 576), (PruningMethod.FastV, 128), (PruningMethod.PDrop, 192),
        (PruningMethod.AdaptPrune, 128), (PruningMethod.AutoPrune, 192), (PruningMethod.VisionZip, 128),
        (PruningMethod.FastV, 192), (PruningMethod.AutoPrune, 128),
    ];

    private static VisionRequest Request(int key)
    {
        var row = TestData.Dev[key % 4]; // four images: the vision cache (size 4) holds them all
        var (method, budget) = Mixes[key % Mixes.Length];
        return VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 2 },
            Pruning = new PruningOptions { Method = method, Budget = budget },
        };
    }

    private static void AssertSame(VisionAnswer expected, VisionAnswer actual, string what)
    {
        Assert.True(expected.Text == actual.Text, $"{what}: text '{actual.Text}' vs serial '{expected.Text}'");
        Assert.Equal(expected.TokenIds, actual.TokenIds);
        Assert.Equal(expected.TopLogits, actual.TopLogits); // bit-exact ids and logits
        Assert.Equal(expected.Report.VisualTokensPerLayer, actual.Report.VisualTokensPerLayer);
    }

    private static long SettledMemory()
    {
        for (int i = 0; i < 3; i++) { GC.Collect(); GC.WaitForPendingFinalizers(); }
        return GC.GetTotalMemory(forceFullCollection: true);
    }

    /// <summary>
    /// 80 requests at once on one model: 56 ordinary ones (8 unique method/budget mixes × 4 images, some
    /// repeated), 16 cancelled (8 by CancelAfter while queued or computing, which may also finish first, and 8 by their
    /// reader after their first streamed token, which always ends in OperationCanceledException), 8 with bad input (undecodable image bytes, an empty question, an infeasible budget, too many
    /// tokens). Every request that was not cancelled matches its serial run bit for bit; bad ones fail
    /// with their own exception; the model answers correctly afterwards; managed memory returns to baseline.
    /// </summary>
    [Fact]
    public async Task Eighty_concurrent_requests_with_cancellations_and_bad_inputs()
    {
        var model = fx.Model;
        const int unique = 16;
        // Serial references (this also warms the vision cache and the JIT, so the baseline is steady state).
        var serial = new VisionAnswer[unique];
        for (int k = 0; k < unique; k++) serial[k] = await model.AskAsync(Request(k));
        // Warm the concurrent path too: the GEMM rents its packing buffers from ArrayPool.Shared, which keeps
        // a few per thread-pool thread; a concurrent warm-up fills those before the baseline is taken.
        for (int round = 0; round < 2; round++)
            await Task.WhenAll(Enumerable.Range(0, 2 * unique).Select(k => Task.Run(() => model.AskAsync(Request(k)))));
        long baseline = SettledMemory();

        var sw = Stopwatch.StartNew();
        var tasks = new List<Task<(string Kind, int Key, object Outcome)>>();
        int active = 0, maxActive = 0;
        var intervals = new ConcurrentBag<(double Start, double End)>();
        async Task<(string, int, object)> Ordinary(int key)
        {
            var a = await model.AskAsync(Request(key));
            double end = sw.Elapsed.TotalMilliseconds;
            intervals.Add((end - a.Timings.TotalMs, end));
            return ("ok", key, a);
        }
        async Task<(string, int, object)> CancelAfter(int key, int ms)
        {
            using var cts = new CancellationTokenSource();
            cts.CancelAfter(ms);
            try { return ("cancel-after", key, await model.AskAsync(Request(key), cts.Token)); }
            catch (OperationCanceledException e) { return ("cancel-after", key, e); }
        }
        async Task<(string, int, object)> CancelWhileStreaming(int key)
        {
            using var cts = new CancellationTokenSource();
            VisionAnswer? answer = null;
            try
            {
                await foreach (var chunk in model.StreamAsync(Request(key), cts.Token))
                {
                    if (chunk.TokenId is not null) cts.Cancel(); // first token out: cancel the rest
                    answer = chunk.Answer ?? answer;
                }
                return ("cancel-streaming", key, answer!);
            }
            catch (OperationCanceledException e) { return ("cancel-streaming", key, e); }
        }
        async Task<(string, int, object)> Bad(int i)
        {
            var row = TestData.Dev[i % 4];
            var good = Request(i);
            VisionRequest bad = (i % 4) switch
            {
                0 => good with { Images = [ImageInput.FromBytes(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 1, 2, 3 })] },
                1 => VisionRequest.Create("   ", ImageInput.FromFile(TestData.Image(row.Image))) with { Generation = good.Generation },
                2 => good with { Pruning = new PruningOptions { Method = PruningMethod.FastV, Budget = 2 } },
                _ => good with { Generation = new GenerationOptions { MaxNewTokens = 100_000 } },
            };
            try { await model.AskAsync(bad); return ("bad", i, "no error"); }
            catch (Exception e) { return ("bad", i, e); }
        }

        var rnd = new Random(12345);
        var plan = new List<Func<Task<(string, int, object)>>>();
        for (int i = 0; i < 56; i++) { int k = i % unique; plan.Add(() => Ordinary(k)); }
        for (int i = 0; i < 8; i++) { int k = rnd.Next(unique), ms = 5 + rnd.Next(600); plan.Add(() => CancelAfter(k, ms)); }
        for (int i = 0; i < 8; i++) { int k = rnd.Next(unique); plan.Add(() => CancelWhileStreaming(k)); }
        for (int i = 0; i < 8; i++) { int k = i; plan.Add(() => Bad(k)); }
        foreach (var start in plan.OrderBy(_ => rnd.Next()))
            tasks.Add(Task.Run(async () =>
            {
                int now = Interlocked.Increment(ref active);
                InterlockedMax(ref maxActive, now);
                try { return await start(); } finally { Interlocked.Decrement(ref active); }
            }));
        var results = await Task.WhenAll(tasks);
        double wallMs = sw.Elapsed.TotalMilliseconds;

        int completed = 0, cancelled = 0, bad = 0;
        foreach (var (kind, key, outcome) in results)
        {
            switch (kind, outcome)
            {
                case ("bad", Exception e):
                    bad++;
                    Assert.True((key % 4) switch
                    {
                        0 => e is ImageDecodeException,
                        1 => e is ArgumentException && e.Message.Contains("empty"),
                        2 => e is InfeasibleBudgetException,
                        _ => e is ArgumentOutOfRangeException && e.Message.Contains("MaxNewTokens"),
                    }, $"bad input {key}: {e}");
                    break;
                case ("bad", _):
                    Assert.Fail($"bad input {key} was answered");
                    break;
                case (_, OperationCanceledException):
                    Assert.NotEqual("ok", kind);
                    cancelled++;
                    break;
                case ("cancel-streaming", _):
                    Assert.Fail($"streaming request {key} was cancelled by its reader but ended with {outcome}");
                    break;
                case (_, VisionAnswer a):
                    completed++;
                    AssertSame(serial[key], a, $"{kind} request {key}");
                    break;
                default:
                    Assert.Fail($"{kind} {key}: unexpected outcome {outcome}");
                    break;
            }
        }
        // The gate held: the answers' own compute times (queueing excluded) add up to at most two computing at
        // any moment; with k computing at once they would add up to about k × the wall time.
        double computeMs = intervals.Sum(i => i.End - i.Start);
        Assert.True(computeMs <= 2 * wallMs + 50, $"compute time {computeMs:0} ms in {wallMs:0} ms wall: more than 2 requests computed at once");
        double maxOverlap = computeMs / wallMs;

        // Afterwards: correct answers, and the same bad inputs still fail cleanly.
        for (int k = 0; k < unique; k += 3) AssertSame(serial[k], await model.AskAsync(Request(k)), $"after-storm request {k}");
        await Assert.ThrowsAsync<ImageDecodeException>(() => model.AskAsync(Request(0) with { Images = [ImageInput.FromBytes(new byte[] { 1, 2, 3 })] }));
        AssertSame(serial[1], await model.AskAsync(Request(1)), "after a failed request");

        // Drop this test's own references to the answers before measuring.
        int total = results.Length;
        results = null!; tasks.Clear(); intervals.Clear();
        long after = SettledMemory();
        // Tolerance: one request's KV cache is 8 layers × ~591 positions × 192 × 2 (K,V) × 4 B ≈ 7.3 MB and a
        // vision-cache entry about 0.3 MB. Observed noise after the warm-up is 0-2 MB (pooled GEMM buffers of
        // thread-pool threads the storm added); 4 MB is above that noise yet under one leaked KV cache, and
        // leaking the storm's ~70 KV caches would be ~500 MB.
        const long tolerance = 4L << 20;
        output.WriteLine($"{total} requests in {wallMs:0} ms (max {maxActive} in flight, {maxOverlap:0.00} computing on average): " +
                         $"{completed} completed identical to serial, {cancelled} cancelled, {bad} bad inputs refused; " +
                         $"managed memory {baseline:N0} B before, {after:N0} B after (Δ {after - baseline:N0} B, tolerance {tolerance:N0} B)");
        // The 8 readers that cancel are cancelled whatever the timing (the stream checks the caller's token before every chunk).
        Assert.True(cancelled >= 8, $"only {cancelled} requests were really cancelled");
        Assert.Equal(8, bad);
        Assert.Equal(total - cancelled - bad, completed);
        Assert.True(maxActive >= 64, $"only {maxActive} requests were in flight at once");
        Assert.True(after - baseline < tolerance, $"managed memory grew by {after - baseline:N0} bytes ({baseline:N0} -> {after:N0})");
    }

    private static void InterlockedMax(ref int target, int value)
    {
        int seen;
        while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen) { }
    }
}
