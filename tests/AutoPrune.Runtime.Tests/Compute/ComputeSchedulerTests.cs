using System.Collections.Concurrent;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Tests.Reliability;
using Xunit;

namespace AutoPrune.Tests.Compute;

/// <summary>The engine's parallel loops run on <see cref="ComputeScheduler"/>'s threads, never on the .NET thread pool.</summary>
public sealed class ComputeSchedulerTests
{
    [Fact]
    public void Loop_bodies_run_on_the_compute_threads_or_the_caller_never_on_the_pool()
    {
        var threads = new ConcurrentDictionary<int, (bool Pool, bool Compute)>();
        long before = ComputeScheduler.Shared.Executed;
        int callerId = 0;
        var caller = new Thread(() =>
        {
            callerId = Environment.CurrentManagedThreadId;
            Parallel.For(0, 64, ComputeScheduler.Options(), _ =>
            {
                threads[Environment.CurrentManagedThreadId] = (Thread.CurrentThread.IsThreadPoolThread, ComputeScheduler.IsComputeThread);
                Thread.SpinWait(20_000);
            });
        });
        caller.Start();
        caller.Join();
        Assert.All(threads, t => Assert.False(t.Value.Pool, $"thread {t.Key} is a pool thread"));
        Assert.All(threads, t => Assert.True(t.Key == callerId || t.Value.Compute, $"thread {t.Key} is neither the caller nor a compute thread"));
        Assert.True(ComputeScheduler.Shared.Executed > before, "no loop helper ran through the compute scheduler");
        if (Environment.ProcessorCount > 1) Assert.True(threads.Count > 1, "the loop ran on one thread only");
    }
}

/// <summary>Alone in the serial collection: one counts the scheduler's tasks, the other blocks the whole thread pool.</summary>
[Collection(SerialReliability.Name)]
public sealed class ComputeSchedulerSerialTests
{
    /// <summary>Alone in its collection, so the counter moves only for this request.</summary>
    [Fact]
    public async Task A_cpu_request_runs_its_loops_through_the_compute_scheduler()
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu" });
        long before = ComputeScheduler.Shared.Executed;
        var row = TestData.Dev[0];
        var answer = await model.AskAsync(VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with { Generation = new() { MaxNewTokens = 2 } });
        Assert.NotEmpty(answer.Text);
        Assert.True(ComputeScheduler.Shared.Executed > before, "the request's GEMMs, attention and resampling ran no loop on the compute scheduler");
    }

    /// <summary>
    /// A GEMM from a thread outside the pool finishes while every pool thread is blocked. On the thread pool its loop
    /// waited for a helper task queued behind the blocked work items (the pool adds a thread every half second or slower,
    /// and each new one takes a blocked item first): how a prefill stalled for seconds under load. It failed so before.
    /// </summary>
    [Fact]
    public void A_gemm_finishes_while_every_pool_thread_is_blocked()
    {
        const int m = 96, k = 256, n = 192;
        Assert.True((long)m * n * k >= Gemm.ParallelThresholdMacs, "the GEMM must be large enough to run in parallel");
        var rng = new Random(7);
        var a = Enumerable.Range(0, m * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var w = Enumerable.Range(0, n * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var c = new float[m * n];
        bool finished;
        using (PoolBlocker.BlockEveryPoolThread())
        {
            var caller = new Thread(() => Gemm.MatMulTransB(a, m, k, w, n, c));
            caller.Start();
            finished = caller.Join(TimeSpan.FromSeconds(20));
        }
        Assert.True(finished, "the GEMM waited on the blocked thread pool");
        for (int i = 0; i < m; i += 17)
            for (int j = 0; j < n; j += 13)
            {
                double s = 0;
                for (int t = 0; t < k; t++) s += (double)a[i * k + t] * w[j * k + t];
                Assert.Equal(s, c[i * n + j], 3);
            }
    }
}
