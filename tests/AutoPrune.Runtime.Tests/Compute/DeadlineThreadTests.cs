using AutoPrune.Compute;
using AutoPrune.Tests.Reliability;
using Xunit;

namespace AutoPrune.Tests.Compute;

/// <summary>
/// Request timeouts fire from their own thread. A thread-pool timer (<c>new CancellationTokenSource(delay)</c>) cancels
/// from a pool thread, which under a blocked pool is the next one the pool injects (about half a second later here);
/// the first test fails with it.
/// </summary>
[Collection(SerialReliability.Name)]
public sealed class DeadlineThreadTests
{
    [Fact]
    public void A_deadline_cancels_while_every_pool_thread_is_blocked()
    {
        using var source = new CancellationTokenSource();
        bool? onPoolThread = null;
        source.Token.Register(() => onPoolThread = Thread.CurrentThread.IsThreadPoolThread);
        bool cancelled;
        using (PoolBlocker.BlockEveryPoolThread())
        {
            using var handle = DeadlineThread.Shared.CancelAfter(source, TimeSpan.FromMilliseconds(50));
            cancelled = source.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(20));
        }
        Assert.True(cancelled, "the deadline waited for the blocked thread pool");
        Assert.False(onPoolThread, "the source was cancelled from a thread-pool thread");
    }

    [Fact]
    public void A_handle_disposed_in_time_cancels_nothing_and_leaves_the_queue()
    {
        using var source = new CancellationTokenSource();
        int before = DeadlineThread.Shared.Pending;
        var handle = DeadlineThread.Shared.CancelAfter(source, TimeSpan.FromMilliseconds(200));
        Assert.Equal(before + 1, DeadlineThread.Shared.Pending);
        handle.Dispose();
        Assert.Equal(before, DeadlineThread.Shared.Pending);
        // A later deadline that does fire shows the thread has passed the disposed one's time.
        using var later = new CancellationTokenSource();
        using (DeadlineThread.Shared.CancelAfter(later, TimeSpan.FromMilliseconds(400)))
            Assert.True(later.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(20)));
        Assert.False(source.IsCancellationRequested);
    }

    [Fact]
    public void Deadlines_fire_in_time_order_whatever_the_order_they_were_set()
    {
        var order = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var sources = new[] { new CancellationTokenSource(), new CancellationTokenSource(), new CancellationTokenSource() };
        for (int i = 0; i < sources.Length; i++)
        {
            int n = i;
            sources[i].Token.Register(() => order.Enqueue(n));
        }
        var handles = new[]
        {
            DeadlineThread.Shared.CancelAfter(sources[0], TimeSpan.FromMilliseconds(300)),
            DeadlineThread.Shared.CancelAfter(sources[1], TimeSpan.FromMilliseconds(100)),
            DeadlineThread.Shared.CancelAfter(sources[2], TimeSpan.FromMilliseconds(200)),
        };
        Assert.True(sources[0].Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(20)));
        Assert.Equal(new[] { 1, 2, 0 }, order.ToArray());
        foreach (var h in handles) h.Dispose();
        foreach (var s in sources) s.Dispose();
    }

    [Fact]
    public void A_negative_delay_is_refused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => DeadlineThread.Shared.CancelAfter(new CancellationTokenSource(), TimeSpan.FromMilliseconds(-1)));
}
