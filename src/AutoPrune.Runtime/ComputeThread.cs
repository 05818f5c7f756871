namespace AutoPrune;

/// <summary>
/// Runs a request's compute on a dedicated thread (<see cref="TaskCreationOptions.LongRunning"/>), not as a thread-pool
/// work item: compute that holds pool threads for seconds starves the timers and cancellation callbacks that run on the
/// pool, so a <c>CancelAfter</c> or a <c>RequestTimeout</c> would fire late.
/// </summary>
internal static class ComputeThread
{
    public static Task Run(Action body)
        => Task.Factory.StartNew(body, CancellationToken.None, TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
}
