using AutoPrune.Loading;
using AutoPrune.Tests.TokenizerAndImages;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>
/// A differently shaped LLaVA written to disk and loaded through the public API: GQA (4 query heads,
/// 2 KV heads), rope_theta at top level, newer key names, one unsharded bf16 file, tokenizer.json only,
/// a smaller image and a positive feature layer with the "full" strategy. Its answers are checked
/// against the same weights written as an equivalent multi-head model (each KV head repeated for its
/// query group) in fp32 with legacy names, sharded, rope_parameters and tokenizer.model: GQA, the key
/// mapping, bf16 and tokenizer.json must all be right for the two to agree.
/// </summary>
public sealed class SecondCheckpointTests : IDisposable
{
    private const int VisHidden = 64, VisLayers = 3, VisHeads = 4, VisInter = 128, ImageSize = 112, Patch = 14;
    private const int Hidden = 96, Heads = 4, KvHeads = 2, HeadDim = 24, Layers = 3, Inter = 160, Vocab = 402;
    private readonly string _root = Path.Combine(Path.GetTempPath(), "autoprune-second-" + Guid.NewGuid().ToString("N"));

    public void Dispose() { try { Directory.Delete(_root, true); } catch (IOException) { } }

    private static float Bf16(float x) => BitConverter.Int32BitsToSingle(SafeTensorWriter.ToBFloat16Bits(x) << 16);

