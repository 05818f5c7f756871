using AutoPrune.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

/// <summary>Every broken checkpoint gives a <see cref="ModelLoadException"/> naming the file and the tensor.</summary>
public class SafeTensorValidationTests
{
    private static ModelLoadException OpenFails(TempDir dir)
    {
        var ex = Assert.Throws<ModelLoadException>(() => { using var _ = TensorNames.Open(dir.Path); });
        Assert.False(string.IsNullOrWhiteSpace(ex.Message));
        return ex;
    }

    /// <summary>Writes a single model.safetensors with the given header and data size; Open must fail naming the file (and tensor).</summary>
    private static ModelLoadException SingleFileFails(string header, long dataBytes, string? tensor, ulong? declared = null)
    {
        using var dir = new TempDir();
        var path = dir.File("model.safetensors");
        RawSafeTensors.Write(path, header, dataBytes, declared);
        var ex = OpenFails(dir);
        Assert.Contains(path, ex.Message);
        Assert.Equal(path, ex.FilePath);
        if (tensor is not null)
        {
            Assert.Contains(tensor, ex.Message);
            Assert.Equal(tensor, ex.TensorName);
        }
        return ex;
    }

    [Fact]
    public void Missing_folder()
    {
        var path = Path.Combine(Path.GetTempPath(), "autoprune-does-not-exist-" + Guid.NewGuid().ToString("N"));
        var ex = Assert.Throws<ModelLoadException>(() => TensorNames.Open(path));
        Assert.Contains(path, ex.Message);
        Assert.Contains("does not exist", ex.Message);
    }

