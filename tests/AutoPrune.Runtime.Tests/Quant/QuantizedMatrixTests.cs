using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Quant;
using AutoPrune.Loading.Gguf;
using AutoPrune.Tests.Gguf;
using Xunit;

namespace AutoPrune.Tests.Quant;

/// <summary>
/// The fused products over quantized weights: GEMV and small-batch GEMM on every instruction set against float64 math on
/// the exactly dequantized weights, the panel GEMM bit for bit against the repository's fp32 GEMM on the dequantized
/// matrix (same ISA), results independent of the thread count, bias / accumulate / strides, and no fp32 copy of the weights.
/// </summary>
public sealed class QuantizedMatrixTests
{
    public static readonly TheoryData<string> Formats = new(QuantFormats.All.Select(f => f.ToString()));

    private static IEnumerable<GemmIsa> Isas()
    {
        yield return GemmIsa.Scalar;
        if (Avx2.IsSupported && Fma.IsSupported) yield return GemmIsa.Avx2;
        if (Avx512F.IsSupported && Vector512.IsHardwareAccelerated) yield return GemmIsa.Avx512;
    }

    /// <summary>Weights like a trained layer's: mostly small, a few outliers, some all-zero rows.</summary>
    private static float[] Weights(Random r, int rows, int cols)
    {
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());
            w[i] = (float)(g * 0.05 * (r.Next(50) == 0 ? 8 : 1));
        }
        if (rows > 3) w.AsSpan(2 * cols, cols).Clear();
        return w;
    }

    private static float[] Vec(Random r, int n) => Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();

    private static int ColsFor(QuantFormat f, int mult) => f.BlockElements() == 256 ? 256 * mult : 96 * mult;

    [Theory]
    [MemberData(nameof(Formats))]
    public void Gemv_on_every_isa_is_within_float_rounding_of_exact_math(string formatName)
    {
        var format = Enum.Parse<QuantFormat>(formatName);
        var r = new Random((int)format + 1);
        foreach (var (rows, mult) in new[] { (37, 1), (70, 3), (5, 8) })
        {
            int cols = ColsFor(format, mult);
            var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
            var wd = m.Dequantize();
            var x = Vec(r, cols);
            foreach (var isa in Isas())
            {
                var y = new float[rows];
                m.GemvCore(x, y, default, false, isa, 1);
                for (int i = 0; i < rows; i++)
                {
                    double exact = 0, mag = 0;
                    for (int k = 0; k < cols; k++) { exact += (double)wd[i * cols + k] * x[k]; mag += Math.Abs((double)wd[i * cols + k] * x[k]); }
                    // fp32 sums of k terms: error ≤ ~k·2^-24·Σ|w·x|; the block factoring adds a few roundings per block
                    double tol = 4e-7 * Math.Sqrt(cols) * mag + 1e-7 * mag + 1e-12;
                    Assert.True(Math.Abs(y[i] - exact) <= tol, $"{format} {isa} {rows}x{cols} row {i}: {y[i]} vs exact {exact} (tolerance {tol})");
                }
            }
        }
    }

    /// <summary>The panel path (batches above <see cref="QuantizedMatrix.SmallBatchRows"/>, or forced) is the repository's GEMM on dequantized tiles.</summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void Panel_gemm_equals_the_fp32_gemm_on_dequantized_weights_bit_for_bit(string formatName)
    {
        var format = Enum.Parse<QuantFormat>(formatName);
        var r = new Random((int)format + 100);
        foreach (var (rows, mult, batch, force) in new[] { (37, 1, 2, true), (130, 3, 7, true), (64, 2, 17, false), (200, 8, 3, true), (70, 2, 40, false) })
        {
            int cols = ColsFor(format, mult);
            var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
            var wd = m.Dequantize();
            var x = Vec(r, batch * cols);
            var bias = Vec(r, rows);
            foreach (var isa in Isas())
            {
                var got = new float[batch * rows];
                var want = new float[batch * rows];
                m.GemmCore(x, cols, batch, got, rows, bias, false, isa, 1, forcePanels: force);
                if (format.IsBlockQuantized())
                    Gemm.MatMulTransBCore(x, cols, batch, cols, wd, cols, rows, want, rows, bias, false, isa, 1, tiled: true);
                else
                    new QuantizedMatrix(format, rows, cols, m.Blocks).GemmCore(x, cols, batch, want, rows, bias, false, isa, 1);
                for (int i = 0; i < got.Length; i++)
                    Assert.True(BitConverter.SingleToInt32Bits(got[i]) == BitConverter.SingleToInt32Bits(want[i]), $"{format} {isa} {batch}x{rows}x{cols} element {i}: {got[i]:R} vs {want[i]:R}");
                // and the plain formats agree with the fp32 GEMM within rounding of the widening order
                if (!format.IsBlockQuantized())
                {
                    Gemm.MatMulTransBCore(x, cols, batch, cols, wd, cols, rows, want, rows, bias, false, isa, 1, tiled: true);
                    for (int i = 0; i < got.Length; i++) Assert.True(Math.Abs(got[i] - want[i]) <= 1e-4f * (1 + Math.Abs(want[i])), $"{format} {isa} plain {i}");
                }
            }
        }
    }

    /// <summary>Small batches (each weight row decoded once, dotted with every row of X) against float64 math, every ISA, bias included.</summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void Small_batch_gemm_is_within_float_rounding_of_exact_math(string formatName)
    {
        var format = Enum.Parse<QuantFormat>(formatName);
        var r = new Random((int)format + 200);
        foreach (var (rows, mult, batch) in new[] { (37, 1, 2), (70, 3, 5), (9, 8, QuantizedMatrix.SmallBatchRows) })
        {
            int cols = ColsFor(format, mult);
            var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
            var wd = m.Dequantize();
            var x = Vec(r, batch * cols);
            var bias = Vec(r, rows);
            foreach (var isa in Isas())
            {
                var y = new float[batch * rows];
                m.GemmCore(x, cols, batch, y, rows, bias, false, isa, 1);
                for (int i = 0; i < batch; i++)
                    for (int o = 0; o < rows; o++)
                    {
                        double exact = bias[o], mag = Math.Abs(bias[o]);
                        for (int k = 0; k < cols; k++) { exact += (double)wd[o * cols + k] * x[i * cols + k]; mag += Math.Abs((double)wd[o * cols + k] * x[i * cols + k]); }
                        double tol = 4e-7 * Math.Sqrt(cols) * mag + 1e-7 * mag + 1e-12;
                        Assert.True(Math.Abs(y[i * rows + o] - exact) <= tol, $"{format} {isa} {batch}x{rows}x{cols} [{i},{o}]: {y[i * rows + o]} vs exact {exact}");
                    }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Results_do_not_depend_on_the_thread_count(string formatName)
    {
        var format = Enum.Parse<QuantFormat>(formatName);
        var r = new Random((int)format + 7);
        int rows = 1000, cols = ColsFor(format, 2); // 1000 x 512/192 weights: above the parallel threshold for 256-blocks
        if (cols < 300) cols *= 4;
        var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
        Assert.True((long)rows * cols >= QuantizedMatrix.ParallelThresholdWeights);
        var x = Vec(r, 5 * cols);
        foreach (var isa in Isas())
        {
            float[]? gemv1 = null, gemm1 = null, panels1 = null;
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var gv = new float[rows];
                m.GemvCore(x.AsSpan(0, cols), gv, default, false, isa, threads);
                var gm = new float[5 * rows];
                m.GemmCore(x, cols, 5, gm, rows, default, false, isa, threads);
                var gp = new float[5 * rows];
                m.GemmCore(x, cols, 5, gp, rows, default, false, isa, threads, forcePanels: true);
                gemv1 ??= gv;
                gemm1 ??= gm;
                panels1 ??= gp;
                Assert.Equal(gemv1, gv);
                Assert.Equal(gemm1, gm);
                Assert.Equal(panels1, gp);
            }
        }
    }

    [Fact]
    public void Bias_accumulate_and_strides()
    {
        var r = new Random(5);
        const int rows = 70, cols = 512, batch = 3, ldx = 520, ldy = 80;
        foreach (var format in new[] { QuantFormat.Q4_K, QuantFormat.Q8_0, QuantFormat.F16 })
        {
            var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
            var wd = m.Dequantize();
            var x = Vec(r, batch * ldx);
            var bias = Vec(r, rows);
            var y = Enumerable.Repeat(7f, batch * ldy).ToArray();
            var y0 = (float[])y.Clone();
            m.Gemm(x, ldx, batch, y, ldy, bias, accumulate: true);
            for (int i = 0; i < batch; i++)
            {
                for (int o = 0; o < rows; o++)
                {
                    double exact = bias[o] + y0[i * ldy + o];
                    for (int k = 0; k < cols; k++) exact += (double)wd[o * cols + k] * x[i * ldx + k];
                    Assert.True(Math.Abs(y[i * ldy + o] - exact) < 1e-4, $"{format} [{i},{o}]: {y[i * ldy + o]} vs {exact}");
                }
                for (int o = rows; o < ldy; o++) Assert.Equal(7f, y[i * ldy + o]); // the stride gap is not written
            }
            // GEMV with bias and accumulate = the GEMM's first row
            var v = Enumerable.Repeat(7f, rows).ToArray();
            m.Gemv(x.AsSpan(0, cols), v, bias, accumulate: true);
            for (int o = 0; o < rows; o++) Assert.True(Math.Abs(v[o] - y[o]) < 1e-4);
        }
    }

    [Fact]
    public void Real_fixture_tensors_give_exact_products()
    {
        using var f = GgufFile.Open(GgufTestData.Text("Q4_K_M"));
        var r = new Random(9);
        foreach (var name in new[] { "blk.1.ffn_down.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight", "output.weight" })
        {
            var t = f.GetTensor(name);
            var m = f.GetMatrix(t);
            var wd = f.ReadFloat32(t);
            var x = Vec(r, m.Cols);
            var y = new float[m.Rows];
            m.Gemv(x, y);
            for (int i = 0; i < m.Rows; i++)
            {
                double exact = 0, mag = 0;
                for (int k = 0; k < m.Cols; k++) { exact += (double)wd[i * m.Cols + k] * x[k]; mag += Math.Abs(wd[i * m.Cols + k] * x[k]); }
                Assert.True(Math.Abs(y[i] - exact) <= 1e-5 * mag + 1e-9, $"{name} ({t.Type}) row {i}: {y[i]} vs {exact}");
            }
        }
    }

    [Fact]
    public void Products_never_materialise_fp32_weights()
    {
        var r = new Random(1);
        const int rows = 1024, cols = 1024; // fp32 weights would be 4 MB
        foreach (var format in new[] { QuantFormat.Q4_0, QuantFormat.Q4_K, QuantFormat.Q6_K })
        {
            var m = QuantizedMatrix.Quantize(format, Weights(r, rows, cols), rows, cols);
            var x = Vec(r, 4 * cols);
            var y = new float[4 * rows];
            m.GemvCore(x.AsSpan(0, cols), y, default, false, Gemm.DetectedIsa, 1);
            m.GemmCore(x, cols, 4, y, rows, default, false, Gemm.DetectedIsa, 1); // warm the pools
            m.GemmCore(x, cols, 4, y, rows, default, false, Gemm.DetectedIsa, 1, forcePanels: true);
            long before = GC.GetAllocatedBytesForCurrentThread();
            m.GemmCore(x, cols, 4, y, rows, default, false, Gemm.DetectedIsa, 1, forcePanels: true);
            long panels = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(panels < 64 * 1024, $"{format} panel GEMM allocated {panels} bytes");
            before = GC.GetAllocatedBytesForCurrentThread();
            m.GemvCore(x.AsSpan(0, cols), y, default, false, Gemm.DetectedIsa, 1);
            long gemv = GC.GetAllocatedBytesForCurrentThread() - before;
            before = GC.GetAllocatedBytesForCurrentThread();
            m.GemmCore(x, cols, 4, y, rows, default, false, Gemm.DetectedIsa, 1);
            long gemm = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(gemv < 4096, $"{format} GEMV allocated {gemv} bytes");
            Assert.True(gemm < 64 * 1024, $"{format} GEMM allocated {gemm} bytes");
        }
    }

    [Fact]
    public void Bad_arguments_are_refused()
    {
        Assert.Throws<ArgumentException>(() => new QuantizedMatrix(QuantFormat.Q4_K, 2, 200, new byte[288]));
        Assert.Throws<ArgumentException>(() => new QuantizedMatrix(QuantFormat.Q8_0, 2, 64, new byte[135]));
        var m = new QuantizedMatrix(QuantFormat.Q8_0, 2, 64, new byte[136]);
        Assert.Throws<ArgumentException>(() => m.Gemv(new float[63], new float[2]));
        Assert.Throws<ArgumentException>(() => m.Gemv(new float[64], new float[1]));
        Assert.Throws<ArgumentException>(() => m.Gemm(new float[64 * 3 - 1], 3, new float[6]));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Gemm(new float[64 * 3], 32, 3, new float[6], 2));
        var y = new float[2];
        m.Gemv(new float[64], y); // all-zero blocks: d = 0
        Assert.Equal([0f, 0f], y);
    }

    /// <summary>The kernels' fp16 scale conversions (scalar, and 8 gathered at a block stride) are exact for all 65,536 values.</summary>
    [Fact]
    public unsafe void Scale_conversions_are_exact_for_every_fp16_value()
    {
        var blocks = new byte[65536 * 18];
        for (int h = 0; h < 65536; h++) { blocks[h * 18] = (byte)h; blocks[h * 18 + 1] = (byte)(h >> 8); }
        var eight = new float[8];
        fixed (byte* p = blocks) fixed (float* e = eight)
        {
            for (int h = 0; h < 65536; h++)
            {
                float want = (float)BitConverter.UInt16BitsToHalf((ushort)h);
                float got = QuantKernels.Half(p + h * 18);
                Assert.True(float.IsNaN(want) ? float.IsNaN(got) : BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(got), $"fp16 0x{h:X4}: {got} vs {want}");
            }
            if (!Avx2.IsSupported) return;
            var strides = QuantKernels.Strides(18);
            for (int h = 0; h + 8 <= 65536; h += 8)
            {
                QuantKernels.Scales8(p + h * 18, strides, e);
                for (int i = 0; i < 8; i++)
                {
                    float want = (float)BitConverter.UInt16BitsToHalf((ushort)(h + i));
                    Assert.True(float.IsNaN(want) ? float.IsNaN(eight[i]) : BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(eight[i]), $"gathered fp16 0x{h + i:X4}");
                }
            }
        }
    }

    [Fact]
    public void Permuting_rows_moves_whole_blocks()
    {
        var r = new Random(2);
        var m = QuantizedMatrix.Quantize(QuantFormat.Q6_K, Weights(r, 8, 256), 8, 256);
        int[] order = [7, 6, 5, 4, 0, 1, 2, 3];
        var p = m.PermuteRows(order);
        var a = m.Dequantize();
        var b = p.Dequantize();
        for (int i = 0; i < 8; i++) Assert.Equal(a.AsSpan(order[i] * 256, 256).ToArray(), b.AsSpan(i * 256, 256).ToArray());
    }
}
