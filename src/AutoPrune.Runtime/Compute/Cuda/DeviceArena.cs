using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Allocates device buffers, counts their bytes, and keeps released scratch buffers for reuse. On CUDA, allocating
/// costs tens of microseconds and freeing synchronises the whole device, so a request that allocated and freed its
/// KV caches and scratch buffers would stall the GPU dozens of times; with the pool a repeated request of the same
/// shape allocates nothing. Scratch sizes are rounded up to size classes (powers of two up to 1 MiB, then 2 MiB
/// steps) so slightly different prompt lengths share buffers. Weights are allocated exactly and never pooled.
/// </summary>
internal sealed class DeviceArena(Compute.Cuda.DeviceQueue queue) : IDisposable
{
    private readonly Accelerator accelerator = queue.Accelerator;

    private readonly object _lock = new();
    private readonly Dictionary<(Type, long), Stack<MemoryBuffer>> _free = [];
    private readonly LinkedList<(Type Type, long Length, MemoryBuffer Buffer)> _freeOrder = new(); // oldest first, for eviction
    private long _live, _pooled, _peak, _allocations;

    public Accelerator Accelerator => accelerator;

    /// <summary>The stream uploads and downloads go through (and where allocations are counted).</summary>
    public Compute.Cuda.DeviceQueue Queue => queue;
    public Diagnostics.DeviceCounterSet Counters => queue.Counters;

    /// <summary>Most bytes the pool keeps for reuse; beyond it the oldest released buffers are freed.</summary>
    public long PoolLimitBytes { get; set; } = 2L << 30;

    /// <summary>Bytes in buffers handed out and not yet released.</summary>
    public long CurrentBytes { get { lock (_lock) return _live; } }

    /// <summary>Bytes kept by the pool for reuse.</summary>
    public long PooledBytes { get { lock (_lock) return _pooled; } }

    /// <summary>Most bytes held on the device at once (in use + pooled) since creation or <see cref="ResetPeak"/>.</summary>
    public long PeakBytes { get { lock (_lock) return _peak; } }

    /// <summary>Device allocations made so far (pool hits do not count).</summary>
    public long Allocations { get { lock (_lock) return _allocations; } }

    public void ResetPeak() { lock (_lock) _peak = _live + _pooled; }

    /// <summary>A scratch buffer of at least <paramref name="length"/> elements, from the pool when one of its size class is free.</summary>
    public DeviceBuffer<T> Allocate<T>(long length) where T : unmanaged
    {
        int size = Marshal.SizeOf<T>();
        long classLength = ClassBytes(Math.Max(1, length) * size) / size;
        lock (_lock)
        {
            if (_free.TryGetValue((typeof(T), classLength), out var stack) && stack.Count > 0)
            {
                var reused = (MemoryBuffer1D<T, Stride1D.Dense>)stack.Pop();
                for (var node = _freeOrder.Last; node is not null; node = node.Previous)
                    if (ReferenceEquals(node.Value.Buffer, reused)) { _freeOrder.Remove(node); break; }
                long bytes = classLength * size;
                _pooled -= bytes;
                _live += bytes;
                return new DeviceBuffer<T>(this, reused, length, bytes, pooled: true);
            }
        }
        return NewBuffer<T>(classLength, length, pooled: true);
    }

