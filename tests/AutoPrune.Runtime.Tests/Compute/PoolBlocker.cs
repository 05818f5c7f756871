namespace AutoPrune.Tests.Compute;

/// <summary>
/// Queues more blocking work items than the thread pool has threads (with a margin for those it adds meanwhile); a
/// WaitHandle wait, like the test host's own, is not one the pool compensates for. Disposing releases them and waits
/// until every one has run, so none is left to touch a disposed handle after the test.
/// </summary>
internal static class PoolBlocker
{
    public static IDisposable BlockEveryPoolThread()
    {
        var release = new ManualResetEvent(false);
        int blockers = ThreadPool.ThreadCount + 64;
        var done = new CountdownEvent(blockers);
        for (int i = 0; i < blockers; i++)
            ThreadPool.UnsafeQueueUserWorkItem(_ =>
            {
                release.WaitOne(TimeSpan.FromSeconds(60));
                done.Signal();
            }, null);
        return new Release(release, done);
    }

    private sealed class Release(ManualResetEvent release, CountdownEvent done) : IDisposable
    {
        public void Dispose()
        {
            release.Set();
            // The events are left to the collector if a blocker is still queued after this: it must not find them disposed.
            if (done.Wait(TimeSpan.FromSeconds(60)))
            {
                release.Dispose();
                done.Dispose();
            }
        }
    }
}