    [Fact]
    public void Folder_without_checkpoint_lists_its_files()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), "{}");
        var ex = OpenFails(dir);
        Assert.Contains("model.safetensors", ex.Message);
        Assert.Contains("config.json", ex.Message);
        Assert.Contains(dir.Path, ex.Message);
    }

    [Fact]
    public void File_shorter_than_length_prefix()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("model.safetensors"), new byte[] { 1, 2, 3 });
        var ex = OpenFails(dir);
        Assert.Contains(dir.File("model.safetensors"), ex.Message);
        Assert.Contains("8-byte", ex.Message);
    }

    [Fact]
    public void Header_length_beyond_file()
        => Assert.Contains("truncated", SingleFileFails("{}", 0, null, declared: 1000).Message);

    [Theory]
    [InlineData(100_000_001UL)]
    [InlineData(ulong.MaxValue)]
    public void Header_length_above_limit_allocates_nothing(ulong declared)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var ex = SingleFileFails("{}", 16, null, declared);
        Assert.Contains("limit", ex.Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 10_000_000);
    }

    [Theory]
    [InlineData("{\"a\": {\"dtype\": \"F32\", ")]
    [InlineData("not json at all")]
    [InlineData("{\"a\": 1,}")]
    public void Malformed_header_json(string header)
        => Assert.Contains("malformed JSON header", SingleFileFails(header, 0, null).Message);

    [Fact]
    public void Header_not_an_object()
        => SingleFileFails("[1, 2]", 0, null);

    [Fact]
    public void Metadata_is_allowed()
    {
        using var dir = new TempDir();
        RawSafeTensors.Write(dir.File("model.safetensors"),
            """{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8);
        using var store = TensorNames.Open(dir.Path);
        Assert.Equal(new[] { "w" }, store.Names);
        Assert.Equal(new float[] { 0, 0 }, store.ReadFloat32("w", 2));
    }

    [Theory]
    [InlineData("I64")]
    [InlineData("F64")]
    [InlineData("U8")]
    [InlineData("F8_E4M3")]
    [InlineData("f32")]
    public void Unsupported_dtype_is_named(string dtype)
    {
        var ex = SingleFileFails($$$"""{"w.weight":{"dtype":"{{{dtype}}}","shape":[2],"data_offsets":[0,16]}}""", 16, "w.weight");
        Assert.Contains($"'{dtype}'", ex.Message);
        Assert.Contains("F32, F16, BF16", ex.Message);
    }

    [Fact]
    public void Shape_does_not_match_byte_length()
    {
        var ex = SingleFileFails("""{"w.weight":{"dtype":"F16","shape":[3,4],"data_offsets":[0,16]}}""", 16, "w.weight");
        Assert.Contains("needs 24 bytes", ex.Message);
        Assert.Contains("span 16", ex.Message);
    }

    [Fact]
    public void Huge_shape_overflows_cleanly()
        => SingleFileFails("""{"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}}""", 16, "w");

    [Theory]
    [InlineData("[-1,2]")]
    [InlineData("[1.5]")]
    [InlineData("[\"2\"]")]
    [InlineData("7")]
    public void Bad_shape_entries(string shape)
        => SingleFileFails($$$"""{"w":{"dtype":"F32","shape":{{{shape}}},"data_offsets":[0,8]}}""", 8, "w");

    [Theory]
    [InlineData("[0,16]")]      // past the end of an 8-byte data region
    [InlineData("[8,4]")]       // end before begin
    [InlineData("[0]")]         // not a pair
    [InlineData("[0,8,16]")]
    [InlineData("[-8,0]")]
    [InlineData("[0,18446744073709551615]")]
    public void Offsets_outside_data_region_or_malformed(string offsets)
        => SingleFileFails($$$"""{"w":{"dtype":"F32","shape":[2],"data_offsets":{{{offsets}}}}}""", 8, "w");

    [Fact]
    public void Offsets_outside_data_region_say_so()
        => Assert.Contains("outside the data region", SingleFileFails("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8, "w").Message);

    [Fact]
    public void Overlapping_tensors_are_both_named()
    {
        var ex = SingleFileFails(
            """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16, "b");
        Assert.Contains("overlaps", ex.Message);
        Assert.Contains("'a'", ex.Message);
    }

    [Fact]
    public void Missing_fields_in_entry()
    {
        SingleFileFails("""{"w":{"shape":[2],"data_offsets":[0,8]}}""", 8, "w");
        SingleFileFails("""{"w":{"dtype":"F32","data_offsets":[0,8]}}""", 8, "w");
        SingleFileFails("""{"w":{"dtype":"F32","shape":[2]}}""", 8, "w");
        SingleFileFails("""{"w":[1,2]}""", 8, "w");
    }

    [Fact]
    public void Duplicate_tensor_in_header()
        => Assert.Contains("twice", SingleFileFails(
            """{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, "w").Message);

    [Fact]
    public void Same_tensor_under_old_and_new_names_is_ambiguous()
    {
        using var dir = new TempDir();
        SafeTensorWriter.Write(dir.File("model.safetensors"), new[]
        {
            ("lm_head.weight", DType.F32, new long[] { 1 }, new float[] { 1 }),
            ("language_model.lm_head.weight", DType.F32, new long[] { 1 }, new float[] { 2 }),
        });
        var ex = OpenFails(dir);
        Assert.Contains("language_model.lm_head.weight", ex.Message);
        Assert.Contains("twice", ex.Message);
    }

    // ------------------------------------------------------------------ sharded

    private static TempDir ShardedDir(string weightMapJson, bool writeShard = true)
    {
        var dir = new TempDir();
        if (writeShard)
            SafeTensorWriter.Write(dir.File("shard-1.safetensors"), new[] { ("w", DType.F16, new long[] { 2 }, new float[] { 1, 2 }) });
        File.WriteAllText(dir.File("model.safetensors.index.json"), "{\"weight_map\": " + weightMapJson + "}");
        return dir;
    }

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("../outside.safetensors")]
    [InlineData("sub/../../outside.safetensors")]
    [InlineData("sub/../shard-1.safetensors")]
    [InlineData("..\\\\outside.safetensors")]
    [InlineData("")]
    public void Shard_paths_must_stay_inside_the_folder(string shard)
    {
        using var dir = ShardedDir($$"""{"w": "{{shard}}"}""");
        var ex = OpenFails(dir);
        Assert.Contains("model.safetensors.index.json", ex.Message);
        Assert.Contains("'w'", ex.Message);
        Assert.Equal("w", ex.TensorName);
    }

    [Fact]
    public void Index_naming_a_tensor_its_shard_lacks()
    {
        using var dir = ShardedDir("""{"w": "shard-1.safetensors", "missing.weight": "shard-1.safetensors"}""");
        var ex = OpenFails(dir);
        Assert.Contains("missing.weight", ex.Message);
        Assert.Contains(dir.File("shard-1.safetensors"), ex.Message);
        Assert.Equal("missing.weight", ex.TensorName);
    }

    [Fact]
    public void Index_naming_a_missing_shard_file()
    {
        using var dir = ShardedDir("""{"w": "shard-9.safetensors"}""");
        var ex = OpenFails(dir);
        Assert.Contains("shard-9.safetensors", ex.Message);
        Assert.Contains("does not exist", ex.Message);
    }

    [Theory]
    [InlineData("{\"weight_map\": {\"w\": ")]
    [InlineData("[]")]
    [InlineData("{\"metadata\": {}}")]
    [InlineData("{\"weight_map\": {\"w\": 3}}")]
    [InlineData("{\"weight_map\": {}}")]
    public void Malformed_index(string index)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("model.safetensors.index.json"), index);
        var ex = OpenFails(dir);
        Assert.Contains(dir.File("model.safetensors.index.json"), ex.Message);
    }

    [Fact]
    public void Malformed_index_names_the_line()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("model.safetensors.index.json"), "{\n \"weight_map\": {\n  \"w\": oops\n }\n}");
        Assert.Contains("line 3", OpenFails(dir).Message);
    }

    [Fact]
    public void Broken_shard_is_named()
    {
        using var dir = ShardedDir("""{"w": "shard-1.safetensors", "v": "shard-2.safetensors"}""");
        RawSafeTensors.Write(dir.File("shard-2.safetensors"), "{\"v\": {", 0);
        var ex = OpenFails(dir);
        Assert.Contains(dir.File("shard-2.safetensors"), ex.Message);
    }

    // ------------------------------------------------------------------ reading

    private static SafeTensorStore SmallStore(TempDir dir)
    {
        SafeTensorWriter.Write(dir.File("model.safetensors"), new[]
        {
            ("language_model.model.layers.0.self_attn.q_proj.weight", DType.F16, new long[] { 2, 3 }, new float[6]),
        });
        return TensorNames.Open(dir.Path);
    }

    [Fact]
    public void Reading_a_missing_tensor_names_it_and_lists_the_folder()
    {
        using var dir = new TempDir();
        using var store = SmallStore(dir);
        var ex = Assert.Throws<ModelLoadException>(() => store.ReadFloat32("language_model.model.layers.1.self_attn.q_proj.weight"));
        Assert.Contains("language_model.model.layers.1.self_attn.q_proj.weight", ex.Message);
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("model.safetensors", ex.Message);
        Assert.Contains("Similar names: language_model.model.layers.0.self_attn.q_proj.weight", ex.Message);
        Assert.Equal("language_model.model.layers.1.self_attn.q_proj.weight", ex.TensorName);
        Assert.Throws<ModelLoadException>(() => store.GetInfo("nope"));
    }

    [Fact]
    public void Shape_mismatch_names_file_tensor_and_both_shapes()
    {
        using var dir = new TempDir();
        using var store = SmallStore(dir);
        var ex = Assert.Throws<ModelLoadException>(() => store.ReadFloat32("language_model.model.layers.0.self_attn.q_proj.weight", 3, 2));
        Assert.Contains("language_model.model.layers.0.self_attn.q_proj.weight", ex.Message);
        Assert.Contains(dir.File("model.safetensors"), ex.Message);
        Assert.Contains("[2, 3]", ex.Message);
        Assert.Contains("[3, 2]", ex.Message);
        Assert.Throws<ModelLoadException>(() => store.ReadFloat32("language_model.model.layers.0.self_attn.q_proj.weight", 6));
        Assert.Single(store.UnusedTensors()); // a failed read is not a use
    }

    [Fact]
    public void ReadInto_wrong_destination_length()
    {
        using var dir = new TempDir();
        using var store = SmallStore(dir);
        var ex = Assert.Throws<ModelLoadException>(() => store.ReadFloat32Into("language_model.model.layers.0.self_attn.q_proj.weight", new float[5]));
        Assert.Contains("destination holds 5", ex.Message);
    }
}
