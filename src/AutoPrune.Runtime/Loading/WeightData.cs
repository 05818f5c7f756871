using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace AutoPrune.Loading;

/// <summary>
/// A weight tensor as the checkpoint stores it: fp32, fp16 or bf16 (kept as raw bits). From a safetensors file it is a
/// view of the memory-mapped file (nothing is copied or widened at load: the CPU GEMM widens one packed tile at a
/// time); generated weights are fp16 arrays.
/// </summary>
internal readonly struct WeightData
{
    private WeightData(DType type, ReadOnlyMemory<float> f32, ReadOnlyMemory<Half> f16, ReadOnlyMemory<ushort> bf16)
    {
        Type = type; F32 = f32; F16 = f16; BFloat16 = bf16;
    }

    public DType Type { get; }
    public ReadOnlyMemory<float> F32 { get; }
    public ReadOnlyMemory<Half> F16 { get; }
    /// <summary>bf16 values as their raw 16 bits (the high half of an fp32).</summary>
    public ReadOnlyMemory<ushort> BFloat16 { get; }

    public int Length => Type switch { DType.F32 => F32.Length, DType.F16 => F16.Length, _ => BFloat16.Length };

    /// <summary>Bytes the weights occupy as stored.</summary>
    public long Bytes => (long)Length * Type.SizeInBytes();

    public static WeightData Of(ReadOnlyMemory<float> values) => new(DType.F32, values, default, default);
    public static WeightData Of(ReadOnlyMemory<Half> values) => new(DType.F16, default, values, default);
    public static WeightData OfBFloat16(ReadOnlyMemory<ushort> bits) => new(DType.BF16, default, default, bits);

    /// <summary>Elements [start, start + dst.Length) widened exactly to fp32 (e.g. one embedding row).</summary>
    public void CopyTo(int start, Span<float> dst)
    {
        switch (Type)
        {
            case DType.F32: F32.Span.Slice(start, dst.Length).CopyTo(dst); break;
            case DType.F16: TensorPrimitives.ConvertToSingle(F16.Span.Slice(start, dst.Length), dst); break;
            default: SafeTensorStore.WidenBFloat16(BFloat16.Span.Slice(start, dst.Length), dst); break;
        }
    }
}

/// <summary>Memory of <paramref name="length"/> elements at a fixed native address (a memory-mapped tensor); the owner keeps it mapped.</summary>
internal sealed unsafe class NativeMemory<T>(T* pointer, int length) : MemoryManager<T> where T : unmanaged
{
    public override Span<T> GetSpan() => new(pointer, length);
    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
    public override void Unpin() { }
    protected override void Dispose(bool disposing) { }
}
