using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using AutoPrune.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// The one ordered stream of device work of a model: a stream created for it (on CUDA a non-blocking stream, which
/// cuBLAS is bound to and which CUDA graphs can capture; ILGPU's default stream is the legacy NULL stream, which cannot
/// be captured), and every transfer between host and device, each counted in <see cref="Counters"/>.
/// </summary>
/// <remarks>
/// Uploads are asynchronous: the host does not wait (on CUDA a copy from pageable memory returns once the driver has
/// staged the data, so the source may be reused at once). A download waits for everything queued before it: that is
/// the only kind of host synchronisation the GPU path makes, and <see cref="Readback"/> lets several results come back
/// with one wait.
/// </remarks>
internal sealed class DeviceQueue : IDisposable
{
    private PageLockedArray1D<byte>? _staging;
    private List<Action>? _recording;

    public DeviceQueue(Accelerator accelerator, DeviceCounterSet? counters = null)
    {
        Accelerator = accelerator;
        Counters = counters ?? new DeviceCounterSet();
        Stream = accelerator.CreateStream();
    }

    public Accelerator Accelerator { get; }
    public AcceleratorStream Stream { get; }
    public DeviceCounterSet Counters { get; }

    /// <summary>The native CUDA stream (for cuBLAS and graph capture); IntPtr.Zero on ILGPU's CPU accelerator.</summary>
    public IntPtr NativeStream => Stream is CudaStream cuda ? cuda.StreamPtr : IntPtr.Zero;

    /// <summary>
    /// True while a CUDA graph is being captured on this stream: nothing may wait or copy from the host then, and the
    /// recorded work is not counted (the graph's launch is).
    /// </summary>
    public bool Capturing
    {
        get => Counters.Paused;
        internal set => Counters.Paused = value;
    }

    /// <summary>
    /// Every piece of device work goes through here: a kernel launch, a cuBLAS call, a device copy. It runs at once
    /// (on CUDA it is queued on <see cref="Stream"/>, and while a native graph is being captured the driver records it),
    /// except while an emulated graph is being recorded (<see cref="BeginRecording"/>): then it is kept, with the
    /// arguments it captured, to be replayed by <see cref="CudaGraph.Launch"/>.
    /// </summary>
    /// <remarks>
    /// Callers build <paramref name="work"/> from their arguments as they stand at the call and change none of them
    /// afterwards, so a kept launch replays with the values it was recorded with, as a CUDA graph's kernel node does.
    /// </remarks>
    public void Enqueue(Action work)
    {
        if (_recording is null) work();
        else _recording.Add(work);
    }

    /// <summary>
    /// Starts recording the device work enqueued from here (ILGPU's CPU accelerator, which has no stream capture): nothing
    /// runs, and nothing may wait for the device or copy from the host until <see cref="EndRecording"/>.
    /// </summary>
    internal void BeginRecording()
    {
        if (Capturing || _recording is not null) throw new InvalidOperationException("Bug: a graph is already being captured on this stream.");
        _recording = [];
        Capturing = true;
    }

    /// <summary>Ends a recording and returns the work it kept, in order.</summary>
    internal Action[] EndRecording()
    {
        var kept = _recording ?? throw new InvalidOperationException("Bug: no graph is being recorded on this stream.");
        _recording = null;
        Capturing = false;
        return [.. kept];
    }

    /// <summary>Copies <paramref name="src"/> to the start of <paramref name="dst"/> without waiting.</summary>
    public unsafe void Upload<T>(ArrayView<T> dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        if (src.Length == 0) return;
        NotCapturing("an upload from the host");
        if (dst.Length < src.Length)
            throw new ArgumentException($"Upload of {src.Length} elements into a {dst.Length}-element device view.");
        fixed (T* p = src)
            dst.SubView(0, src.Length).CopyFromCPUUnsafeAsync(Stream, ref Unsafe.AsRef<T>(p), src.Length);
        Counters.HostToDevice((long)src.Length * sizeof(T));
    }

    /// <summary>Copies the first <c>dst.Length</c> elements of <paramref name="src"/> to the host: one host synchronisation.</summary>
    public unsafe void Download<T>(ArrayView<T> src, Span<T> dst) where T : unmanaged
    {
        if (dst.Length == 0) return;
        NotCapturing("a download to the host");
        if (src.Length < dst.Length)
            throw new ArgumentException($"Download of {dst.Length} elements from a {src.Length}-element device view.");
        fixed (T* p = dst)
        {
            src.SubView(0, dst.Length).CopyToCPUUnsafeAsync(Stream, ref Unsafe.AsRef<T>(p), dst.Length);
            Stream.Synchronize();
        }
        Counters.DeviceToHost((long)dst.Length * sizeof(T));
        Counters.Sync();
    }

