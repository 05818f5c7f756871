using System.Buffers;
using System.Runtime.InteropServices;

namespace AutoPrune.Loading.Images;

/// <summary>
/// Pixel bytes of one decoding stage in native memory, freed when disposed. A decoded image can take hundreds of
/// megabytes (a 50-megapixel RGBA frame is 200 MB); as managed arrays they would be garbage the GC keeps committed long
/// after the request (a server took 1 GB more after three such images, and kept it while idle), whereas native blocks
/// of this size are their own mappings and go back to the operating system as soon as they are freed.
/// </summary>
internal sealed unsafe class NativePixels : MemoryManager<byte>
{
    private byte* _pointer;
    private readonly int _length;

    public NativePixels(long length)
    {
        if (length is < 0 or > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(length), length, "A pixel buffer holds at most 2 GiB.");
        _length = (int)length;
        _pointer = (byte*)NativeMemory.Alloc((nuint)Math.Max(1, _length));
    }

    public int Length => _length;

    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(_pointer is null, this);
        return new Span<byte>(_pointer, _length);
    }

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ObjectDisposedException.ThrowIf(_pointer is null, this);
        return new MemoryHandle(_pointer + elementIndex);
    }

    public override void Unpin() { }

    protected override void Dispose(bool disposing)
    {
        if (_pointer is null) return;
        NativeMemory.Free(_pointer);
        _pointer = null;
    }
}
