using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// A CUDA graph: the kernels and cuBLAS calls a piece of host code enqueues on the model's stream, captured once and
/// replayed with one launch. Everything the recorded code touches must stay where it was (buffers are not reallocated,
/// sizes do not change, values that change between replays are read from device memory), and it may neither wait for
/// the device nor copy from the host.
/// </summary>
/// <remarks>
/// On ILGPU's CPU accelerator, which cannot capture a stream, the graph is emulated: the work enqueued through
/// <see cref="DeviceQueue.Enqueue"/> is recorded with the arguments it was given (nothing runs while recording, as
/// nothing runs during a capture) and replayed in order. Code that passed a host value that changes between steps
/// would replay the recorded value there as on a GPU, so the emulation shows what a real graph would compute.
/// </remarks>
internal sealed class CudaGraph : IDisposable
{
    private readonly DeviceQueue _queue;
    private IntPtr _exec;
    private Action[]? _recorded;
    private bool _disposed;

    private CudaGraph(DeviceQueue queue, IntPtr exec, Action[]? recorded)
    {
        _queue = queue;
        _exec = exec;
        _recorded = recorded;
    }

    /// <summary>The message of the error a CUDA graph gives on the CPU backend.</summary>
    public const string NeedsCuda = "CUDA graphs (ModelOptions.CudaGraphs, --cuda-graphs) need the GPU code path: device cuda, or ilgpu-cpu, which emulates them by replaying the recorded launches. The CPU backend has no graphs; run without CUDA graphs there.";

    /// <summary>True where this graph replays recorded work on ILGPU's CPU accelerator instead of a native CUDA graph.</summary>
    public bool Emulated => _recorded is not null;

    /// <summary>Work items the emulated graph replays (0 for a native graph).</summary>
    public int RecordedWork => _recorded?.Length ?? 0;

    /// <summary>Records what <paramref name="record"/> enqueues on <paramref name="queue"/>'s stream (nothing runs) and instantiates it.</summary>
    public static CudaGraph Capture(DeviceQueue queue, Action record)
    {
        if (queue.NativeStream == IntPtr.Zero)
        {
            if (queue.Accelerator.AcceleratorType != AcceleratorType.CPU) throw new NotSupportedException(NeedsCuda);
            queue.BeginRecording();
            Action[] recorded;
            try { record(); }
            finally { recorded = queue.EndRecording(); }
            return new CudaGraph(queue, IntPtr.Zero, recorded);
        }
        CudaDriver.BeginCapture(queue.NativeStream);
        queue.Capturing = true;
        IntPtr graph = IntPtr.Zero;
        try
        {
            record();
        }
        catch
        {
            queue.Capturing = false;
            try { CudaDriver.DestroyGraph(CudaDriver.EndCapture(queue.NativeStream)); } catch (InvalidOperationException) { } // the first error is the one to report
            throw;
        }
        queue.Capturing = false;
        graph = CudaDriver.EndCapture(queue.NativeStream);
        try { return new CudaGraph(queue, CudaDriver.Instantiate(graph), null); }
        finally { CudaDriver.DestroyGraph(graph); }
    }

    /// <summary>Replays the graph on the stream (one launch; the host does not wait).</summary>
    public void Launch()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_recorded is { } work)
        {
            foreach (var w in work) w();
        }
        else
        {
            CudaDriver.Launch(_exec, _queue.NativeStream);
        }
        _queue.Counters.Launch();
    }

    public void Dispose()
    {
        _disposed = true;
        if (_recorded is not null) { _recorded = []; return; }
        var e = _exec;
        _exec = IntPtr.Zero;
        CudaDriver.DestroyExec(e);
    }
}
