using System.Collections.Concurrent;

namespace AutoPrune.Compute;

/// <summary>
/// The threads the engine's parallel loops (GEMM parts, attention heads, image resampling) run on: a fixed set of
/// dedicated background threads, one per core, instead of the .NET thread pool.
/// </summary>
/// <remarks>
/// On the thread pool, a <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> called from a request's
/// compute thread (not a pool thread) queues its helper tasks to the pool's global queue, and at the end waits for every
/// helper it queued, started or not: a task in the global queue cannot be run inline by a thread outside the pool. When
/// the host keeps the pool's threads busy (an ASP.NET app under load, or two requests computing on a two-core machine
/// with the CPU saturated, where the pool does not add threads), a prefill stalled for seconds waiting for a pool thread to
/// pick up a helper that had nothing left to do. Here a helper that has not started is run inline by the waiting thread
/// (it finds no iterations left and returns at once), and the threads are never taken by the host's work.
/// </remarks>
internal sealed class ComputeScheduler : TaskScheduler
{
    /// <summary>The process-wide scheduler: <see cref="Environment.ProcessorCount"/> threads, started on first use.</summary>
    public static ComputeScheduler Shared { get; } = new(Math.Max(1, Environment.ProcessorCount));

    private readonly BlockingCollection<Task> _queue = new(new ConcurrentQueue<Task>());
    private readonly int _threads;
    private int _started;
    private long _executed;

    private ComputeScheduler(int threads) => _threads = threads;

    public override int MaximumConcurrencyLevel => _threads;

    /// <summary>How many tasks this scheduler has run, on its threads or inline (a counter for tests).</summary>
    public long Executed => Interlocked.Read(ref _executed);

    /// <summary>Options for <see cref="Parallel"/> loops that run here, at most <paramref name="maxDegree"/> at a time.</summary>
    public static ParallelOptions Options(int maxDegree = -1)
        => new() { TaskScheduler = Shared, MaxDegreeOfParallelism = maxDegree < 1 ? Shared._threads : Math.Min(maxDegree, Shared._threads) };

    /// <summary>Whether the calling thread is one of this scheduler's.</summary>
    public static bool IsComputeThread => t_worker;

    [ThreadStatic] private static bool t_worker;

    protected override void QueueTask(Task task)
    {
        if (Volatile.Read(ref _started) == 0) StartThreads();
        _queue.Add(task);
    }

    private void StartThreads()
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) return;
        for (int i = 0; i < _threads; i++)
            new Thread(Work) { IsBackground = true, Name = $"AutoPrune compute {i}" }.Start();
    }

    private void Work()
    {
        t_worker = true;
        foreach (var task in _queue.GetConsumingEnumerable()) Run(task);
    }

    private bool Run(Task task)
    {
        if (!TryExecuteTask(task)) return false; // already run inline by a thread waiting for it
        Interlocked.Increment(ref _executed);
        return true;
    }

    /// <summary>
    /// Any thread waiting for a task of ours runs it itself when it has not started: a loop's helper that is still queued
    /// then costs nothing. A task runs once; the copy left in the queue is skipped.
    /// </summary>
    protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => Run(task);

    protected override IEnumerable<Task> GetScheduledTasks() => _queue.ToArray();
}
