namespace AutoPrune.Compute;

/// <summary>
/// Cancels token sources at their deadlines from one dedicated background thread instead of a thread-pool timer
/// (<c>new CancellationTokenSource(delay)</c>), whose callback waits for a free pool thread: in a host that keeps the
/// pool's threads blocked, a request timeout fired seconds late, and the compute thread, which checks its token at
/// every layer and token, went on meanwhile. <see cref="CancellationTokenSource.Cancel()"/> runs the callbacks of
/// linked sources synchronously, so a request's linked token is cancelled on this thread too.
/// </summary>
internal sealed class DeadlineThread
{
    /// <summary>The process-wide instance; its thread starts with the first deadline.</summary>
    public static DeadlineThread Shared { get; } = new();

    private readonly PriorityQueue<Entry, long> _queue = new();
    private readonly object _lock = new();
    private Thread? _thread;

    /// <summary>
    /// Cancels <paramref name="source"/> once <paramref name="delay"/> has passed, unless the returned handle is disposed
    /// first (dispose it before the source).
    /// </summary>
    public IDisposable CancelAfter(CancellationTokenSource source, TimeSpan delay)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfLessThan(delay, TimeSpan.Zero);
        var entry = new Entry(this, source);
        long due = System.Diagnostics.Stopwatch.GetTimestamp() + (long)Math.Min(delay.TotalSeconds * System.Diagnostics.Stopwatch.Frequency, long.MaxValue / 4);
        lock (_lock)
        {
            _queue.Enqueue(entry, due);
            if (_thread is null)
            {
                _thread = new Thread(Run) { IsBackground = true, Name = "AutoPrune deadlines" };
                _thread.Start();
            }
            Monitor.Pulse(_lock);
        }
        return entry;
    }

    private void Run()
    {
        while (true)
        {
            Entry due;
            lock (_lock)
            {
                while (true)
                {
                    if (_queue.TryPeek(out _, out long at))
                    {
                        long wait = at - System.Diagnostics.Stopwatch.GetTimestamp();
                        if (wait <= 0)
                        {
                            due = _queue.Dequeue();
                            break;
                        }
                        Monitor.Wait(_lock, TimeSpan.FromSeconds(Math.Min((double)wait / System.Diagnostics.Stopwatch.Frequency, 3600)));
                    }
                    else Monitor.Wait(_lock);
                }
            }
            if (due.Disposed) continue;
            try { due.Source.Cancel(); }
            catch (ObjectDisposedException) { }   // disposed between the check and the cancel: nothing left to stop
            catch (AggregateException) { }        // a callback of the caller's threw; the source is cancelled all the same
        }
    }

    /// <summary>How many deadlines are waiting (a counter for tests: a disposed handle leaves at once).</summary>
    public int Pending
    {
        get { lock (_lock) return _queue.Count; }
    }

    private sealed class Entry(DeadlineThread owner, CancellationTokenSource source) : IDisposable
    {
        public CancellationTokenSource Source { get; } = source;
        private volatile bool _disposed;
        public bool Disposed => _disposed;

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            lock (owner._lock) owner._queue.Remove(this, out _, out _);
        }
    }
}
