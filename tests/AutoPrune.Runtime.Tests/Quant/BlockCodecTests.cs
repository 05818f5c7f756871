using System.Runtime.InteropServices;
using AutoPrune.Compute.Quant;
using AutoPrune.Loading.Gguf;
using AutoPrune.Tests.Gguf;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Quant;

/// <summary>
/// Dequantization bit-exact with ggml (the fixture's <c>dequant_checks</c>: sha256 of the fp32 tensor and its first 64
/// values), quantization byte-exact with llama.cpp's quantizer (every tensor of every variant re-quantized from the f16
/// weights, K-quants included), and each format's error against the f16 weights within what its step size allows.
/// </summary>
public sealed class BlockCodecTests(ITestOutputHelper output)
{
    [Fact]
    public void Dequantization_equals_ggml_bit_for_bit()
    {
        var checks = GgufTestData.References.GetProperty("dequant_checks").EnumerateArray().ToList();
        Assert.Equal(9, checks.Count);
        Assert.Equal(["F16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"], checks.Select(c => c.GetProperty("type").GetString()!).Distinct().Order().ToArray().OrderBy(t => Array.IndexOf(new[] { "F16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K" }, t)));
        foreach (var d in checks)
        {
            using var f = GgufFile.Open(GgufTestData.FileNamed(d.GetProperty("file").GetString()!));
            var t = f.GetTensor(d.GetProperty("tensor").GetString()!);
            var values = f.ReadFloat32(t);
            string what = $"{d.GetProperty("variant").GetString()} {t.Name} ({t.Type})";
            Assert.True(d.GetProperty("dequant_f32_sha256").GetString() == GgufTestData.Sha256(MemoryMarshal.AsBytes(values.AsSpan())), $"{what}: fp32 sha256 differs");
            var first = d.GetProperty("first64").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
            for (int i = 0; i < first.Length; i++)
                Assert.True(BitConverter.SingleToInt32Bits(first[i]) == BitConverter.SingleToInt32Bits(values[i]), $"{what}: value {i} is {values[i]:R}, ggml gives {first[i]:R}");
        }
    }

