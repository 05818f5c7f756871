using System.Buffers.Binary;
using AutoPrune.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

public class SafeTensorRoundTripTests
{
    private static float[] Sample(int n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-6, 5)));
        float[] specials = { 0f, -0f, 1f, -1f, 1.5f, 65504f, -65504f, 6.1e-5f, 5.96e-8f, 1e-40f, float.MaxValue, float.Epsilon,
                             float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1f + 1f / 256, 1f + 3f / 256 };
        specials.AsSpan(0, Math.Min(specials.Length, n)).CopyTo(a);
        return a;
    }

    private static float BFloat16Expected(float f) => BitConverter.UInt32BitsToSingle((uint)SafeTensorWriter.ToBFloat16Bits(f) << 16);

    /// <summary>
    /// Weights the CPU backend keeps are views of the mapped file in the stored type (nothing widened or copied at load),
    /// and stay mapped while retained, after the store itself is disposed.
    /// </summary>
    [Fact]
    public void Weights_are_views_of_the_mapped_file_in_their_stored_type()
    {
        using var dir = new TempDir();
        int n = 1001;
        var data = Sample(n, 5);
        SafeTensorWriter.Write(dir.File("model.safetensors"), new[]
        {
            ("f32", DType.F32, new long[] { n }, data),
            ("f16", DType.F16, new long[] { n }, data),
            ("bf16", DType.BF16, new long[] { n }, data),
        });
        IDisposable lease;
        WeightData f32, f16, bf16;
        float[] f16Wide, bf16Wide;
        using (var store = TensorNames.Open(dir.Path))
        {
            f32 = store.ReadWeight("f32", n);
            f16 = store.ReadWeight("f16", n);
            bf16 = store.ReadWeight("bf16", n);
            f16Wide = store.ReadFloat32("f16", n);
            bf16Wide = store.ReadFloat32("bf16", n);
            Assert.Equal(store.ReadFloat16("f16", n), f16.F16.ToArray());
            lease = store.Retain();
        }
        Assert.Equal((DType.F32, DType.F16, DType.BF16), (f32.Type, f16.Type, bf16.Type));
        Assert.Equal(2L * n, f16.Bytes);
        var wide = new float[n];
        f16.CopyTo(0, wide);
        Assert.Equal(f16Wide, wide); // still mapped after the store's disposal
        bf16.CopyTo(0, wide);
        Assert.Equal(bf16Wide, wide);
        f32.CopyTo(0, wide);
        Assert.Equal(data, wide);
        lease.Dispose();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(17)]
    [InlineData(1000)]
    [InlineData((1 << 20) + 37)] // more than one conversion chunk, odd tail for the vector loop
    public void Widens_every_dtype_exactly(int n)
    {
        using var dir = new TempDir();
        var data = Sample(n, n);
        SafeTensorWriter.Write(dir.File("model.safetensors"), new[]
        {
            ("f32", DType.F32, new long[] { n }, data),
            ("f16", DType.F16, new long[] { n }, data),
            ("bf16", DType.BF16, new long[] { n }, data),
        });

        using var store = TensorNames.Open(dir.Path);
        var f32 = store.ReadFloat32("f32", n);
        var f16 = store.ReadFloat32("f16", n);
        var bf16 = store.ReadFloat32("bf16", n);
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(BitConverter.SingleToUInt32Bits(data[i]), BitConverter.SingleToUInt32Bits(f32[i]));
            float h = (float)(Half)data[i];
            Assert.True(BitConverter.SingleToUInt32Bits(h) == BitConverter.SingleToUInt32Bits(f16[i]) || (float.IsNaN(h) && float.IsNaN(f16[i])), $"f16 [{i}] {data[i]}");
            float b = BFloat16Expected(data[i]);
            Assert.True(BitConverter.SingleToUInt32Bits(b) == BitConverter.SingleToUInt32Bits(bf16[i]) || (float.IsNaN(b) && float.IsNaN(bf16[i])), $"bf16 [{i}] {data[i]}");
        }

        var into = new float[n];
        store.ReadFloat32Into("bf16", into, n);
        Assert.Equal(bf16, into);
        Assert.Equal(DType.BF16, store.GetInfo("bf16").DType);
        Assert.Equal(DType.F16, store.GetInfo("f16").DType);
    }

    [Theory]
    [InlineData(1f, 0x3F80)]
    [InlineData(1f + 1f / 256, 0x3F80)]       // halfway, rounds to even (down)
    [InlineData(1f + 3f / 256, 0x3F82)]       // halfway, rounds to even (up)
    [InlineData(1f + 1f / 256 + 1f / 65536, 0x3F81)] // above halfway, rounds up
    [InlineData(-2.5f, 0xC020)]
    [InlineData(float.PositiveInfinity, 0x7F80)]
    [InlineData(3.3961e38f, 0x7F7F)]          // stays finite
    [InlineData(3.4e38f, 0x7F80)]             // rounds past max to infinity, as IEEE RNE does
    public void BFloat16_rounds_to_nearest_even(float value, int bits)
    {
        Assert.Equal((ushort)bits, SafeTensorWriter.ToBFloat16Bits(value));
    }

    [Fact]
    public void BFloat16_NaN_stays_NaN()
    {
        Assert.True(float.IsNaN(BFloat16Expected(float.NaN)));
        Assert.True(float.IsNaN(BFloat16Expected(BitConverter.UInt32BitsToSingle(0x7F800001)))); // would round to inf without the NaN check
    }

    [Fact]
    public void Writer_pads_header_to_8_bytes_and_keeps_metadata_and_shapes()
    {
        using var dir = new TempDir();
        var path = dir.File("model.safetensors");
        SafeTensorWriter.Write(path, new[]
        {
            ("a", DType.F16, new long[] { 2, 3 }, new float[] { 1, 2, 3, 4, 5, 6 }),
            ("scalar", DType.F32, Array.Empty<long>(), new float[] { 7 }),
            ("empty", DType.BF16, new long[] { 0, 4 }, Array.Empty<float>()),
        }, new Dictionary<string, string> { ["format"] = "pt" });

        var bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        Assert.Equal((long)(8 + n + 12 + 4), bytes.LongLength);

        using var store = TensorNames.Open(dir.Path);
        Assert.Equal(new[] { "a", "empty", "scalar" }, store.Names);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6 }, store.ReadFloat32("a", 2, 3));
        Assert.Equal(new float[] { 7 }, store.ReadFloat32("scalar"));
        Assert.Empty(store.ReadFloat32("empty", 0, 4));
    }

    [Fact]
    public void Newer_key_names_map_to_canonical_names()
    {
        using var dir = new TempDir();
        var one = new float[] { 1, 2 };
        SafeTensorWriter.Write(dir.File("model.safetensors"), new[]
        {
            ("model.vision_tower.vision_model.embeddings.class_embedding", DType.F32, new long[] { 2 }, one),
            ("model.multi_modal_projector.linear_1.weight", DType.F32, new long[] { 2 }, one),
            ("model.language_model.layers.0.self_attn.q_proj.weight", DType.F32, new long[] { 2 }, one),
            ("model.language_model.embed_tokens.weight", DType.F32, new long[] { 2 }, one),
            ("lm_head.weight", DType.F16, new long[] { 1, 2 }, one),
        });

        using var store = TensorNames.Open(dir.Path);
        Assert.Equal(new[]
        {
            "language_model.lm_head.weight",
            "language_model.model.embed_tokens.weight",
            "language_model.model.layers.0.self_attn.q_proj.weight",
            "multi_modal_projector.linear_1.weight",
            "vision_tower.vision_model.embeddings.class_embedding",
        }, store.Names);
        Assert.Equal(one, store.ReadFloat32("language_model.lm_head.weight", 1, 2));
        Assert.Equal(one, store.ReadFloat32("language_model.model.layers.0.self_attn.q_proj.weight", 2));
        Assert.True(store.Contains("lm_head.weight")); // lookups go through the same mapping
        Assert.Equal("language_model.lm_head.weight", store.GetInfo("lm_head.weight").Name);
        Assert.Equal(3, store.UnusedTensors().Count);
    }

    [Theory]
    [InlineData("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")]
    [InlineData("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")]
    [InlineData("vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")]
    [InlineData("vision_tower.vision_model.post_layernorm.bias", "vision_tower.vision_model.post_layernorm.bias")]
    [InlineData("model.multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.bias")]
    [InlineData("model.language_model.norm.weight", "language_model.model.norm.weight")]
    [InlineData("lm_head.weight", "language_model.lm_head.weight")]
    [InlineData("language_model.lm_head.weight", "language_model.lm_head.weight")]
    [InlineData("language_model.model.layers.3.mlp.up_proj.weight", "language_model.model.layers.3.mlp.up_proj.weight")]
    [InlineData("model.image_newline", "image_newline")]
    [InlineData("image_newline", "image_newline")]
    [InlineData("something.else", "something.else")]
    public void Mapping_is_canonical_and_idempotent(string raw, string canonical)
    {
        Assert.Equal(canonical, TensorNames.ToCanonical(raw));
        Assert.Equal(canonical, TensorNames.ToCanonical(canonical));
    }

    [Fact]
    public void Sharded_checkpoint_with_newer_names_opens()
    {
        using var dir = new TempDir();
        SafeTensorWriter.Write(dir.File("a.safetensors"), new[] { ("model.language_model.norm.weight", DType.BF16, new long[] { 3 }, new float[] { 1, 2, 3 }) });
        SafeTensorWriter.Write(dir.File("b.safetensors"), new[] { ("lm_head.weight", DType.F16, new long[] { 1, 3 }, new float[] { 4, 5, 6 }) });
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            """{"metadata":{"total_size":12},"weight_map":{"model.language_model.norm.weight":"a.safetensors","lm_head.weight":"./b.safetensors"}}""");

        using var store = TensorNames.Open(dir.Path);
        Assert.Equal(new float[] { 1, 2, 3 }, store.ReadFloat32("language_model.model.norm.weight", 3));
        Assert.Equal(new float[] { 4, 5, 6 }, store.ReadFloat32("language_model.lm_head.weight", 1, 3));
        Assert.EndsWith("b.safetensors", store.GetInfo("language_model.lm_head.weight").FilePath);
    }
}
