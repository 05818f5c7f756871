namespace AutoPrune.Compute;

/// <summary>What a <see cref="Tensor"/>'s values are stored as.</summary>
internal enum TensorKind
{
    /// <summary>fp32.</summary>
    Float,

    /// <summary>
    /// The backend's activation precision for GEMM inputs and attention: fp16 on a GPU; on the CPU fp32 values, rounded to
    /// fp16 where they are written when the CPU runs with <see cref="CpuPrecision.MatchDevice"/>.
    /// </summary>
    Half,

    /// <summary>32-bit integers (token ids, positions, row plans, visual indices).</summary>
    Int,
}

/// <summary>
/// A flat run of values where a backend computes: host memory on the CPU, device memory on a GPU. Model code passes
/// tensors between a <see cref="Backend"/>'s ops and never reads their values; a backend reads its own kind.
/// </summary>
internal abstract class Tensor : IDisposable
{
    /// <summary>Number of values.</summary>
    public abstract long Length { get; }

    public abstract TensorKind Kind { get; }

    /// <summary>Values [start, start + length) sharing the memory.</summary>
    public abstract Tensor Slice(long start, long length);

    /// <summary>The first <paramref name="length"/> values.</summary>
    public Tensor First(long length) => Slice(0, length);

    /// <summary>Rows [row, row + rows) of a [*, width] tensor.</summary>
    public Tensor Rows(long row, long rows, int width) => Slice(row * width, rows * width);

    /// <summary>Gives the memory back to the backend's pool when this tensor owns it (a view owns nothing).</summary>
    public virtual void Dispose() { }
}