    /// <summary>Uploads per-request data into a pooled scratch buffer (returned to the pool when disposed).</summary>
    public DeviceBuffer<T> UploadScratch<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var b = Allocate<T>(data.Length);
        b.Upload(data);
        return b;
    }

    /// <summary>Uploads data into an exactly sized buffer that is freed, not pooled, when disposed (weights, constants).</summary>
    public DeviceBuffer<T> Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var b = NewBuffer<T>(Math.Max(1, data.Length), data.Length, pooled: false);
        b.Upload(data);
        return b;
    }

    private DeviceBuffer<T> NewBuffer<T>(long allocLength, long length, bool pooled) where T : unmanaged
    {
        long bytes = allocLength * Marshal.SizeOf<T>();
        var buffer = accelerator.Allocate1D<T>(allocLength);
        Counters.Allocation();
        lock (_lock)
        {
            _allocations++;
            _live += bytes;
            _peak = Math.Max(_peak, _live + _pooled);
        }
        return new DeviceBuffer<T>(this, buffer, length, bytes, pooled);
    }

    private static long ClassBytes(long bytes) => Compute.SizeClasses.Bytes(bytes);

    internal void Release<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, long bytes, bool pooled) where T : unmanaged
    {
        List<MemoryBuffer>? evicted = null;
        lock (_lock)
        {
            _live -= bytes;
            if (!pooled || bytes > PoolLimitBytes)
            {
                evicted = [buffer];
            }
            else
            {
                var key = (typeof(T), buffer.Length);
                if (!_free.TryGetValue(key, out var stack)) _free[key] = stack = new Stack<MemoryBuffer>();
                stack.Push(buffer);
                _freeOrder.AddLast((typeof(T), buffer.Length, buffer));
                _pooled += bytes;
                while (_pooled > PoolLimitBytes && _freeOrder.First is { } oldest)
                {
                    _freeOrder.RemoveFirst();
                    var s = _free[(oldest.Value.Type, oldest.Value.Length)];
                    var items = s.ToArray().Where(b => !ReferenceEquals(b, oldest.Value.Buffer)).Reverse().ToArray();
                    s.Clear();
                    foreach (var b in items) s.Push(b);
                    _pooled -= oldest.Value.Buffer.LengthInBytes;
                    (evicted ??= []).Add(oldest.Value.Buffer);
                }
            }
        }
        if (evicted is not null) foreach (var b in evicted) b.Dispose();
    }

    /// <summary>Frees every pooled buffer (buffers in use are unaffected).</summary>
    public void Trim()
    {
        List<MemoryBuffer> all;
        lock (_lock)
        {
            all = _freeOrder.Select(f => f.Buffer).ToList();
            _freeOrder.Clear();
            _free.Clear();
            _pooled = 0;
        }
        foreach (var b in all) b.Dispose();
    }

    public void Dispose() => Trim();
}

/// <summary>A device buffer of <see cref="Length"/> elements (possibly more allocated) owned by a <see cref="DeviceArena"/>.</summary>
internal sealed class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    private readonly DeviceArena _arena;
    private readonly long _bytes;
    private readonly bool _pooled;
    private MemoryBuffer1D<T, Stride1D.Dense>? _buffer;

    internal DeviceBuffer(DeviceArena arena, MemoryBuffer1D<T, Stride1D.Dense> buffer, long length, long bytes, bool pooled)
    {
        _arena = arena; _buffer = buffer; Length = length; _bytes = bytes; _pooled = pooled;
    }

    public long Length { get; }

    /// <summary>The first <see cref="Length"/> elements.</summary>
    public ArrayView<T> View => (_buffer ?? throw new ObjectDisposedException(nameof(DeviceBuffer<T>))).View.SubView(0, Math.Max(1, Length));

    public ArrayView<T> Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Slice [{offset}, {offset + length}) of a {Length}-element device buffer.");
        return View.SubView(offset, length);
    }

    /// <summary>Copies elements [offset, offset + length) to a new host array (waits for queued work: a host synchronisation).</summary>
    public T[] Download(long offset, long length)
    {
        var result = new T[length];
        if (length > 0) _arena.Queue.Download(Slice(offset, length), result.AsSpan());
        return result;
    }

    public void Upload(ReadOnlySpan<T> data, long offset = 0)
    {
        if (data.Length == 0) return;
        _arena.Queue.Upload(Slice(offset, data.Length), data);
    }

    /// <summary>Returns the buffer to the arena's pool (scratch) or frees it (weights).</summary>
    public void Dispose()
    {
        var b = Interlocked.Exchange(ref _buffer, null);
        if (b is not null) _arena.Release(b, _bytes, _pooled);
    }
}

/// <summary>A scratch buffer that grows (never shrinks) to the largest size asked for.</summary>
internal sealed class Scratch<T>(DeviceArena arena) : IDisposable where T : unmanaged
{
    private DeviceBuffer<T>? _buffer;

    /// <summary>A view of at least <paramref name="length"/> elements (contents undefined after a growth).</summary>
    public ArrayView<T> Get(long length)
    {
        if (_buffer is null || _buffer.Length < length)
        {
            _buffer?.Dispose();
            _buffer = arena.Allocate<T>(Math.Max(length, 1));
        }
        return _buffer.Slice(0, length);
    }

    public DeviceBuffer<T> Buffer => _buffer ?? throw new InvalidOperationException("Scratch buffer used before Get.");

    public void Dispose() => _buffer?.Dispose();
}
