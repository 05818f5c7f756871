using System.Runtime.CompilerServices;

namespace AutoPrune.Tests;

/// <summary>
/// Gives back the two thread-pool threads the test host keeps blocked: vstest's message loop (a synchronous socket poll)
/// and xunit's assembly runner (a wait handle) each hold a pool thread for the whole run. The pool counts them as busy
/// workers, so on a two-core machine (the pool's minimum is the core count) no worker was left for continuations and
/// timer callbacks, and with the CPU saturated the pool waits about two seconds before it adds one: the latency tests saw
/// those seconds (dotnet-stack: both workers idle, work pending, nothing dequeued). An application's host does not block
/// pool threads like this; the engine itself blocks none (its parallel loops run on <see cref="Compute.ComputeScheduler"/>).
/// </summary>
internal static class TestHostThreadPool
{
    [ModuleInitializer]
    internal static void ReplaceTheBlockedThreads()
    {
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(workers + 2, io);
    }
}
