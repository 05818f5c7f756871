using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// Allocates device buffers and counts their bytes (current and peak), so a run can report the GPU memory its
/// weights, caches and scratch buffers took. cuBLAS workspaces and the CUDA context are not counted.
/// </summary>
internal sealed class DeviceArena(Accelerator accelerator)
{
    private long _current, _peak;

    public Accelerator Accelerator => accelerator;

    /// <summary>Bytes held now by buffers from this arena.</summary>
    public long CurrentBytes => Interlocked.Read(ref _current);

    /// <summary>Most bytes held at once since creation or the last <see cref="ResetPeak"/>.</summary>
    public long PeakBytes => Interlocked.Read(ref _peak);

    public void ResetPeak() => Interlocked.Exchange(ref _peak, CurrentBytes);

    public DeviceBuffer<T> Allocate<T>(long length) where T : unmanaged
    {
        long bytes = Math.Max(1, length) * Marshal.SizeOf<T>();
        var buffer = accelerator.Allocate1D<T>(Math.Max(1, length));
        Track(bytes);
        return new DeviceBuffer<T>(this, buffer, length, bytes);
    }

    public DeviceBuffer<T> Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var b = Allocate<T>(data.Length);
        if (data.Length > 0) b.View.SubView(0, data.Length).CopyFromCPU(data);
        return b;
    }

    private void Track(long bytes)
    {
        long now = Interlocked.Add(ref _current, bytes);
        long peak;
        while (now > (peak = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, now, peak) != peak) { }
    }

    internal void Release(long bytes) => Interlocked.Add(ref _current, -bytes);
}

/// <summary>A device buffer of <see cref="Length"/> elements owned by a <see cref="DeviceArena"/>.</summary>
internal sealed class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    private readonly DeviceArena _arena;
    private readonly long _bytes;
    private MemoryBuffer1D<T, Stride1D.Dense>? _buffer;

    internal DeviceBuffer(DeviceArena arena, MemoryBuffer1D<T, Stride1D.Dense> buffer, long length, long bytes)
    {
        _arena = arena; _buffer = buffer; Length = length; _bytes = bytes;
    }

    public long Length { get; }

    public ArrayView<T> View => (_buffer ?? throw new ObjectDisposedException(nameof(DeviceBuffer<T>))).View;

    public ArrayView<T> Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Slice [{offset}, {offset + length}) of a {Length}-element device buffer.");
        return View.SubView(offset, length);
    }

    /// <summary>Copies elements [offset, offset + length) to a new host array (waits for queued work).</summary>
    public T[] Download(long offset, long length)
    {
        var result = new T[length];
        if (length > 0)
        {
            _arena.Accelerator.Synchronize();
            Slice(offset, length).CopyToCPU(result.AsSpan());
        }
        return result;
    }

    public void Upload(ReadOnlySpan<T> data, long offset = 0)
    {
        if (data.Length > 0) Slice(offset, data.Length).CopyFromCPU(data);
    }

    public void Dispose()
    {
        var b = Interlocked.Exchange(ref _buffer, null);
        if (b is null) return;
        b.Dispose();
        _arena.Release(_bytes);
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