    public T[] Download<T>(ArrayView<T> src, long length) where T : unmanaged
    {
        var result = new T[length];
        Download(src, result.AsSpan());
        return result;
    }

    /// <summary>Device-to-device copy of <c>src.Length</c> elements into the start of <paramref name="dst"/>, queued (counted as a launch).</summary>
    public void Copy<T>(ArrayView<T> src, ArrayView<T> dst) where T : unmanaged
    {
        if (src.Length == 0) return;
        if (dst.Length < src.Length)
            throw new ArgumentException($"Copy of {src.Length} elements into a {dst.Length}-element device view.");
        var target = dst.SubView(0, src.Length);
        Counters.Launch();
        Enqueue(() => src.CopyTo(Stream, target));
    }

    /// <summary>Waits for everything queued (counted).</summary>
    public void Synchronize()
    {
        NotCapturing("a host synchronisation");
        Stream.Synchronize();
        Counters.Sync();
    }

    private void NotCapturing(string what)
    {
        if (Capturing) throw new InvalidOperationException($"Bug: {what} while a CUDA graph is being captured.");
    }

    /// <summary>
    /// Collects device results and brings them back together: each is copied (device to device) into one staging
    /// buffer, which then comes back in one copy with one host synchronisation.
    /// </summary>
    public Readback BeginReadback(DeviceArena arena) => new(this, arena);

    internal sealed class Readback(DeviceQueue queue, DeviceArena arena)
    {
        private readonly List<(long Offset, long Bytes, Action<ReadOnlySpan<byte>> Deliver)> _items = [];
        private readonly List<(Action<ArrayView<byte>> Copy, long Offset)> _copies = [];
        private long _bytes;

        /// <summary>Asks for <paramref name="length"/> elements of <paramref name="src"/>; <paramref name="deliver"/> gets them after <see cref="Flush"/>.</summary>
        public void Add<T>(ArrayView<T> src, long length, Action<T[]> deliver) where T : unmanaged
        {
            if (length == 0) { deliver([]); return; }
            long bytes = length * Unsafe.SizeOf<T>();
            long offset = (_bytes + 15) & ~15L;
            _bytes = offset + bytes;
            var view = src.SubView(0, length);
            _copies.Add((staging => queue.Copy(view, staging.SubView(offset, bytes).Cast<T>()), offset));
            _items.Add((offset, bytes, raw => deliver(MemoryMarshal.Cast<byte, T>(raw).ToArray())));
        }

        /// <summary>Copies everything asked for into the staging buffer and back: one download, one host synchronisation.</summary>
        public void Flush()
        {
            if (_items.Count == 0) return;
            using var staging = arena.Allocate<byte>(_bytes);
            foreach (var (copy, _) in _copies) copy(staging.View);
            var host = queue.StagingHost(_bytes);
            queue.DownloadStaging(staging.View, _bytes);
            foreach (var (offset, bytes, deliver) in _items) deliver(host.Span.Slice((int)offset, (int)bytes));
            _items.Clear();
            _copies.Clear();
            _bytes = 0;
        }
    }

    /// <summary>The page-locked host buffer results come back through (grown when needed; a growth counts as an allocation).</summary>
    private PageLockedArray1D<byte> StagingHost(long bytes)
    {
        if (_staging is null || _staging.Length < bytes)
        {
            _staging?.Dispose();
            _staging = Accelerator.AllocatePageLocked1D<byte>(Math.Max(bytes, 64 << 10));
            Counters.Allocation();
        }
        return _staging;
    }

    private void DownloadStaging(ArrayView<byte> src, long bytes)
    {
        NotCapturing("a download to the host");
        // Into page-locked memory the copy is truly asynchronous; the one wait below covers everything queued before it.
        src.SubView(0, bytes).CopyToCPUUnsafeAsync(Stream, ref MemoryMarshal.GetReference(_staging!.Span), bytes);
        Stream.Synchronize();
        Counters.DeviceToHost(bytes);
        Counters.Sync();
    }

    public void Dispose()
    {
        _staging?.Dispose();
        _staging = null;
        Stream.Dispose();
    }
}
