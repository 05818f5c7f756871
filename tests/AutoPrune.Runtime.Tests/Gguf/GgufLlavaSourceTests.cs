using System.Text.Json;
using AutoPrune.Compute.Quant;
using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;
using Xunit;

using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Tests.Gguf;

/// <summary>
/// A text GGUF + mmproj seen as the LLaVA checkpoint they came from: every tensor under its canonical name equal to the
/// safetensors tensor (q/k permutation undone, fc1/fc2 naming handled), the metadata giving the same config, and the
/// vocabulary giving the fixture's token ids.
/// </summary>
public sealed class GgufLlavaSourceTests : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "autoprune-gguf-llava-" + Guid.NewGuid().ToString("N"))).FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private static GgufLlavaSource Open(string variant) => GgufLlavaSource.Open(GgufTestData.Text(variant), GgufTestData.Mmproj);

    [Fact]
    public void The_f16_files_hold_exactly_the_safetensors_weights_under_canonical_names()
    {
        using var gguf = Open("f16");
        using var st = TensorNames.Open(TestData.ModelDir);
        // The mmproj stores the CLIP layers before the feature layer (3 of 4) and no post-layernorm: LLaVA never runs them.
        var expected = st.Names.Where(n => !n.StartsWith("vision_tower.vision_model.post_layernorm", StringComparison.Ordinal)
                                           && !n.StartsWith("vision_tower.vision_model.encoder.layers.3.", StringComparison.Ordinal)).ToList();
        Assert.Equal(expected.Order(StringComparer.Ordinal), gguf.Names);
        foreach (var name in expected)
        {
            var shape = st.GetInfo(name).Shape;
            var want = st.ReadFloat32(name);
            var got = gguf.ReadFloat32(name, shape);
            Assert.True(want.AsSpan().SequenceEqual(got), $"{name}: GGUF values differ from the checkpoint's");
            Assert.Equal(st.ReadFloat16(name), gguf.ReadFloat16(name, shape));
        }
        Assert.Empty(gguf.UnusedTensors());
        Assert.Equal(GgmlType.F16, gguf.TypeOf("language_model.model.layers.0.self_attn.q_proj.weight"));
        Assert.Equal("v.blk.0.ffn_down.weight", gguf.Locate("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight").Info.Name);
        // Newer checkpoint key spellings resolve too.
        Assert.True(gguf.Contains("model.language_model.layers.0.self_attn.q_proj.weight"));
        Assert.True(gguf.Contains("lm_head.weight"));
    }

    [Fact]
    public void The_rope_permutation_is_undone_for_q_and_k()
    {
        using var st = TensorNames.Open(TestData.ModelDir);
        using var text = GgufFile.Open(GgufTestData.Text("f16"));
        var raw = text.ReadFloat32(text.GetTensor("blk.0.attn_q.weight"));
        var hf = st.ReadFloat32("language_model.model.layers.0.self_attn.q_proj.weight");
        Assert.False(raw.AsSpan().SequenceEqual(hf), "llama.cpp stores q permuted");
        // GGUF row 2i+s of head h is HF row s·24+i (head_dim 48): rows 0,1,2 of the file are HF rows 0, 24, 1.
        Assert.Equal(hf.AsSpan(0, 192).ToArray(), raw.AsSpan(0, 192).ToArray());
        Assert.Equal(hf.AsSpan(24 * 192, 192).ToArray(), raw.AsSpan(192, 192).ToArray());
        Assert.Equal(hf.AsSpan(1 * 192, 192).ToArray(), raw.AsSpan(2 * 192, 192).ToArray());
        var src = GgufTensorNames.GgufRowSources(192, 4);
        Assert.Equal(Enumerable.Range(0, 192), GgufTensorNames.HfRowSources(192, 4).Select(i => src[i]).Order());
        Assert.All(Enumerable.Range(0, 192), r => Assert.Equal(r, src[GgufTensorNames.HfRowSources(192, 4)[r]]));
    }

    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_K_M")]
    public void Quantized_tensors_come_as_stored_matrices_in_hf_row_order(string variant)
    {
        using var gguf = Open(variant);
        foreach (var name in new[] { "language_model.model.layers.3.self_attn.q_proj.weight", "language_model.model.layers.3.self_attn.k_proj.weight", "language_model.model.layers.1.mlp.down_proj.weight" })
        {
            var m = gguf.ReadMatrix(name, gguf.Locate(name).Info.RowMajorShape);
            Assert.Equal(gguf.TypeOf(name).ToQuantFormat(), m.Format);
            Assert.Equal(gguf.ReadFloat32(name), m.Dequantize());
        }
        // Unpermuted tensors are views of the file; permuted ones are copied rows.
        var down = gguf.ReadMatrix("language_model.model.layers.1.mlp.down_proj.weight");
        var (file, info) = gguf.Locate("language_model.model.layers.1.mlp.down_proj.weight");
        unsafe
        {
            using var a = down.Blocks.Pin();
            using var b = file.GetMemory(info).Pin();
            Assert.True(a.Pointer == b.Pointer);
        }
    }

    [Fact]
    public void The_metadata_gives_the_checkpoint_config()
    {
        using var gguf = Open("Q4_0");
        var hf = LlavaConfig.Load(TestData.ModelDir);
        var g = gguf.Config;
        Assert.Equal(hf.ModelType, g.ModelType);
        Assert.Equal(hf.ImageTokenIndex, g.ImageTokenIndex);
        Assert.Equal(hf.VisionFeatureSelectStrategy, g.VisionFeatureSelectStrategy);
        Assert.Equal(hf.ProjectorHiddenAct, g.ProjectorHiddenAct);
        Assert.Equal(hf.MultimodalProjectorBias, g.MultimodalProjectorBias);
        Assert.Equal(hf.ImageSeqLength, g.ImageSeqLength);
        Assert.Equal(hf.NumImageTokens, g.NumImageTokens);
        Assert.Equal(hf.ResolvedFeatureLayerIndex, g.ResolvedFeatureLayerIndex); // 3: HF runs 3 of 4 layers; the mmproj stores those 3
        Assert.Equal(3, g.VisionConfig.NumHiddenLayers);
        Assert.Equal(hf.TieWordEmbeddings, g.TieWordEmbeddings);
        var (ht, gt) = (hf.TextConfig, g.TextConfig);
        Assert.Equal((ht.ModelType, ht.HiddenSize, ht.IntermediateSize, ht.NumHiddenLayers, ht.NumAttentionHeads, ht.NumKeyValueHeads, ht.HeadDim),
                     (gt.ModelType, gt.HiddenSize, gt.IntermediateSize, gt.NumHiddenLayers, gt.NumAttentionHeads, gt.NumKeyValueHeads, gt.HeadDim));
        Assert.Equal((ht.RmsNormEps, ht.RopeTheta, ht.MaxPositionEmbeddings, ht.VocabSize, ht.BosTokenId, ht.PadTokenId, ht.TieWordEmbeddings, ht.HiddenAct),
                     (gt.RmsNormEps, gt.RopeTheta, gt.MaxPositionEmbeddings, gt.VocabSize, gt.BosTokenId, gt.PadTokenId, gt.TieWordEmbeddings, gt.HiddenAct));
        Assert.Equal(ht.EosTokenIds, gt.EosTokenIds);
        var (hv, gv) = (hf.VisionConfig, g.VisionConfig);
        Assert.Equal((hv.HiddenSize, hv.IntermediateSize, hv.ProjectionDim, hv.NumAttentionHeads, hv.ImageSize, hv.PatchSize, hv.LayerNormEps, hv.HiddenAct),
                     (gv.HiddenSize, gv.IntermediateSize, gv.ProjectionDim, gv.NumAttentionHeads, gv.ImageSize, gv.PatchSize, gv.LayerNormEps, gv.HiddenAct));
        // The image normalisation of preprocessor_config.json.
        using var pp = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TestData.ModelDir, "preprocessor_config.json")));
        Assert.Equal(pp.RootElement.GetProperty("image_mean").EnumerateArray().Select(e => (float)e.GetDouble()), gguf.ImageMean);
        Assert.Equal(pp.RootElement.GetProperty("image_std").EnumerateArray().Select(e => (float)e.GetDouble()), gguf.ImageStd);
        // ConfigJson is a config.json the runtime parses to the same config.
        var reparsed = LlavaConfig.Parse(gguf.ConfigJson.ToJsonString(), "derived");
        Assert.Equal(g.TextConfig.HiddenSize, reparsed.TextConfig.HiddenSize);
        Assert.Null(gguf.ChatTemplate);
    }

    [Theory]
    [InlineData("f16")]
    [InlineData("Q4_K_M")]
    public void The_vocabulary_tokenizes_the_fixture_prompts_exactly(string variant)
    {
        using var gguf = Open(variant);
        var v = gguf.Vocabulary;
        Assert.Equal(402, v.Tokens.Length);
        Assert.Equal((1, 2, 401, 0, true, false), (v.BosId, v.EosId, v.PadId, v.UnknownId, v.AddBos, v.AddEos));
        Assert.Equal([("<image>", 400, true), ("<pad>", 401, true)], v.AddedTokens);
        var sp = v.CreateTokenizer();
        int n = 0;
        foreach (var t in GgufTestData.Variant(variant).GetProperty("text").EnumerateArray())
        {
            var want = t.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(want, v.Encode(sp, t.GetProperty("text").GetString()!));
            n++;
        }
        Assert.Equal(8, n);
        // The pieces are the checkpoint's own tokenizer.model pieces.
        var pieces = SentencePieceModelReader.Read(File.ReadAllBytes(Path.Combine(TestData.ModelDir, "tokenizer.model")), "tokenizer.model");
        Assert.Equal(pieces.Select(p => p.Text), v.Tokens.Take(pieces.Count));
        Assert.Equal(pieces.Select(p => p.Score), v.Scores.Take(pieces.Count));
    }

    [Fact]
    public void A_chat_template_is_written_and_read_back()
    {
        string model = Path.Combine(_dir, "templated");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        const string template = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }} {% endfor %}ASSISTANT:";
        var tc = JsonDocument.Parse(File.ReadAllText(Path.Combine(model, "tokenizer_config.json"))).RootElement;
        var obj = System.Text.Json.Nodes.JsonNode.Parse(tc.GetRawText())!.AsObject();
        obj["chat_template"] = template;
        File.WriteAllText(Path.Combine(model, "tokenizer_config.json"), obj.ToJsonString());
        var r = LlavaGgufExporter.Export(model, Path.Combine(_dir, "out"), LlamaFileType.MostlyQ8_0);
        using var g = GgufLlavaSource.OpenFolder(Path.Combine(_dir, "out"));
        Assert.Equal(template, g.ChatTemplate);
        Assert.Equal(r.TextPath, g.Text.Path);
        using var f2 = GgufFile.Open(r.TextPath);
        Assert.Equal("tokenizer.chat_template", f2.Metadata.First(kv => kv.Key.StartsWith("tokenizer.chat", StringComparison.Ordinal)).Key);
    }

    [Fact]
    public void A_folder_must_hold_one_text_file_and_one_mmproj()
    {
        string folder = Path.Combine(_dir, "two-texts");
        Directory.CreateDirectory(folder);
        File.Copy(GgufTestData.Text("Q4_0"), Path.Combine(folder, "a.gguf"));
        File.Copy(GgufTestData.Text("Q8_0"), Path.Combine(folder, "b.gguf"));
        File.Copy(GgufTestData.Mmproj, Path.Combine(folder, "mmproj.gguf"));
        var e = Assert.Throws<ModelLoadException>(() => GgufLlavaSource.OpenFolder(folder));
        Assert.Contains("2 text file(s) [a.gguf, b.gguf] and 1 mmproj file(s) [mmproj.gguf]", e.Message);
        File.Delete(Path.Combine(folder, "b.gguf"));
        using var ok = GgufLlavaSource.OpenFolder(folder);
        Assert.Equal(GgmlType.Q4_0, ok.TypeOf("language_model.model.layers.0.mlp.up_proj.weight"));
    }

    /// <summary>Rewrites a fixture file with edited metadata (and optionally without a tensor) into the temp folder.</summary>
    private string Edited(string path, Action<GgufWriter> edit, string? dropTensor = null)
    {
        using var f = GgufFile.Open(path);
        var w = new GgufWriter();
        foreach (var (k, v) in f.Metadata) w.Add(k, v);
        edit(w);
        foreach (var t in f.Tensors.Where(t => t.Name != dropTensor)) w.AddTensor(t.Name, t.Type, t.Dimensions, f.GetMemory(t));
        string outPath = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".gguf");
        w.WriteTo(outPath);
        return outPath;
    }

    [Fact]
    public void Unsupported_models_are_refused_naming_the_key()
    {
        string text = GgufTestData.Text("Q4_0"), mm = GgufTestData.Mmproj;
        (string Text, string Mm, string Message)[] cases =
        [
            (Edited(text, w => w.Set("general.architecture", GgufValue.Of("qwen2"))), mm, "general.architecture = 'qwen2'; the LLaVA-1.5 text model must be 'llama'"),
            (text, Edited(mm, w => w.Set("clip.projector_type", GgufValue.Of("ldp"))), "clip.projector_type = 'ldp'"),
            (text, Edited(mm, w => w.Set("clip.vision.feature_layer", GgufValue.Array(new[] { 1, 3 }))), "LLaVA-1.5 takes one feature layer"),
            (text, Edited(mm, w => w.Set("clip.vision.feature_layer", GgufValue.Array(new[] { 7 }))), "clip.vision.feature_layer = 7, outside the 3 stored layers"),
            (Edited(text, w => w.Remove("llama.context_length")), mm, "has no metadata 'llama.context_length'"),
            (Edited(text, w => w.Set("llama.rope.scaling.type", GgufValue.Of("yarn"))), mm, "rope.scaling.type = 'yarn'"),
            (Edited(text, w => w.Set("tokenizer.ggml.model", GgufValue.Of("gpt2"))), mm, "tokenizer.ggml.model = 'gpt2'"),
            (Edited(text, w => w.Set("tokenizer.ggml.scores", GgufValue.Array(new float[3]))), mm, "tokenizer.ggml.scores has 3 entries but tokenizer.ggml.tokens has 402"),
            (Edited(text, w => w.Set("llama.attention.head_count", GgufValue.Of("four"))), mm, "'llama.attention.head_count' is string (\"four\"); expected an integer"),
            (Edited(text, w => w.Set("llama.block_count", GgufValue.Of(0u))), mm, "'llama.block_count' = 0 is out of range"),
            (mm, text, "general.architecture = 'clip'; the LLaVA-1.5 text model must be 'llama'"),
        ];
        foreach (var (t, m, message) in cases)
        {
            var e = Assert.Throws<ModelLoadException>(() => GgufLlavaSource.Open(t, m).Dispose());
            Assert.Contains(message, e.Message);
            Assert.NotNull(e.FilePath);
        }
    }

    [Fact]
    public void Shape_mismatches_and_missing_tensors_name_the_tensor()
    {
        using var gguf = Open("Q4_0");
        var e = Assert.Throws<ModelLoadException>(() => gguf.ReadFloat32("language_model.model.layers.0.mlp.up_proj.weight", 192, 512));
        Assert.Contains("'language_model.model.layers.0.mlp.up_proj.weight' ('blk.0.ffn_up.weight'", e.Message);
        Assert.Contains("has shape [512, 192] but [192, 512] was expected", e.Message);
        e = Assert.Throws<ModelLoadException>(() => gguf.ReadFloat32("vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.weight"));
        Assert.Contains("llama.cpp would name it 'v.blk.3.attn_q.weight'", e.Message);
        // A text GGUF without output.weight has tied embeddings.
        using var tied = GgufLlavaSource.Open(Edited(GgufTestData.Text("Q4_0"), _ => { }, dropTensor: "output.weight"), GgufTestData.Mmproj);
        Assert.True(tied.Config.TieWordEmbeddings);
        Assert.False(tied.Contains("language_model.lm_head.weight"));
    }

    [Fact]
    public void Mapped_weights_are_views_of_the_file()
    {
        using var gguf = Open("f16");
        string name = "language_model.model.layers.2.mlp.down_proj.weight";
        var w1 = gguf.ReadWeight(name);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var w2 = gguf.ReadWeight(name);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(DType.F16, w2.Type);
        Assert.True(allocated < 4096, $"a mapped fp16 weight of 196 KB allocated {allocated} bytes");
        Assert.True(w1.F16.Span.SequenceEqual(w2.F16.Span));
        // q/k come as copies in HF order, quantized weights as fp32 until the linear op takes quantized formats.
        Assert.Equal(DType.F16, gguf.ReadWeight("language_model.model.layers.2.self_attn.q_proj.weight").Type);
        using var q = Open("Q4_K_M");
        Assert.Equal(DType.F32, q.ReadWeight(name).Type);
    }
}
