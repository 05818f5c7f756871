using AutoPrune.Compute.Quant;
using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;
using Xunit;

using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Tests.Gguf;

/// <summary>
/// The exporter against llama.cpp's own files: the demo model's safetensors written as a text GGUF in every file type and
/// an mmproj give byte for byte the files llama.cpp's converter and quantizer made (the fixture's sha256 for all five text
/// variants, and the shipped bytes for the three in tests/data), and the Q4_K_M type mix is llama.cpp's.
/// </summary>
public sealed class GgufExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "autoprune-gguf-export-" + Guid.NewGuid().ToString("N"))).FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    [Theory]
    [InlineData("f16")]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    public void Exported_files_are_byte_identical_to_llama_cpps(string variant)
    {
        Assert.True(QuantMix.TryParse(variant, out var ftype));
        var result = LlavaGgufExporter.Export(TestData.ModelDir, _dir, ftype);
        Assert.Equal($"shapes-llava-tiny-{variant}.gguf", Path.GetFileName(result.TextPath));
        var files = GgufTestData.References.GetProperty("files");
        if (GgufTestData.Shipped.Contains(variant))
        {
            var want = File.ReadAllBytes(GgufTestData.Text(variant));
            var got = File.ReadAllBytes(result.TextPath);
            Assert.True(want.Length == got.Length, $"{variant}: {got.Length} bytes written, llama.cpp's file has {want.Length}");
            int diff = want.AsSpan().CommonPrefixLength(got);
            Assert.True(diff == want.Length, $"{variant}: first differing byte at offset {diff}");
        }
        Assert.Equal(files.GetProperty(variant).GetProperty("sha256").GetString(), GgufTestData.Sha256(result.TextPath));
        Assert.Equal(files.GetProperty("mmproj").GetProperty("sha256").GetString(), GgufTestData.Sha256(result.MmprojPath));
        Assert.Equal(File.ReadAllBytes(GgufTestData.Mmproj), File.ReadAllBytes(result.MmprojPath));
    }

    /// <summary>The per-tensor types of each file type, as llama.cpp's quantizer chose them (the fixture's tensor_types).</summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    [InlineData("f16")]
    public void The_type_mix_is_llama_cpps(string variant)
    {
        Assert.True(QuantMix.TryParse(variant, out var ftype));
        var want = GgufTestData.Variant(variant).GetProperty("tensor_types");
        using var f16 = GgufFile.Open(GgufTestData.Text("f16"));
        var order = QuantMix.ProcessingOrder(f16.Tensors, t => t.Name);
        var plan = QuantMix.Plan(ftype, order.Select(t => (t.Name, t.Dimensions)).ToList(), 8);
        foreach (var p in want.EnumerateObject()) Assert.True(p.Value.GetString() == plan[p.Name].ToString(), $"{variant} {p.Name}: {plan[p.Name]}, llama.cpp chose {p.Value.GetString()}");
        Assert.Equal(want.EnumerateObject().Count(), plan.Count);
        if (variant != "f16") Assert.Equal(want.EnumerateObject().Select(p => p.Name), order.Select(t => t.Name)); // the quantizer's tensor order
    }

    /// <summary>The file types the fixture has no file for: each tensor holds the checkpoint's values as the format rounds them.</summary>
    [Theory]
    [InlineData("f32")]
    [InlineData("bf16")]
    [InlineData("q5_0")]
    public void Other_file_types_hold_the_checkpoint_as_their_format_rounds_it(string type)
    {
        Assert.True(QuantMix.TryParse(type, out var ftype));
        var r = LlavaGgufExporter.Export(TestData.ModelDir, _dir, ftype);
        using var g = GgufLlavaSource.Open(r.TextPath, r.MmprojPath);
        using var st = TensorNames.Open(TestData.ModelDir);
        using var f16 = GgufFile.Open(GgufTestData.Text("f16"));
        Assert.Equal((long)ftype, g.Text.GetInteger("general.file_type"));
        if (ftype != LlamaFileType.MostlyQ5_0)
        {
            // a converter's output: the f16 file's keys and tensors in the same order
            Assert.Equal(f16.Metadata.Select(kv => kv.Key), g.Text.Metadata.Select(kv => kv.Key));
            Assert.Equal(f16.Tensors.Select(t => t.Name), g.Text.Tensors.Select(t => t.Name));
        }
        foreach (var name in g.Names.Where(n => n.StartsWith("language_model.", StringComparison.Ordinal)))
        {
            var want = st.ReadFloat32(name);
            var got = g.ReadFloat32(name);
            var stored = g.TypeOf(name);
            var shape = st.GetInfo(name).Shape;
            if (shape.Length == 1) { Assert.Equal(GgmlType.F32, stored); Assert.Equal(want, got); continue; }
            switch (ftype)
            {
                case LlamaFileType.AllF32:
                    Assert.Equal(GgmlType.F32, stored);
                    Assert.Equal(want, got);
                    break;
                case LlamaFileType.MostlyBF16:
                    Assert.Equal(GgmlType.BF16, stored);
                    for (int i = 0; i < want.Length; i++) Assert.Equal(BitConverter.Int32BitsToSingle(BlockCodec.ToBFloat16(want[i]) << 16), got[i]);
                    break;
                default:
                    Assert.Equal(name == "language_model.lm_head.weight" ? GgmlType.Q8_0 : GgmlType.Q5_0, stored);
                    var q = QuantizedMatrix.Quantize(stored.ToQuantFormat()!.Value, want, (int)shape[0], (int)shape[1]);
                    Assert.Equal(q.Dequantize(), got);
                    break;
            }
        }
    }

    [Fact]
    public void The_q4_k_m_rules_on_a_7b_shape()
    {
        // LLaVA-1.5-7B's text model: 32 layers, rows of 4096 / 11008, so K-quants apply everywhere.
        var tensors = new List<(string, long[])> { ("output.weight", [4096, 32000]), ("token_embd.weight", [4096, 32000]), ("output_norm.weight", [4096]) };
        for (int i = 0; i < 32; i++)
            foreach (var (n, ne) in new (string, long[])[] { ("attn_k.weight", [4096, 4096]), ("attn_norm.weight", [4096]), ("attn_output.weight", [4096, 4096]), ("attn_q.weight", [4096, 4096]),
                         ("attn_v.weight", [4096, 4096]), ("ffn_down.weight", [11008, 4096]), ("ffn_gate.weight", [4096, 11008]), ("ffn_norm.weight", [4096]), ("ffn_up.weight", [4096, 11008]) })
                tensors.Add(($"blk.{i}.{n}", ne));
        var plan = QuantMix.Plan(LlamaFileType.MostlyQ4_K_M, QuantMix.ProcessingOrder(tensors, t => t.Item1), 32);
        Assert.Equal(GgmlType.Q6_K, plan["output.weight"]);
        Assert.Equal(GgmlType.Q4_K, plan["token_embd.weight"]);
        Assert.Equal(GgmlType.F32, plan["blk.0.attn_norm.weight"]);
        var more = Enumerable.Range(0, 32).Where(i => plan[$"blk.{i}.ffn_down.weight"] == GgmlType.Q6_K).ToArray();
        // use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2
        Assert.Equal([0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31], more);
        Assert.Equal(more, Enumerable.Range(0, 32).Where(i => plan[$"blk.{i}.attn_v.weight"] == GgmlType.Q6_K));
        Assert.All(Enumerable.Range(0, 32), i => Assert.Equal(GgmlType.Q4_K, plan[$"blk.{i}.attn_q.weight"]));
    }

    [Fact]
    public void Text_and_name_helpers_match_gguf_py()
    {
        Assert.Equal("Shapes Llava Tiny", LlavaGgufExporter.TitleCase("shapes llava tiny"));
        Assert.Equal("Llava 1.5 7B Hf", LlavaGgufExporter.TitleCase("llava 1.5 7b hf"));
        Assert.Equal("3.7M", LlavaGgufExporter.SizeLabel(3_690_000));
        Assert.Equal("6.7B", LlavaGgufExporter.SizeLabel(6_738_415_616));
        Assert.Equal("13B", LlavaGgufExporter.SizeLabel(13_015_864_320));
        Assert.Equal("236K", LlavaGgufExporter.SizeLabel(236_000));
    }

    [Fact]
    public void A_checkpoint_with_values_beyond_fp16_is_refused_for_f16_naming_the_tensor()
    {
        string model = Path.Combine(_dir, "big");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        // Rewrite one shard with an fp32 embedding holding 1e6.
        using (var store = TensorNames.Open(TestData.ModelDir))
        {
            var names = store.Names.ToList();
            var tensors = new List<(string, DType, long[], float[])>();
            foreach (var n in names)
            {
                var values = store.ReadFloat32(n);
                if (n == "language_model.model.embed_tokens.weight") values[5] = 1e6f;
                tensors.Add((n, DType.F32, store.GetInfo(n).Shape, values));
            }
            foreach (var f in Directory.GetFiles(model, "model*.safetensors*")) File.Delete(f);
            SafeTensorWriter.Write(Path.Combine(model, "model.safetensors"), tensors);
        }
        var e = Assert.Throws<ModelLoadException>(() => LlavaGgufExporter.Export(model, Path.Combine(_dir, "out")));
        Assert.Contains("'language_model.model.embed_tokens.weight' has value 1000000 at element 5, beyond fp16's range", e.Message);
        // Quantized, the value is representable (Q8_0 scales are fp16 too, but 1e6/127 fits).
        var r = LlavaGgufExporter.Export(model, Path.Combine(_dir, "out"), LlamaFileType.MostlyQ8_0);
        using var g = GgufFile.Open(r.TextPath);
        var emb = g.ReadFloat32(g.GetTensor("token_embd.weight"));
        Assert.InRange(emb[5], 0.99e6f, 1.01e6f);
    }
}
