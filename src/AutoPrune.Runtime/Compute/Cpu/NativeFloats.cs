using System.Runtime.InteropServices;

namespace AutoPrune.Compute.Cpu;

/// <summary>
/// Unmanaged fp32 storage for a request's large, short-lived buffers (the KV cache, the prefill's working rows), given
/// back when disposed: to its <see cref="HostMemoryPool"/>, which hands it to the next request, or freed. A managed
/// array of that size lives on the large-object heap until a full collection, so request after request a 7B model's
/// 656 MB cache and ~100 MB of scratch piled up there (the resident set grew by ~2 GB over a few requests). The memory
/// is not zeroed: every user writes what it reads.
/// </summary>
internal sealed unsafe class NativeFloats : IDisposable
{
    private readonly HostMemoryPool? _pool;
    private readonly long _blockBytes;
    private float* _p;

    /// <summary>An unpooled buffer of <paramref name="length"/> floats, freed when disposed.</summary>
    public NativeFloats(long length) : this(null, Allocate(CheckLength(length) * sizeof(float)), (int)length, length * sizeof(float))
    {
    }

    internal NativeFloats(HostMemoryPool? pool, float* block, int length, long blockBytes)
    {
        _pool = pool;
        _p = block;
        _blockBytes = blockBytes;
        Length = length;
        if (PoisonNewBuffers) Span.Fill(float.NaN);
    }

    public int Length { get; }

    /// <summary>Bytes in use (<see cref="Length"/> floats; a pooled block may be larger).</summary>
    public long Bytes => Length * (long)sizeof(float);

    /// <summary>The whole buffer (an <see cref="ObjectDisposedException"/> once disposed).</summary>
    public Span<float> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(_p is null, this);
            return new Span<float>(_p, Length);
        }
    }

    public Span<float> Slice(int start, int length) => Span.Slice(start, length);

    /// <summary>
    /// Tests set this: every buffer handed out (new or reused) starts as NaN, so code that read a value nobody wrote
    /// would show NaN logits instead of passing on whatever the memory held.
    /// </summary>
    internal static bool PoisonNewBuffers { get; set; }

    internal static long CheckLength(long length) => length is >= 0 and <= int.MaxValue
        ? length : throw new ArgumentOutOfRangeException(nameof(length), length, "A buffer holds 0 to 2^31 - 1 floats.");

    internal static float* Allocate(long bytes) => (float*)NativeMemory.Alloc((nuint)Math.Max(4, bytes));

    public void Dispose()
    {
        var p = _p;
        if (p is null) return;
        _p = null;
        GC.SuppressFinalize(this);
        if (_pool is null) NativeMemory.Free(p);
        else _pool.Return(p, _blockBytes);
    }

    /// <summary>Not disposed (a bug): the block is freed, not pooled, and the pool stops counting it.</summary>
    ~NativeFloats()
    {
        var p = _p;
        if (p is null) return;
        _p = null;
        NativeMemory.Free(p);
        _pool?.Forget(_blockBytes);
    }
}

/// <summary>
/// Keeps the host blocks requests give back (<see cref="NativeFloats"/>) for the next ones, by size class
/// (<see cref="SizeClasses"/>), so a repeated request reuses the same memory instead of asking the system for hundreds of
/// megabytes and faulting every page in again (on the fixture that made the unpruned prefill about 45% slower than the
/// managed arrays it replaced). It keeps at most as many bytes as were ever out at once (<see cref="PeakBytes"/>): the
/// process never holds more than twice what its busiest moment needed, and in steady state what it needed.
/// </summary>
internal sealed unsafe class HostMemoryPool : IDisposable
{
    private readonly object _lock = new();
    private readonly SortedDictionary<long, Stack<IntPtr>> _free = [];
    private long _out, _pooled, _peak, _allocations;
    private bool _disposed;

    /// <summary>Bytes in blocks handed out and not yet given back.</summary>
    public long OutstandingBytes { get { lock (_lock) return _out; } }

    /// <summary>Bytes kept for reuse.</summary>
    public long PooledBytes { get { lock (_lock) return _pooled; } }

    /// <summary>Most bytes out at once; the pool keeps at most this many.</summary>
    public long PeakBytes { get { lock (_lock) return _peak; } }

    /// <summary>Blocks asked of the system so far (reuses do not count).</summary>
    public long Allocations { get { lock (_lock) return _allocations; } }

    /// <summary>
    /// A buffer of <paramref name="length"/> floats: the smallest kept block that holds it (a short prompt after a long
    /// one reuses the long one's blocks), else a new block of its size class.
    /// </summary>
    public NativeFloats Rent(long length)
    {
        long bytes = SizeClasses.Bytes(NativeFloats.CheckLength(length) * sizeof(float));
        float* block = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            foreach (var (size, stack) in _free)
            {
                if (size < bytes || stack.Count == 0) continue;
                block = (float*)stack.Pop();
                _pooled -= size;
                bytes = size;
                break;
            }
            _out += bytes;
            _peak = Math.Max(_peak, _out);
        }
        if (block is null)
        {
            try { block = NativeFloats.Allocate(bytes); }
            catch { Forget(bytes); throw; }
            lock (_lock) _allocations++;
        }
        return new NativeFloats(this, block, (int)length, bytes);
    }

    internal void Return(float* block, long bytes)
    {
        lock (_lock)
        {
            _out -= bytes;
            if (!_disposed && _pooled + bytes <= _peak)
            {
                if (!_free.TryGetValue(bytes, out var stack)) _free[bytes] = stack = new Stack<IntPtr>();
                stack.Push((IntPtr)block);
                _pooled += bytes;
                return;
            }
        }
        NativeMemory.Free(block);
    }

    internal void Forget(long bytes)
    {
        lock (_lock) _out -= bytes;
    }

    /// <summary>Frees the kept blocks; blocks still out are freed when given back.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var stack in _free.Values)
                while (stack.Count > 0) NativeMemory.Free((void*)stack.Pop());
            _free.Clear();
            _pooled = 0;
        }
    }
}
