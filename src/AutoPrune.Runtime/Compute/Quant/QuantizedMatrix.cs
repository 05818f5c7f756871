using System.Buffers;
using System.Runtime.InteropServices;
using AutoPrune.Compute.Cpu;

namespace AutoPrune.Compute.Quant;

/// <summary>
/// A weight matrix <c>W[Rows, Cols]</c> in one of the <see cref="QuantFormat"/>s, each row a whole number of blocks
/// (<see cref="RowBytes"/>), rows consecutive in <see cref="Blocks"/> — ggml's layout, so a GGUF tensor's bytes are used as
/// they are (a view of the mapped file). The products never widen the matrix: <see cref="Gemv"/> dots each row's blocks with
/// x in registers; <c>Gemm</c> with up to <see cref="SmallBatchRows"/> rows of X decodes one weight row at a time into an
/// L1 buffer and dots it with every row of X, and with more rows dequantizes one panel (64 rows × one k-block) at a time
/// into a small fp32 tile that the repository's GEMM micro-kernel consumes. Activations and accumulation stay fp32.
/// <para>
/// Threads split the output rows (never a row's sum), so results do not depend on the thread count. F32, F16 and BF16 run
/// through <see cref="Compute.Cpu.Gemm"/>'s own paths (widening per tile).
/// </para>
/// </summary>
internal sealed class QuantizedMatrix
{
    /// <summary>Output rows one GEMM panel covers (a multiple of every micro-kernel's NR).</summary>
    internal const int PanelRows = 64;

    /// <summary>Below this many weights a product runs on the calling thread.</summary>
    internal const long ParallelThresholdWeights = 1 << 18;

    /// <summary>Rows in one unit of the GEMV's thread split.</summary>
    private const int GemvRowUnit = 16;