    /// <summary>Random weights, rounded to bf16 so both files hold identical values.</summary>
    private static Dictionary<string, (long[] Shape, float[] Data)> RandomWeights(int seed)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (long[], float[])>();
        void Add(string name, float scale, params long[] shape)
        {
            var data = new float[shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < data.Length; i++) data[i] = Bf16((float)(rng.NextDouble() * 2 - 1) * scale);
            w[name] = (shape, data);
        }
        void Ones(string name, long n) { w[name] = ([n], Enumerable.Repeat(1f, (int)n).ToArray()); }
        const string v = "vision_tower.vision_model";
        Add($"{v}.embeddings.patch_embedding.weight", 0.05f, VisHidden, 3, Patch, Patch);
        Add($"{v}.embeddings.class_embedding", 0.5f, VisHidden);
        Add($"{v}.embeddings.position_embedding.weight", 0.5f, (ImageSize / Patch) * (ImageSize / Patch) + 1, VisHidden);
        Ones($"{v}.pre_layrnorm.weight", VisHidden); Add($"{v}.pre_layrnorm.bias", 0.1f, VisHidden);
        for (int l = 0; l < VisLayers; l++)
        {
            string p = $"{v}.encoder.layers.{l}";
            foreach (var n in new[] { "layer_norm1", "layer_norm2" }) { Ones($"{p}.{n}.weight", VisHidden); Add($"{p}.{n}.bias", 0.1f, VisHidden); }
            foreach (var n in new[] { "q_proj", "k_proj", "v_proj", "out_proj" }) { Add($"{p}.self_attn.{n}.weight", 0.15f, VisHidden, VisHidden); Add($"{p}.self_attn.{n}.bias", 0.05f, VisHidden); }
            Add($"{p}.mlp.fc1.weight", 0.15f, VisInter, VisHidden); Add($"{p}.mlp.fc1.bias", 0.05f, VisInter);
            Add($"{p}.mlp.fc2.weight", 0.1f, VisHidden, VisInter); Add($"{p}.mlp.fc2.bias", 0.05f, VisHidden);
        }
        Ones($"{v}.post_layernorm.weight", VisHidden); Add($"{v}.post_layernorm.bias", 0.1f, VisHidden);
        Add("multi_modal_projector.linear_1.weight", 0.15f, Hidden, VisHidden); Add("multi_modal_projector.linear_1.bias", 0.05f, Hidden);
        Add("multi_modal_projector.linear_2.weight", 0.1f, Hidden, Hidden); Add("multi_modal_projector.linear_2.bias", 0.05f, Hidden);
        const string t = "language_model.model";
        Add($"{t}.embed_tokens.weight", 0.5f, Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"{t}.layers.{l}";
            Ones($"{p}.input_layernorm.weight", Hidden); Ones($"{p}.post_attention_layernorm.weight", Hidden);
            Add($"{p}.self_attn.q_proj.weight", 0.15f, Heads * HeadDim, Hidden);
            Add($"{p}.self_attn.k_proj.weight", 0.15f, KvHeads * HeadDim, Hidden);
            Add($"{p}.self_attn.v_proj.weight", 0.15f, KvHeads * HeadDim, Hidden);
            Add($"{p}.self_attn.o_proj.weight", 0.1f, Hidden, Heads * HeadDim);
            Add($"{p}.mlp.gate_proj.weight", 0.15f, Inter, Hidden); Add($"{p}.mlp.up_proj.weight", 0.15f, Inter, Hidden);
            Add($"{p}.mlp.down_proj.weight", 0.1f, Hidden, Inter);
        }
        Ones($"{t}.norm.weight", Hidden);
        Add("language_model.lm_head.weight", 0.3f, Vocab, Hidden);
        return w;
    }

    /// <summary>The multi-head equivalent of a GQA layer: each KV head's rows repeated for its query group.</summary>
    private static (long[], float[]) RepeatKvHeads((long[] Shape, float[] Data) t)
    {
        int group = Heads / KvHeads, cols = (int)t.Shape[1];
        var data = new float[Heads * HeadDim * cols];
        for (int h = 0; h < Heads; h++)
            Array.Copy(t.Data, (h / group) * HeadDim * cols, data, h * HeadDim * cols, HeadDim * cols);
        return ([Heads * HeadDim, cols], data);
    }

    private static string NewerName(string legacy) => legacy switch
    {
        _ when legacy.StartsWith("vision_tower.", StringComparison.Ordinal) => "model." + legacy,
        _ when legacy.StartsWith("multi_modal_projector.", StringComparison.Ordinal) => "model." + legacy,
        _ when legacy.StartsWith("language_model.model.", StringComparison.Ordinal) => "model.language_model." + legacy["language_model.model.".Length..],
        "language_model.lm_head.weight" => "lm_head.weight",
        _ => throw new ArgumentException(legacy),
    };

    private static string Config(bool gqa) => $$"""
    {
      "model_type": "llava", "image_token_index": 400, "vision_feature_layer": 2, "vision_feature_select_strategy": "full",
      "projector_hidden_act": "gelu", "tie_word_embeddings": false,
      {{(gqa ? "\"rope_theta\": 500000.0," : "")}}
      "text_config": { "model_type": "llama", "hidden_size": {{Hidden}}, "intermediate_size": {{Inter}}, "num_hidden_layers": {{Layers}},
        "num_attention_heads": {{Heads}}, "num_key_value_heads": {{(gqa ? KvHeads : Heads)}}, "head_dim": {{HeadDim}}, "rms_norm_eps": 1e-6,
        {{(gqa ? "" : "\"rope_parameters\": { \"rope_type\": \"default\", \"rope_theta\": 500000.0 },")}}
        "max_position_embeddings": 512, "vocab_size": {{Vocab}}, "bos_token_id": 1, "eos_token_id": 2 },
      "vision_config": { "hidden_size": {{VisHidden}}, "intermediate_size": {{VisInter}}, "num_hidden_layers": {{VisLayers}},
        "num_attention_heads": {{VisHeads}}, "image_size": {{ImageSize}}, "patch_size": {{Patch}}, "hidden_act": "quick_gelu" }
    }
    """;

    private string WriteCheckpoint(string name, bool gqa)
    {
        var dir = Path.Combine(_root, name);
        Directory.CreateDirectory(dir);
        var weights = RandomWeights(1234);
        File.WriteAllText(Path.Combine(dir, "config.json"), Config(gqa));
        var pre = File.ReadAllText(Path.Combine(TestData.ModelDir, "preprocessor_config.json"))
            .Replace("\"shortest_edge\": 336", $"\"shortest_edge\": {ImageSize}").Replace("\"height\": 336", $"\"height\": {ImageSize}").Replace("\"width\": 336", $"\"width\": {ImageSize}");
        File.WriteAllText(Path.Combine(dir, "preprocessor_config.json"), pre);
        File.Copy(Path.Combine(TestData.ModelDir, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
        if (gqa)
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"),
                HfTokenizerJson.FromSentencePieceModel(Path.Combine(TestData.ModelDir, "tokenizer.model"), new() { ["<image>"] = 400, ["<pad>"] = 401 }));
            SafeTensorWriter.Write(Path.Combine(dir, "model.safetensors"),
                weights.Select(kv => (NewerName(kv.Key), DType.BF16, kv.Value.Shape, kv.Value.Data)));
        }
        else
        {
            File.Copy(Path.Combine(TestData.ModelDir, "tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
            File.Copy(Path.Combine(TestData.ModelDir, "added_tokens.json"), Path.Combine(dir, "added_tokens.json"));
            var all = weights.Select(kv => (Name: kv.Key, T: kv.Key.EndsWith("k_proj.weight") || kv.Key.EndsWith("v_proj.weight")
                ? (kv.Key.StartsWith("language_model") ? RepeatKvHeads(kv.Value) : kv.Value) : kv.Value)).ToList();
            var shards = new[] { all.Where(x => !x.Name.StartsWith("language_model")).ToList(), all.Where(x => x.Name.StartsWith("language_model")).ToList() };
            var map = new Dictionary<string, string>();
            for (int s = 0; s < 2; s++)
            {
                string file = $"model-0000{s + 1}-of-00002.safetensors";
                SafeTensorWriter.Write(Path.Combine(dir, file), shards[s].Select(x => (x.Name, DType.F32, x.T.Item1, x.T.Item2)));
                foreach (var x in shards[s]) map[x.Name] = file;
            }
            File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"),
                System.Text.Json.JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = map }));
        }
        return dir;
    }

    [Fact]
    public async Task GqaBf16NewerNamesTokenizerJsonAgreesWithItsMultiHeadFp32Twin()
    {
        var gqaDir = WriteCheckpoint("gqa-bf16", gqa: true);
        var mhaDir = WriteCheckpoint("mha-fp32", gqa: false);
        Assert.False(File.Exists(Path.Combine(gqaDir, "tokenizer.model")));
        using var gqa = VisionLanguageModel.Load(gqaDir);
        using var mha = VisionLanguageModel.Load(mhaDir);
        Assert.Equal(KvHeads, gqa.Info.KvHeads);
        Assert.Equal(Heads, mha.Info.KvHeads);
        Assert.Equal(65, gqa.Info.VisualTokensPerImage); // 8x8 patches + [CLS] with the "full" strategy

        foreach (var row in TestData.Dev.Take(3))
        {
            var request = VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
            { Generation = new GenerationOptions { MaxNewTokens = 6 } };
            var a = await gqa.AskAsync(request);
            var b = await mha.AskAsync(request);
            Assert.Equal(row.PromptLen - 576 + 65, a.PromptTokens);
            Assert.Equal(b.TokenIds, a.TokenIds);
            Assert.Equal(b.TopLogits.Select(t => t.Id), a.TopLogits.Select(t => t.Id));
            for (int i = 0; i < 5; i++) Assert.Equal(b.TopLogits[i].Logit, a.TopLogits[i].Logit, 1e-4);
            Assert.True(a.TokenIds.Count > 0);
        }
    }

    /// <summary>
    /// The built-in default pruning (AutoPrune at 128) on a model with only 65 visual tokens: the load does not fail and a
    /// request runs unpruned with a note saying why, while the same pruning configured explicitly is refused at load.
    /// </summary>
    [Fact]
    public async Task The_built_in_default_runs_unpruned_with_a_note_on_a_model_too_small_for_its_budget()
    {
        var dir = WriteCheckpoint("gqa-bf16-default", gqa: true);
        using var model = VisionLanguageModel.Load(dir, new ModelOptions { Device = "cpu" });
        Assert.Empty(VisionLanguageModel.Validate(dir, new ModelOptions { Device = "cpu" }));
        var row = TestData.Dev[0];
        var a = await model.AskAsync(VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        { Generation = new GenerationOptions { MaxNewTokens = 3 } });
        Assert.Equal(AutoPrune.Pruning.PruningMethod.None, a.Report.Method);
        Assert.Contains(a.Report.Notes, n => n.Contains("default pruning ('autoprune', budget 128)", StringComparison.Ordinal) && n.Contains("65", StringComparison.Ordinal));

        var configured = new ModelOptions { Device = "cpu", DefaultPruning = new AutoPrune.Pruning.PruningOptions { Method = AutoPrune.Pruning.PruningMethod.AutoPrune, Budget = 128 } };
        Assert.Contains("ModelOptions.DefaultPruning", Assert.Single(VisionLanguageModel.Validate(dir, configured)));
        Assert.Throws<ArgumentException>(() => VisionLanguageModel.Load(dir, configured));
    }

    /// <summary>
    /// The GPU code path (Device = "ilgpu-cpu") on the grouped-query bf16 checkpoint: bf16 rounded to fp16 on upload,
    /// batched attention with 2 query heads per KV head, the "full" strategy and a positive feature layer. Its greedy
    /// tokens equal the CPU backend's and its top logits are within fp16 tolerance.
    /// </summary>
    [Fact]
    public async Task GqaCheckpointOnTheGpuCodePathAgreesWithTheCpu()
    {
        var dir = WriteCheckpoint("gqa-bf16-gpu", gqa: true);
        using var cpu = VisionLanguageModel.Load(dir, new ModelOptions { Device = "cpu" });
        using var gpu = VisionLanguageModel.Load(dir, new ModelOptions { Device = "ilgpu-cpu" });
        foreach (var row in TestData.Dev.Take(2))
        {
            var request = VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
            { Generation = new GenerationOptions { MaxNewTokens = 6 } };
            var a = await gpu.AskAsync(request);
            var b = await cpu.AskAsync(request);
            Assert.Equal(b.TokenIds, a.TokenIds);
            Assert.Equal(b.TopLogits[0].Id, a.TopLogits[0].Id);
            for (int i = 0; i < 5; i++)
            {
                var match = a.TopLogits.Where(t => t.Id == b.TopLogits[i].Id).ToList();
                if (match.Count == 1) Assert.Equal(b.TopLogits[i].Logit, match[0].Logit, 2e-2);
            }
        }
    }
}