    /// <summary>The SIMD panel dequantizer of the GEMM gives the same bits as the scalar reference, on real and random blocks.</summary>
    [Fact]
    public unsafe void Simd_dequantization_equals_the_scalar_reference()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return;
        using var f = GgufFile.Open(GgufTestData.Text("Q4_K_M"));
        foreach (var t in f.Tensors.Where(t => t.Type.ToQuantFormat() is { } q && q.IsBlockQuantized()).GroupBy(t => t.Type).Select(g => g.First()))
            CompareDecoders(t.Type.ToQuantFormat()!.Value, f.GetBytes(t).ToArray(), (int)t.ElementCount, t.Name);
        var rnd = new Random(3);
        foreach (var fmt in QuantFormats.All.Where(x => x.IsBlockQuantized()))
        {
            var bytes = new byte[fmt.BlockBytes() * 40];
            rnd.NextBytes(bytes); // arbitrary bits: every nibble, sign and scale pattern (finite fp16 scales)
            for (int b = 0; b < 40; b++)
            {
                int at = b * fmt.BlockBytes() + (fmt == QuantFormat.Q6_K ? 208 : 0);
                bytes[at + 1] &= 0x7B; // keep d (and for Q4_K dmin below) finite
                if (fmt == QuantFormat.Q4_K) bytes[at + 3] &= 0x7B;
            }
            CompareDecoders(fmt, bytes, 40 * fmt.BlockElements(), "random");
        }
    }

    private static unsafe void CompareDecoders(QuantFormat fmt, byte[] bytes, int n, string what)
    {
        var scalar = new float[n];
        var simd = new float[n];
        fixed (byte* p = bytes) fixed (float* a = scalar) fixed (float* b = simd)
        {
            QuantKernels.DequantizeBlocks(fmt, p, 0, n / fmt.BlockElements(), a, simd: false);
            QuantKernels.DequantizeBlocks(fmt, p, 0, n / fmt.BlockElements(), b, simd: true);
        }
        var reference = new float[n];
        BlockCodec.Dequantize(fmt, bytes, reference);
        for (int i = 0; i < n; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(reference[i]) == BitConverter.SingleToInt32Bits(scalar[i]), $"{fmt} {what}: scalar panel value {i}");
            Assert.True(BitConverter.SingleToInt32Bits(reference[i]) == BitConverter.SingleToInt32Bits(simd[i]), $"{fmt} {what}: SIMD value {i} is {simd[i]:R}, reference {reference[i]:R}");
        }
    }

    [Fact]
    public void The_fixture_quantize_checks_hold()
    {
        using var f16 = GgufFile.Open(GgufTestData.Text("f16"));
        foreach (var c in GgufTestData.References.GetProperty("quantize_checks").EnumerateArray())
        {
            Assert.True(c.GetProperty("gguf_py_quantize_bytes_equal_llamacpp").GetBoolean());
            using var q = GgufFile.Open(GgufTestData.Text(c.GetProperty("variant").GetString()!));
            var t = q.GetTensor(c.GetProperty("tensor").GetString()!);
            Assert.Equal(c.GetProperty("type").GetString(), t.Type.ToString());
            var bytes = new byte[t.ByteSize];
            BlockCodec.Quantize(t.Type.ToQuantFormat()!.Value, f16.ReadFloat32(f16.GetTensor(t.Name)), bytes);
            Assert.Equal(q.GetBytes(t).ToArray(), bytes);
        }
    }

    /// <summary>
    /// Every tensor of every quantized variant, re-quantized from the f16 file's values, has exactly llama.cpp's bytes:
    /// Q8_0, Q4_0, Q5_0, and the K-quants (Q4_K and Q6_K ffn_down of Q4_K_M, Q6_K of the Q6_K variant), whose scale search
    /// (make_qkx2_quants, make_qx_quants) is reproduced operation for operation.
    /// </summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    public void Every_tensor_requantizes_to_llama_cpp_bytes(string variant)
    {
        using var f16 = GgufFile.Open(GgufTestData.Text("f16"));
        using var q = GgufFile.Open(GgufTestData.Text(variant));
        var perType = new Dictionary<GgmlType, int>();
        foreach (var t in q.Tensors)
        {
            var bytes = new byte[t.ByteSize];
            BlockCodec.Quantize(t.Type.ToQuantFormat()!.Value, f16.ReadFloat32(f16.GetTensor(t.Name)), bytes);
            var want = q.GetBytes(t);
            int firstDiff = bytes.AsSpan().CommonPrefixLength(want);
            Assert.True(firstDiff == want.Length, $"{variant} {t.Name} ({t.Type}): first differing byte at {firstDiff} of {want.Length}");
            perType[t.Type] = perType.GetValueOrDefault(t.Type) + 1;
        }
        output.WriteLine($"{variant}: {string.Join(", ", perType.Select(kv => $"{kv.Value} {kv.Key}"))} tensors byte-identical");
    }

    /// <summary>
    /// Each variant's dequantized weights against the f16 weights they came from: per block, the error stays within what the
    /// format's step allows (Q8_0: half a step of amax/127; Q4_0/Q5_0: one step of amax/8 and amax/16, the clamped top
    /// level; plus the fp16 rounding of the scale times the level); K-quants by relative RMS error (their 6/8-bit sub-block
    /// scales add error a per-element bound would hide): a uniform step s gives an RMS error of s/√12, with s ≈ 5σ/63 (Q6_K,
    /// 16 values spanning ~±2.5σ) and ≈ 4σ/15 (Q4_K), i.e. ~0.023 and ~0.077 of the weights' RMS; measured 0.019 and 0.075.
    /// </summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    public void Dequantized_weights_are_within_each_formats_error_of_f16(string variant)
    {
        using var f16 = GgufFile.Open(GgufTestData.Text("f16"));
        using var q = GgufFile.Open(GgufTestData.Text(variant));
        var worst = new Dictionary<GgmlType, double>();
        foreach (var t in q.Tensors)
        {
            var w = f16.ReadFloat32(f16.GetTensor(t.Name));
            var wq = q.ReadFloat32(t);
            if (t.Type == GgmlType.F32) { Assert.Equal(w, wq); continue; }
            int be = t.Type.BlockElements();
            if (t.Type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q5_0)
            {
                // d = amax/127 (Q8_0), amax/8 (Q4_0), amax/16 (Q5_0); rounding to the level costs half a step (Q8_0) or up to
                // one step (Q4_0/Q5_0: the top level is clamped), and the fp16 rounding of d (2^-11 relative, or 2^-25
                // absolute when subnormal) is multiplied by the level, at most 127 / 8 / 16.
                var (levels, steps, qmax) = t.Type switch { GgmlType.Q8_0 => (127.0, 0.5, 127.0), GgmlType.Q4_0 => (8.0, 1.0, 8.0), _ => (16.0, 1.0, 16.0) };
                double ratio = 0;
                for (int b = 0; b < w.Length / be; b++)
                {
                    double amax = 0, err = 0;
                    for (int i = b * be; i < (b + 1) * be; i++) { amax = Math.Max(amax, Math.Abs(w[i])); err = Math.Max(err, Math.Abs(w[i] - wq[i])); }
                    double d = amax / levels;
                    double bound = d * steps + qmax * Math.Max(d * Math.Pow(2, -11), Math.Pow(2, -25));
                    Assert.True(err <= bound, $"{variant} {t.Name} block {b}: max error {err} > {bound}");
                    if (amax > 0) ratio = Math.Max(ratio, err / amax);
                }
                worst[t.Type] = Math.Max(worst.GetValueOrDefault(t.Type), ratio);
            }
            else
            {
                double num = 0, den = 0;
                for (int i = 0; i < w.Length; i++) { num += (w[i] - wq[i]) * (w[i] - wq[i]); den += (double)w[i] * w[i]; }
                double rel = Math.Sqrt(num / den);
                double limit = t.Type == GgmlType.Q6_K ? 0.027 : 0.1;
                Assert.True(rel < limit, $"{variant} {t.Name} ({t.Type}): relative RMS error {rel:F4} ≥ {limit}");
                worst[t.Type] = Math.Max(worst.GetValueOrDefault(t.Type), rel);
            }
        }
        output.WriteLine($"{variant}: " + string.Join(", ", worst.Select(kv => kv.Key is GgmlType.Q4_K or GgmlType.Q6_K
            ? $"{kv.Key} worst relative RMS {kv.Value:F4}" : $"{kv.Key} worst block error / amax {kv.Value:F4}")));
    }

    [Fact]
    public void Round_trips_on_random_data_and_edge_blocks()
    {
        var rnd = new Random(11);
        foreach (var fmt in QuantFormats.All)
        {
            int n = 4 * 256;
            var x = new float[n];
            for (int i = 0; i < n; i++) x[i] = (float)((rnd.NextDouble() - 0.5) * Math.Exp(rnd.NextDouble() * 4 - 2));
            x.AsSpan(256, 256).Clear(); // an all-zero block (d = 0: no division by zero, zeros come back)
            for (int i = 512; i < 768; i++) x[i] = 1e-20f; // tiny values
            var bytes = new byte[fmt.RowBytes(n)];
            BlockCodec.Quantize(fmt, x, bytes);
            var back = new float[n];
            BlockCodec.Dequantize(fmt, bytes, back);
            Assert.All(back, v => Assert.True(float.IsFinite(v)));
            for (int i = 256; i < 512; i++) Assert.Equal(0f, back[i]);
            if (fmt is QuantFormat.F32) Assert.Equal(x, back);
            if (fmt is QuantFormat.F16) for (int i = 0; i < n; i++) Assert.Equal((float)(Half)x[i], back[i]);
            if (fmt is QuantFormat.BF16) for (int i = 0; i < n; i++) Assert.True(Math.Abs(back[i] - x[i]) <= Math.Abs(x[i]) / 256, $"bf16 {i}");
        }
        Assert.Throws<ArgumentException>(() => BlockCodec.Quantize(QuantFormat.Q4_K, new float[255], new byte[144]));
        Assert.Throws<ArgumentException>(() => BlockCodec.Dequantize(QuantFormat.Q8_0, new byte[33], new float[32]));
    }

    [Fact]
    public void Nearest_int_rounds_half_to_even_like_ggml()
    {
        Assert.Equal(2, BlockCodec.NearestInt(2.5f));
        Assert.Equal(4, BlockCodec.NearestInt(3.5f));
        Assert.Equal(-2, BlockCodec.NearestInt(-2.5f));
        Assert.Equal(-3, BlockCodec.NearestInt(-2.6f));
        Assert.Equal(63, BlockCodec.NearestInt(63.0000038f));
        Assert.Equal(0, BlockCodec.NearestInt(-0.4f));
    }
}
