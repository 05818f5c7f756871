using System.Buffers.Binary;
using System.Text.Json;
using AutoPrune.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

public class SafeTensorFixtureTests
{
    private static readonly string Model = LoadingPaths.FixtureModel;

    [Fact]
    public void Opens_sharded_fp16_fixture_with_all_index_entries()
    {
        using var store = TensorNames.Open(Model);
        using var index = JsonDocument.Parse(File.ReadAllText(Path.Combine(Model, "model.safetensors.index.json")));
        int entries = index.RootElement.GetProperty("weight_map").EnumerateObject().Count();

        Assert.Equal(entries, store.Names.Count);
        Assert.Equal(2, store.Files.Count);
        Assert.All(store.Names, n => Assert.Equal(n, TensorNames.ToCanonical(n)));
    }

    [Theory]
    [InlineData("language_model.model.embed_tokens.weight", new long[] { 402, 192 })]
    [InlineData("language_model.lm_head.weight", new long[] { 402, 192 })]
    [InlineData("language_model.model.norm.weight", new long[] { 192 })]
    [InlineData("language_model.model.layers.7.self_attn.q_proj.weight", new long[] { 192, 192 })]
    [InlineData("language_model.model.layers.0.mlp.gate_proj.weight", new long[] { 512, 192 })]
    [InlineData("language_model.model.layers.0.mlp.down_proj.weight", new long[] { 192, 512 })]
    [InlineData("multi_modal_projector.linear_1.weight", new long[] { 192, 128 })]
    [InlineData("multi_modal_projector.linear_2.weight", new long[] { 192, 192 })]
    [InlineData("vision_tower.vision_model.embeddings.patch_embedding.weight", new long[] { 128, 3, 14, 14 })]
    [InlineData("vision_tower.vision_model.embeddings.position_embedding.weight", new long[] { 577, 128 })]
    [InlineData("vision_tower.vision_model.embeddings.class_embedding", new long[] { 128 })]
    [InlineData("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", new long[] { 512, 128 })]
    [InlineData("vision_tower.vision_model.pre_layrnorm.weight", new long[] { 128 })]
    public void Fixture_tensors_have_expected_shapes_and_dtype(string name, long[] shape)
    {
        using var store = TensorNames.Open(Model);
        Assert.True(store.Contains(name));
        var info = store.GetInfo(name);
        Assert.Equal(name, info.Name);
        Assert.Equal(DType.F16, info.DType);
        Assert.Equal(shape, info.Shape);
        Assert.StartsWith(Path.GetFullPath(Model), info.FilePath);
        var data = store.ReadFloat32(name, shape);
        Assert.Equal(info.ElementCount, data.Length);
        Assert.All(data, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void Fixture_values_match_an_independent_decode_of_the_file()
    {
        const string name = "language_model.model.embed_tokens.weight";
        using var store = TensorNames.Open(Model);
        var info = store.GetInfo(name);
        var values = store.ReadFloat32(name, 402, 192);

        // Decode the same tensor by hand: header JSON, then little-endian halves.
        var bytes = File.ReadAllBytes(info.FilePath);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)n));
        var offs = header.RootElement.GetProperty(name).GetProperty("data_offsets");
        int begin = 8 + (int)n + offs[0].GetInt32();
        for (int i = 0; i < values.Length; i++)
        {
            float expected = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes.AsSpan(begin + 2 * i, 2));
            Assert.Equal(expected, values[i]);
        }
        Assert.Contains(values, v => v != 0);
    }

    [Fact]
    public void Tracks_unused_tensors()
    {
        using var store = TensorNames.Open(Model);
        Assert.Equal(store.Names.Count, store.UnusedTensors().Count);
        store.ReadFloat32("language_model.model.norm.weight");
        var buf = new float[402 * 192];
        store.ReadFloat32Into("language_model.lm_head.weight", buf, 402, 192);
        var unused = store.UnusedTensors();
        Assert.Equal(store.Names.Count - 2, unused.Count);
        Assert.DoesNotContain("language_model.model.norm.weight", unused);
        Assert.DoesNotContain("language_model.lm_head.weight", unused);

        foreach (var name in store.Names) store.ReadFloat32(name);
        Assert.Empty(store.UnusedTensors());
    }

    [Fact]
    public void Fixture_config_matches_fixture_tensors()
    {
        var cfg = LlavaConfig.Load(Model);
        using var store = TensorNames.Open(Model);
        var t = cfg.TextConfig;
        var v = cfg.VisionConfig;
        Assert.Equal("llava", cfg.ModelType);
        Assert.Equal(400, cfg.ImageTokenIndex);
        Assert.Equal((192, 512, 8, 4, 4, 48, 402), (t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.HeadDim, t.VocabSize));
        Assert.Equal(1e-5, t.RmsNormEps);
        Assert.Equal(10000.0, t.RopeTheta);
        Assert.Equal(1024, t.MaxPositionEmbeddings);
        Assert.Equal(new[] { 2 }, t.EosTokenIds);
        Assert.Equal(401, t.PadTokenId);
        Assert.Equal((128, 512, 4, 4, 336, 14, "quick_gelu"), (v.HiddenSize, v.IntermediateSize, v.NumHiddenLayers, v.NumAttentionHeads, v.ImageSize, v.PatchSize, v.HiddenAct));
        Assert.Equal(24, cfg.GridSize);
        Assert.Equal(576, cfg.NumPatches);
        Assert.Equal(576, cfg.NumImageTokens);
        Assert.Equal(576, cfg.ImageSeqLength);
        Assert.Equal(3, cfg.ResolvedFeatureLayerIndex); // hidden_states has 5 entries; [-2] is index 3
        Assert.True(cfg.DropClsToken);
        Assert.Equal("gelu", cfg.ProjectorHiddenAct);
        Assert.True(cfg.MultimodalProjectorBias);

        for (int i = 0; i < t.NumHiddenLayers; i++)
            Assert.True(store.Contains($"language_model.model.layers.{i}.self_attn.k_proj.weight"));
        Assert.False(store.Contains($"language_model.model.layers.{t.NumHiddenLayers}.self_attn.k_proj.weight"));
        Assert.Equal(new long[] { cfg.NumPatches + 1, v.HiddenSize },
            store.GetInfo("vision_tower.vision_model.embeddings.position_embedding.weight").Shape);
    }
}
