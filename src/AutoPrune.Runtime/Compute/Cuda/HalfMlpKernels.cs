using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>The SwiGLU activation on an fp16 gate|up projection (the GEMM writes fp16 when nothing needs more).</summary>
internal static class HalfMlpKernels
{
    /// <summary>dst[r, c] = fp16(silu(gu[r, c]) · gu[r, inter + c]) for a fused fp16 gate|up projection gu ([rows, 2·inter]).</summary>
    internal static void SiluMulSplitHalfToHalfKernel(Index1D t, ArrayView<ushort> gateUp, ArrayView<ushort> dst, int inter, ElementRange range)
    {
        for (long e = t; e < range.Count; e += range.Stride)
        {
            long r = e / inter, c = e % inter;
            float g = CudaKernels.HalfBitsToFloat(gateUp[r * 2 * inter + c]);
            float u = CudaKernels.HalfBitsToFloat(gateUp[r * 2 * inter + inter + c]);
            dst[e] = CudaKernels.FloatToHalfBits(g / (1f + XMath.Exp(-g)) * u);
        }
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<ushort>, int, ElementRange>? _siluMulHalf;

    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<ushort>, int, ElementRange> SiluMulHalfK
        => _siluMulHalf ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<ushort>, int, ElementRange>(HalfMlpKernels.SiluMulSplitHalfToHalfKernel);

    private object[] HalfMlpKernelsLoaded() => [SiluMulHalfK];

    /// <summary>dst [rows, inter] = fp16(silu(gate) · up) from a fused fp16 gate|up projection [rows, 2·inter].</summary>
    public void SiluMulSplitToHalf(ArrayView<ushort> gateUp, ArrayView<ushort> dst, int rows, int inter)
    {
        CheckRows(rows, 2 * inter, gateUp.Length, nameof(gateUp));
        CheckRows(rows, inter, dst.Length, nameof(dst));
        if (rows == 0 || inter == 0) return;
        var r = Range((long)rows * inter);
        Counters.Launch();
        Queue.Enqueue(() => SiluMulHalfK(Stream, Extent(r.Stride), gateUp, dst, inter, r));
    }
}