    public QuantizedMatrix(QuantFormat format, int rows, int cols, ReadOnlyMemory<byte> blocks)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        _ = format.BlockElements(); // throws for an undefined format
        RowBytes = format.RowBytes(cols);
        long need = RowBytes * rows;
        if (blocks.Length != need)
            throw new ArgumentException($"A {rows}×{cols} {format} matrix is {need} bytes ({RowBytes} per row), but {blocks.Length} were given.", nameof(blocks));
        Format = format; Rows = rows; Cols = cols; Blocks = blocks;
    }

    public QuantFormat Format { get; }
    public int Rows { get; }
    public int Cols { get; }

    /// <summary>The stored bytes, row after row.</summary>
    public ReadOnlyMemory<byte> Blocks { get; }

    public long RowBytes { get; }

    /// <summary>Bytes of the whole matrix.</summary>
    public long Bytes => RowBytes * Rows;

    /// <summary>Quantizes a row-major fp32 matrix (each row on its own, as ggml does).</summary>
    public static QuantizedMatrix Quantize(QuantFormat format, ReadOnlySpan<float> w, int rows, int cols)
    {
        if (w.Length != (long)rows * cols) throw new ArgumentException($"w has {w.Length} values, not {rows}×{cols}.", nameof(w));
        long rowBytes = format.RowBytes(cols);
        var bytes = new byte[checked(rowBytes * rows)];
        BlockCodec.Quantize(format, w, bytes);
        return new QuantizedMatrix(format, rows, cols, bytes);
    }

    /// <summary>Row <paramref name="row"/> dequantized exactly (ggml's <c>to_float</c>).</summary>
    public void DequantizeRow(int row, Span<float> dst) => DequantizeRows(row, 1, dst);

    /// <summary>Rows [row0, row0 + count) dequantized exactly into <paramref name="dst"/> (count·Cols values).</summary>
    public void DequantizeRows(int row0, int count, Span<float> dst)
    {
        if ((uint)row0 > (uint)Rows || (uint)count > (uint)(Rows - row0)) throw new ArgumentOutOfRangeException(nameof(count));
        if (dst.Length != (long)count * Cols) throw new ArgumentException($"dst must hold {count}×{Cols} values.", nameof(dst));
        BlockCodec.Dequantize(Format, Blocks.Span.Slice((int)(row0 * RowBytes), (int)(count * RowBytes)), dst);
    }

    /// <summary>The whole matrix dequantized (for tests and reference paths; the products never do this).</summary>
    public float[] Dequantize()
    {
        var result = new float[(long)Rows * Cols];
        DequantizeRows(0, Rows, result);
        return result;
    }

    /// <summary>A copy whose row i is this matrix's row <c>order[i]</c> (rows are independent blocks, so no re-quantization).</summary>
    public QuantizedMatrix PermuteRows(ReadOnlySpan<int> order)
    {
        if (order.Length != Rows) throw new ArgumentException($"order must list {Rows} rows.", nameof(order));
        var src = Blocks.Span;
        var dst = new byte[Bytes];
        int rb = (int)RowBytes;
        for (int i = 0; i < Rows; i++)
        {
            if ((uint)order[i] >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(order), $"order[{i}] = {order[i]} is not a row of {Rows}.");
            src.Slice(order[i] * rb, rb).CopyTo(dst.AsSpan(i * rb, rb));
        }
        return new QuantizedMatrix(Format, Rows, Cols, dst);
    }

    // ------------------------------------------------------------------ products

    /// <summary><c>y[r] = W[r,:]·x (+ bias[r]) (+ y[r] if <paramref name="accumulate"/>)</c> for every row.</summary>
    public void Gemv(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> bias = default, bool accumulate = false)
        => GemvCore(x, y, bias, accumulate, PreferredGemvIsa(Format), Compute.Cpu.Gemm.MaxThreads);

    /// <summary>
    /// The row-dot kernels used by default: AVX2 for every format but Q6_K, whose AVX-512 kernel is faster. Measured on
    /// this repository's AMD EPYC (AVX-512 with VP2INTERSECT), 4096×4096, one thread, best of 60: AVX2 / AVX-512 ms =
    /// Q8_0 1.15 / 1.26, Q4_0 1.47 / 1.82, Q5_0 1.57 / 1.99, Q4_K 1.25 / 1.43, Q6_K 2.28 / 2.06 (the 4-bit kernels spend
    /// their time widening bytes, which a 512-bit vpmovzxbd does no faster than two 256-bit ones).
    /// </summary>
    internal static GemmIsa PreferredGemvIsa(QuantFormat format)
    {
        var best = Compute.Cpu.Gemm.DetectedIsa;
        return best == GemmIsa.Avx512 && format != QuantFormat.Q6_K ? GemmIsa.Avx2 : best;
    }

    /// <summary><c>Y[i, r] = X[i,:]·W[r,:] (+ bias[r]) (+ Y[i, r])</c>: X is [m, Cols], Y is [m, Rows], both dense.</summary>
    public void Gemm(ReadOnlySpan<float> x, int m, Span<float> y, ReadOnlySpan<float> bias = default, bool accumulate = false)
        => Gemm(x, Cols, m, y, Rows, bias, accumulate);

    /// <summary>Strided GEMM: row i of X at x[i·ldx], row i of Y at y[i·ldy].</summary>
    public void Gemm(ReadOnlySpan<float> x, int ldx, int m, Span<float> y, int ldy, ReadOnlySpan<float> bias = default, bool accumulate = false)
        => GemmCore(x, ldx, m, y, ldy, bias, accumulate, m == 1 ? PreferredGemvIsa(Format) : Compute.Cpu.Gemm.DetectedIsa, Compute.Cpu.Gemm.MaxThreads);

    internal unsafe void GemvCore(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads)
    {
        if (x.Length < Cols) throw new ArgumentException($"x has {x.Length} values; {Cols} are needed.", nameof(x));
        if (y.Length < Rows) throw new ArgumentException($"y has {y.Length} values; {Rows} are needed.", nameof(y));
        if (!bias.IsEmpty && bias.Length < Rows) throw new ArgumentException($"bias has {bias.Length} values; {Rows} are needed.", nameof(bias));
        if (Rows == 0) return;
        if (!Format.IsBlockQuantized())
        {
            PlainCore(x, Cols, 1, y, Rows, bias, accumulate, isa, threads);
            return;
        }
        isa = Effective(isa);
        int k = Cols;
        float[]? sums = isa == GemmIsa.Scalar ? null : ArrayPool<float>.Shared.Rent(k / 16 + k / 32 + 1);
        try
        {
            using var pin = Blocks.Pin();
            fixed (float* px = x) fixed (float* py = y) fixed (float* pb = bias) fixed (float* ps = sums)
            {
                if (ps != null) QuantKernels.BlockSums(px, k, ps, ps + k / 16);
                var job = new GemvJob(Format, (byte*)pin.Pointer, RowBytes, px, k, py, bias.IsEmpty ? null : pb, accumulate, isa, ps, ps == null ? null : ps + k / 16);
                int units = (Rows + GemvRowUnit - 1) / GemvRowUnit;
                int parts = (long)Rows * Cols < ParallelThresholdWeights ? 1 : Math.Max(1, Math.Min(Math.Min(threads, Environment.ProcessorCount), units));
                int perPart = (units + parts - 1) / parts;
                parts = (units + perPart - 1) / perPart;
                if (parts == 1) job.Rows(0, Rows);
                else Parallel.For(0, parts, ComputeScheduler.Options(parts), part =>
                {
                    int r0 = part * perPart * GemvRowUnit;
                    job.Rows(r0, Math.Min(Rows, r0 + perPart * GemvRowUnit));
                });
            }
        }
        finally
        {
            if (sums != null) ArrayPool<float>.Shared.Return(sums);
        }
    }

    private sealed unsafe class GemvJob(QuantFormat format, byte* w, long rowBytes, float* x, int k, float* y, float* bias, bool acc, GemmIsa isa, float* sum16, float* sum32)
    {
        public void Rows(int r0, int r1)
        {
            for (int r = r0; r < r1; r++)
            {
                byte* row = w + r * rowBytes;
                float v = isa switch
                {
                    GemmIsa.Avx512 => QuantKernels.DotAvx512(format, row, x, k, sum16, sum32),
                    GemmIsa.Avx2 => QuantKernels.DotAvx2(format, row, x, k, sum16, sum32),
                    _ => QuantKernels.DotScalar(format, row, x, k),
                };
                if (bias != null) v += bias[r];
                if (acc) v += y[r];
                y[r] = v;
            }
        }
    }

    /// <summary>Up to this many rows of X the GEMM decodes each weight row once and dots it with every X row (<see cref="SmallBatchCore"/>).</summary>
    internal const int SmallBatchRows = 16;

    /// <param name="forcePanels">Use the panel path (dequantized tiles through <see cref="Compute.Cpu.Gemm"/>'s micro-kernel) even for a small batch.</param>
    internal unsafe void GemmCore(ReadOnlySpan<float> x, int ldx, int m, Span<float> y, int ldy, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads, bool forcePanels = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        if (m == 0 || Rows == 0) return;
        if (ldx < Cols) throw new ArgumentOutOfRangeException(nameof(ldx), $"ldx ({ldx}) must be at least Cols ({Cols}).");
        if (ldy < Rows) throw new ArgumentOutOfRangeException(nameof(ldy), $"ldy ({ldy}) must be at least Rows ({Rows}).");
        if (x.Length < (long)(m - 1) * ldx + Cols) throw new ArgumentException($"x is too short for {m} rows of stride {ldx}.", nameof(x));
        if (y.Length < (long)(m - 1) * ldy + Rows) throw new ArgumentException($"y is too short for {m} rows of stride {ldy}.", nameof(y));
        if (!bias.IsEmpty && bias.Length < Rows) throw new ArgumentException($"bias has {bias.Length} values; {Rows} are needed.", nameof(bias));
        if (m == 1)
        {
            GemvCore(x.Slice(0, Cols), y.Slice(0, Rows), bias, accumulate, isa, threads);
            return;
        }
        if (!Format.IsBlockQuantized())
        {
            PlainCore(x, ldx, m, y, ldy, bias, accumulate, isa, threads);
            return;
        }
        isa = Effective(isa);
        if (m <= SmallBatchRows && !forcePanels)
        {
            SmallBatchCore(x, ldx, m, y, ldy, bias, accumulate, isa, threads);
            return;
        }
        int kc = Math.Min(Cols, Compute.Cpu.Gemm.GetBlocking(isa).KC);
        int be = Format.BlockElements();
        kc = Math.Max(be, kc / be * be);
        int panels = (Rows + PanelRows - 1) / PanelRows;
        int parts = (long)Rows * Cols < ParallelThresholdWeights ? 1 : Math.Max(1, Math.Min(Math.Min(threads, Environment.ProcessorCount), panels));
        int perPart = (panels + parts - 1) / parts;
        parts = (panels + perPart - 1) / perPart;

        using var pin = Blocks.Pin();
        fixed (float* px = x) fixed (float* py = y) fixed (float* pb = bias)
        {
            var job = new GemmJob(this, (byte*)pin.Pointer, px, x.Length, ldx, m, py, y.Length, ldy, bias.IsEmpty ? null : pb, accumulate, isa, kc);
            if (parts == 1) job.Panels(0, panels);
            else Parallel.For(0, parts, ComputeScheduler.Options(parts), part =>
                job.Panels(part * perPart, Math.Min(panels, (part + 1) * perPart)));
        }
    }

    /// <summary>
    /// Small batches: each weight row is dequantized once (exactly, SIMD) into an L1-resident buffer and dotted with every
    /// row of X, four X rows per pass (two accumulators each), so the weights stream once and no tile is packed. Threads
    /// split the weight rows.
    /// </summary>
    private unsafe void SmallBatchCore(ReadOnlySpan<float> x, int ldx, int m, Span<float> y, int ldy, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads)
    {
        int units = (Rows + GemvRowUnit - 1) / GemvRowUnit;
        int parts = (long)Rows * Cols < ParallelThresholdWeights ? 1 : Math.Max(1, Math.Min(Math.Min(threads, Environment.ProcessorCount), units));
        int perPart = (units + parts - 1) / parts;
        parts = (units + perPart - 1) / perPart;
        using var pin = Blocks.Pin();
        fixed (float* px = x) fixed (float* py = y) fixed (float* pb = bias)
        {
            var job = new SmallBatchJob(this, (byte*)pin.Pointer, px, ldx, m, py, ldy, bias.IsEmpty ? null : pb, accumulate, isa);
            if (parts == 1) job.Rows(0, Rows);
            else Parallel.For(0, parts, ComputeScheduler.Options(parts), part =>
            {
                int r0 = part * perPart * GemvRowUnit;
                job.Rows(r0, Math.Min(Rows, r0 + perPart * GemvRowUnit));
            });
        }
    }

    private sealed unsafe class SmallBatchJob(QuantizedMatrix w, byte* blocks, float* x, int ldx, int m, float* y, int ldy, float* bias, bool acc, GemmIsa isa)
    {
        public void Rows(int r0, int r1)
        {
            int k = w.Cols, nb = k / w.Format.BlockElements();
            float[] buffer = ArrayPool<float>.Shared.Rent(k + 16);
            try
            {
                fixed (float* raw = buffer)
                {
                    float* wr = (float*)(((nint)raw + 63) & ~(nint)63);
                    for (int r = r0; r < r1; r++)
                    {
                        QuantKernels.DequantizeBlocks(w.Format, blocks + r * w.RowBytes, 0, nb, wr, isa != GemmIsa.Scalar);
                        for (int i = 0; i < m; i += 4)
                        {
                            int n = Math.Min(4, m - i);
                            float* x0 = x + (nint)i * ldx;
                            var (d0, d1, d2, d3) = isa switch
                            {
                                GemmIsa.Avx512 => QuantKernels.Dot4Avx512(wr, x0, ldx, n, k),
                                GemmIsa.Avx2 => QuantKernels.Dot4Avx2(wr, x0, ldx, n, k),
                                _ => QuantKernels.Dot4Scalar(wr, x0, ldx, n, k),
                            };
                            Store(i, r, d0);
                            if (n > 1) Store(i + 1, r, d1);
                            if (n > 2) Store(i + 2, r, d2);
                            if (n > 3) Store(i + 3, r, d3);
                        }
                    }
                }
            }
            finally { ArrayPool<float>.Shared.Return(buffer); }
        }

        private void Store(int i, int r, float v)
        {
            float* c = y + (nint)i * ldy + r;
            if (bias != null) v += bias[r];
            if (acc) v += *c;
            *c = v;
        }
    }

    private sealed unsafe class GemmJob(QuantizedMatrix w, byte* blocks, float* x, int xLen, int ldx, int m, float* y, int yLen, int ldy, float* bias, bool acc, GemmIsa isa, int kc)
    {
        public void Panels(int p0, int p1)
        {
            int cols = w.Cols, be = w.Format.BlockElements();
            float[] tile = ArrayPool<float>.Shared.Rent(PanelRows * kc);
            try
            {
                fixed (float* t = tile)
                {
                    for (int panel = p0; panel < p1; panel++)
                    {
                        int r0 = panel * PanelRows;
                        int rows = Math.Min(PanelRows, w.Rows - r0);
                        for (int k0 = 0; k0 < cols; k0 += kc)
                        {
                            int kn = Math.Min(kc, cols - k0);
                            for (int r = 0; r < rows; r++)
                                QuantKernels.DequantizeBlocks(w.Format, blocks + (r0 + r) * w.RowBytes, k0 / be, kn / be, t + (nint)r * kn, isa != GemmIsa.Scalar);
                            var xs = new ReadOnlySpan<float>(x + k0, xLen - k0);
                            var ys = new Span<float>(y + r0, yLen - r0);
                            var bs = k0 == 0 && bias != null ? new ReadOnlySpan<float>(bias + r0, rows) : default;
                            Compute.Cpu.Gemm.MatMulTransBCore(xs, ldx, m, kn, new ReadOnlySpan<float>(t, rows * kn), kn, rows, ys, ldy, bs,
                                accumulate: k0 > 0 || acc, isa, threads: 1, tiled: true);
                        }
                    }
                }
            }
            finally { ArrayPool<float>.Shared.Return(tile); }
        }
    }

    /// <summary>F32 / F16 / BF16: the repository's GEMM and GEMV on the stored values.</summary>
    private void PlainCore(ReadOnlySpan<float> x, int ldx, int m, Span<float> y, int ldy, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads)
    {
        var span = Blocks.Span;
        switch (Format)
        {
            case QuantFormat.F32:
                Compute.Cpu.Gemm.MatMulTransBCore(x, ldx, m, Cols, MemoryMarshal.Cast<byte, float>(span), Cols, Rows, y, ldy, bias, accumulate, isa, threads);
                break;
            case QuantFormat.F16:
                Compute.Cpu.Gemm.MatMulTransBCore(x, ldx, m, Cols, MemoryMarshal.Cast<byte, Half>(span), Cols, Rows, y, ldy, bias, accumulate, isa, threads);
                break;
            default:
                Compute.Cpu.Gemm.MatMulTransBBFloat16Core(x, ldx, m, Cols, MemoryMarshal.Cast<byte, ushort>(span), Cols, Rows, y, ldy, bias, accumulate, isa, threads);
                break;
        }
    }

    /// <summary>The instruction set actually used: the requested one if this machine has it, else the best below it.</summary>
    internal static GemmIsa Effective(GemmIsa isa) => isa switch
    {
        GemmIsa.Avx512 when System.Runtime.Intrinsics.X86.Avx512F.IsSupported && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated => GemmIsa.Avx512,
        GemmIsa.Avx512 or GemmIsa.Avx2 when System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported => GemmIsa.Avx2,
        _ => GemmIsa.Scalar,
    };
}
