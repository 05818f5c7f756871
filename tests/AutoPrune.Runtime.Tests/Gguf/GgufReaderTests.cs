using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;
using Xunit;

using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Tests.Gguf;

/// <summary>
/// The GGUF reader on llama.cpp's own files (every tensor info and offset as references.json lists them) and on files
/// built to hold every value type; the writer writing what the reader read back to the same bytes.
/// </summary>
public sealed class GgufReaderTests
{
    [Theory]
    [InlineData("f16")]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    public void Tensor_infos_match_the_fixture(string variant)
    {
        using var f = GgufFile.Open(GgufTestData.Text(variant));
        var types = GgufTestData.Variant(variant).GetProperty("tensor_types");
        var shapes = GgufTestData.References.GetProperty("tensor_shapes");
        Assert.Equal(3u, f.Version);
        Assert.Equal(32, f.Alignment);
        Assert.Equal(75, f.Tensors.Count);
        Assert.Equal(types.EnumerateObject().Count(), f.Tensors.Count);
        foreach (var t in f.Tensors)
        {
            Assert.Equal(types.GetProperty(t.Name).GetString(), t.Type.ToString());
            Assert.Equal(shapes.GetProperty(t.Name).EnumerateArray().Select(e => e.GetInt64()), t.Dimensions);
            Assert.Equal(0, t.Offset % 32);
        }
        // Tensor order as references.json lists the types (the file order).
        Assert.Equal(types.EnumerateObject().Select(p => p.Name), f.Tensors.Select(t => t.Name));
        var files = GgufTestData.References.GetProperty("files").GetProperty(variant);
        Assert.Equal(files.GetProperty("bytes").GetInt64(), f.Length);
        Assert.Equal(files.GetProperty("general.file_type").GetInt64(), f.GetInteger("general.file_type"));
    }

