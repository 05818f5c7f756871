using AutoPrune.Compute.Cuda;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// A CUDA graph: the kernels and cuBLAS calls a piece of host code enqueues on the model's stream, captured once and
/// replayed with one launch. Everything the recorded code touches must stay where it was (buffers are not reallocated,
/// sizes do not change, values that change between replays are read from device memory), and it may neither wait for
/// the device nor copy from the host.
/// </summary>
internal sealed class CudaGraph : IDisposable
{
    private readonly DeviceQueue _queue;
    private IntPtr _exec;

    private CudaGraph(DeviceQueue queue, IntPtr exec)
    {
        _queue = queue;
        _exec = exec;
    }

    /// <summary>The message of the error <see cref="Capture"/> gives on a device that cannot capture graphs.</summary>
    public const string NeedsCuda = "CUDA graphs (ModelOptions.CudaGraphs, --cuda-graphs) need a CUDA GPU: ILGPU's CPU accelerator (device ilgpu-cpu) cannot capture a stream into a graph. Run without CUDA graphs there.";

    /// <summary>Records what <paramref name="record"/> enqueues on <paramref name="queue"/>'s stream (nothing runs) and instantiates it.</summary>
    public static CudaGraph Capture(DeviceQueue queue, Action record)
    {
        if (queue.NativeStream == IntPtr.Zero) throw new NotSupportedException(NeedsCuda);
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
        try { return new CudaGraph(queue, CudaDriver.Instantiate(graph)); }
        finally { CudaDriver.DestroyGraph(graph); }
    }

    /// <summary>Replays the graph on the stream (one launch; the host does not wait).</summary>
    public void Launch()
    {
        ObjectDisposedException.ThrowIf(_exec == IntPtr.Zero, this);
        CudaDriver.Launch(_exec, _queue.NativeStream);
        _queue.Counters.Launch();
    }

    public void Dispose()
    {
        var e = _exec;
        _exec = IntPtr.Zero;
        CudaDriver.DestroyExec(e);
    }
}