    /// <summary>Version 2 has version 3's layout (3 only added big-endian files): the same bytes with version 2 read the same.</summary>
    [Fact]
    public void Version_2_files_read_like_version_3()
    {
        var bytes = File.ReadAllBytes(GgufTestData.Text("Q4_0"));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), 2);
        using var v2 = GgufFile.FromBytes(bytes);
        using var v3 = GgufFile.Open(GgufTestData.Text("Q4_0"));
        Assert.Equal(2u, v2.Version);
        Assert.Equal(v3.Metadata.Select(kv => (kv.Key, kv.Value.ToString())), v2.Metadata.Select(kv => (kv.Key, kv.Value.ToString())));
        Assert.Equal(v3.Tensors.Select(t => (t.Name, t.Type, t.Offset, t.ByteSize)), v2.Tensors.Select(t => (t.Name, t.Type, t.Offset, t.ByteSize)));
        Assert.Equal(v3.ReadFloat32(v3.GetTensor("blk.3.ffn_up.weight")), v2.ReadFloat32(v2.GetTensor("blk.3.ffn_up.weight")));
    }

    [Fact]
    public void Data_offsets_match_the_dequant_checks()
    {
        foreach (var d in GgufTestData.References.GetProperty("dequant_checks").EnumerateArray())
        {
            using var f = GgufFile.Open(GgufTestData.FileNamed(d.GetProperty("file").GetString()!));
            var t = f.GetTensor(d.GetProperty("tensor").GetString()!);
            Assert.Equal(d.GetProperty("data_offset_in_file").GetInt64(), f.DataOffset + t.Offset);
            Assert.Equal(d.GetProperty("n_bytes").GetInt64(), t.ByteSize);
            Assert.Equal(d.GetProperty("raw_sha256").GetString(), GgufTestData.Sha256(f.GetBytes(t)));
        }
    }

    [Fact]
    public void Metadata_of_the_text_and_mmproj_files()
    {
        using var t = GgufFile.Open(GgufTestData.Text("Q4_K_M"));
        Assert.Equal("llama", t.GetString("general.architecture"));
        Assert.Equal("Shapes Llava Tiny", t.GetString("general.name"));
        Assert.Equal(8, t.GetInteger("llama.block_count"));
        Assert.Equal(1e-5, t.GetReal("llama.attention.layer_norm_rms_epsilon"));
        Assert.Equal(10000.0, t.GetReal("llama.rope.freq_base"));
        Assert.Equal(true, t.GetBool("tokenizer.ggml.add_bos_token"));
        Assert.True(t.TryGetValue("tokenizer.ggml.tokens", out var tokens));
        Assert.True(tokens.TryGetArray<string>(out var list));
        Assert.Equal(402, list.Length);
        Assert.Equal(["<unk>", "<s>", "</s>"], list[..3]);
        Assert.Equal("<image>", list[400]);
        // llama.cpp's quantizer moves the two keys it sets to the end.
        Assert.Equal(["general.quantization_version", "general.file_type"], t.Metadata.TakeLast(2).Select(kv => kv.Key));

        using var m = GgufFile.Open(GgufTestData.Mmproj);
        Assert.Equal("clip", m.GetString("general.architecture"));
        Assert.Equal("mlp", m.GetString("clip.projector_type"));
        Assert.True(m.TryGetValue("clip.vision.feature_layer", out var fl));
        Assert.Equal(GgufValueType.Int32, fl.ElementType);
        Assert.True(fl.TryGetIntegerArray(out var layers));
        Assert.Equal([3L], layers);
        Assert.True(m.TryGetValue("clip.vision.image_mean", out var mean));
        Assert.True(mean.TryGetArray<float>(out var mv));
        Assert.Equal([0.48145467f, 0.4578275f, 0.40821072f], mv);
        Assert.Equal(57, m.Tensors.Count);
        Assert.Equal(GgufTestData.References.GetProperty("mmproj_tensors").EnumerateObject().Select(p => p.Name), m.Tensors.Select(x => x.Name));
    }

    [Fact]
    public void Typed_getters_refuse_other_types_naming_the_key()
    {
        using var t = GgufFile.Open(GgufTestData.Text("Q4_0"));
        var e = Assert.Throws<ModelLoadException>(() => t.GetString("llama.block_count"));
        Assert.Contains("'llama.block_count' is uint32 (8); expected string", e.Message);
        Assert.Equal("llama.block_count", e.TensorName);
        e = Assert.Throws<ModelLoadException>(() => t.GetInteger("llama.block_count", 16, 32));
        Assert.Contains("'llama.block_count' = 8 is out of range; expected a value in [16, 32]", e.Message);
        Assert.Null(t.GetString("no.such.key"));
        e = Assert.Throws<ModelLoadException>(() => t.GetTensor("blk.0.attn_qq.weight"));
        Assert.Contains("has no tensor 'blk.0.attn_qq.weight'", e.Message);
    }

    /// <summary>Reading every fixture file and writing what was read gives the same bytes: metadata, infos, alignment, padding.</summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("mmproj")]
    [InlineData("f16")]
    public void Writing_what_was_read_reproduces_the_file(string variant)
    {
        string path = variant == "mmproj" ? GgufTestData.Mmproj : GgufTestData.Text(variant);
        using var f = GgufFile.Open(path);
        var w = new GgufWriter();
        foreach (var (k, v) in f.Metadata) w.Add(k, v);
        foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Type, t.Dimensions, f.GetMemory(t));
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        Assert.Equal(File.ReadAllBytes(path), ms.ToArray());
    }

    internal static GgufValue[] EveryValueType() =>
    [
        GgufValue.Of((byte)200), GgufValue.Of((sbyte)-7), GgufValue.Of((ushort)65000), GgufValue.Of((short)-30000),
        GgufValue.Of(4_000_000_000u), GgufValue.Of(-2_000_000_000), GgufValue.Of(1.5e-7f), GgufValue.Of(true), GgufValue.Of("héllo ▁ <0x0A>"),
        GgufValue.Of(ulong.MaxValue), GgufValue.Of(long.MinValue), GgufValue.Of(Math.PI),
        GgufValue.Array(new byte[] { 1, 2, 255 }), GgufValue.Array(new sbyte[] { -128, 127 }), GgufValue.Array(new ushort[] { 1, 65535 }),
        GgufValue.Array(new short[] { -1, 2 }), GgufValue.Array(new uint[] { 0, uint.MaxValue }), GgufValue.Array(new[] { -5, 5 }),
        GgufValue.Array(new[] { 0.25f, float.NegativeInfinity }), GgufValue.Array(new[] { true, false, true }), GgufValue.Array(new[] { "a", "", "ünï" }),
        GgufValue.Array(new[] { 1UL << 63 }), GgufValue.Array(new[] { -1L }), GgufValue.Array(new[] { 1e300, -0.0 }),
        GgufValue.Array(Array.Empty<int>()),
        GgufValue.Array(new[] { GgufValue.Array(new[] { 1, 2 }), GgufValue.Array(new[] { "x" }), GgufValue.Array(new[] { GgufValue.Array(new[] { 3.5 }) }) }),
    ];

    [Fact]
    public void Every_value_type_round_trips()
    {
        var w = new GgufWriter();
        var values = EveryValueType();
        for (int i = 0; i < values.Length; i++) w.Add($"test.value{i}", values[i]);
        w.AddTensor("t", GgmlType.F32, [3], new byte[12]);
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        using var f = GgufFile.FromBytes(ms.ToArray());
        Assert.Equal(values.Length, f.Metadata.Count);
        for (int i = 0; i < values.Length; i++)
        {
            var got = f.Metadata[i].Value;
            Assert.Equal(values[i].Type, got.Type);
            Assert.Equal(values[i].ElementType, got.ElementType);
            Assert.Equal(Render(values[i]), Render(got));
        }
        // ... and writes back to the same bytes.
        var w2 = new GgufWriter();
        foreach (var (k, v) in f.Metadata) w2.Add(k, v);
        w2.AddTensor("t", GgmlType.F32, [3], new byte[12]);
        using var ms2 = new MemoryStream();
        w2.WriteTo(ms2);
        Assert.Equal(ms.ToArray(), ms2.ToArray());
    }

    private static string Render(GgufValue v) => v.Raw switch
    {
        GgufValue[] nested => "[" + string.Join("|", nested.Select(Render)) + "]",
        Array a => string.Join(",", a.Cast<object>().Select(o => Convert.ToString(o, System.Globalization.CultureInfo.InvariantCulture))),
        var o => Convert.ToString(o, System.Globalization.CultureInfo.InvariantCulture)!,
    };

    [Fact]
    public void A_custom_alignment_places_every_tensor_on_it()
    {
        var w = new GgufWriter();
        w.Add("general.alignment", GgufValue.Of(256u));
        w.AddTensor("a", GgmlType.F32, [3], new byte[12]);
        w.AddTensor("b", GgmlType.Q8_0, [32, 2], new byte[68]);
        w.AddTensor("c", GgmlType.F16, [5], new byte[10]);
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        using var f = GgufFile.FromBytes(ms.ToArray());
        Assert.Equal(256, f.Alignment);
        Assert.Equal(0, f.DataOffset % 256);
        Assert.Equal([0L, 256L, 512L], f.Tensors.Select(t => t.Offset));
        Assert.Equal(f.DataOffset + 512 + 256, f.Length);
    }

    [Fact]
    public void Tensor_data_is_a_view_of_the_mapped_file()
    {
        using var f = GgufFile.Open(GgufTestData.Text("Q8_0"));
        var t = f.GetTensor("token_embd.weight");
        var m1 = f.GetMemory(t);
        var m2 = f.GetMemory(t);
        unsafe
        {
            using var h1 = m1.Pin();
            using var h2 = m2.Pin();
            Assert.True(h1.Pointer == h2.Pointer, "two reads of a tensor share the mapped bytes");
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) _ = f.GetMemory(t).Length;
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 100 * 256, $"100 views of an 82 KB tensor allocated {allocated} bytes: its data is not copied");
        // A retained file stays mapped after Dispose; the lease releases it.
        var lease = f.Retain();
        f.Dispose();
        Assert.Equal(t.ByteSize, m1.Span.Length);
        Assert.Equal(File.ReadAllBytes(GgufTestData.Text("Q8_0")).AsSpan((int)(f.DataOffset + t.Offset), 34).ToArray(), m1.Span[..34].ToArray());
        lease.Dispose();
        Assert.Throws<ObjectDisposedException>(() => f.GetMemory(t));
    }
}
