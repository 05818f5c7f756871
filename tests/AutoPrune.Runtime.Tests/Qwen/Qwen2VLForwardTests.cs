using System.Text.Json.Nodes;
using AutoPrune.Compute;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Loading;
using Xunit;
using Xunit.Abstractions;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Qwen;

/// <summary>
/// The CPU forward pass against transformers' numbers on every fixture case of both checkpoints: vision-tower output,
/// last-position logits (within 1e-4) and greedy ids; and what has no stored reference (two images in one prompt, the
/// KV cache, tied embeddings) against an independent float64 implementation or an equivalent computation.
/// </summary>
public class Qwen2VLForwardTests(ITestOutputHelper output)
{
    private const float Tolerance = 1e-4f;

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void Logits_and_greedy_ids_match_the_reference(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var model = QwenFixture.LoadedModel(checkpoint);
        var images = c.Image is null ? Array.Empty<Qwen2VLImage>() : [QwenFixture.Preprocess(c.Image)];
        var (ids, prefill) = model.GenerateGreedy(c.InputIds, images, c.GreedyIds.Length);
        Assert.Equal(c.RopeDeltas, prefill.RopeDelta);
        Assert.Equal(c.LastLogits.Length, prefill.LastLogits.Length);
        float worst = MaxAbsDiff(c.LastLogits, prefill.LastLogits);
        output.WriteLine($"{c}: max |logit - reference| = {worst:E2}");
        Assert.True(worst <= Tolerance, $"last-position logits differ from the reference by up to {worst:E3}");
        if (!c.GreedyNearTie) Assert.Equal(c.GreedyIds, ids);
        else Assert.Equal(c.GreedyIds[0], ids[0]); // the tie is at a later step; the first token is clear
    }

    [Theory]
    [InlineData(QwenFixture.Current)]
    [InlineData(QwenFixture.Legacy)]
    public void Vision_output_matches_the_reference_for_every_image(string checkpoint)
    {
        var model = QwenFixture.LoadedModel(checkpoint);
        foreach (var c in QwenFixture.OnePerImage(checkpoint))
        {
            var v = model.EncodeImages([QwenFixture.Preprocess(c.Image!)]);
            Assert.Equal(c.VisionShape![0] * c.VisionShape[1], v.Length);
            double sum = v.Sum(x => (double)x);
            float first = MaxAbsDiff(c.VisionFirst8!, v[..8]);
            output.WriteLine($"{c.Image}: sum {sum:F6} (reference {c.VisionSum:F6}), first8 max diff {first:E2}");
            Assert.True(Math.Abs(sum - c.VisionSum) <= Tolerance, $"{c.Image}: vision output sum {sum} vs {c.VisionSum}");
            Assert.True(first <= Tolerance, $"{c.Image}: first 8 values differ by {first}");
        }
    }

    [Fact]
    public void Two_images_in_one_prompt_match_a_float64_computation()
    {
        var tok = QwenFixture.Tokenizer(QwenFixture.Current);
        var model = QwenFixture.LoadedModel(QwenFixture.Current);
        Qwen2VLImage a = QwenFixture.Preprocess("images/06_50x60.png"), b = QwenFixture.Preprocess("images/03_1000x300.png");
        string prompt = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.Image, Qwen2VLPart.OfText("Which has more circles,"), Qwen2VLPart.Image, Qwen2VLPart.OfText(" or this one?"))]);
        var ids = tok.EncodePrompt(prompt, [a.MergedTokens, b.MergedTokens]);

        // The tower attends within each image: both at once equal each alone.
        var both = model.EncodeImages([a, b]);
        var alone = model.EncodeImages([a]).Concat(model.EncodeImages([b])).ToArray();
        Assert.True(MaxAbsDiff(alone, both) <= 1e-6f, $"batched vision output differs from per-image by {MaxAbsDiff(alone, both)}");

        var cache = model.CreateCache(ids.Length, 0);
        var prefill = model.Prefill(ids, [a, b], cache);
        using var store = SafeTensorStore.Open(QwenFixture.Model(QwenFixture.Current), null, Qwen2VLTensorNames.ToCanonical);
        var reference = new Qwen2VLReference64(store, model.Config);
        var v64 = reference.Vision([a, b], out var received64);
        var logits64 = reference.LastLogits(ids, [a, b], prefill.Positions);
        double visionDiff = both.Select((x, i) => Math.Abs(x - v64[i])).Max();
        double logitDiff = prefill.LastLogits.Select((x, i) => Math.Abs(x - logits64[i])).Max();
        output.WriteLine($"two images, {ids.Length} tokens, rope delta {prefill.RopeDelta}: vision max diff vs fp64 {visionDiff:E2}, logits {logitDiff:E2}");
        Assert.True(visionDiff <= Tolerance, $"vision output differs from float64 by {visionDiff}");
        Assert.True(logitDiff <= Tolerance, $"logits differ from float64 by {logitDiff}");
        Assert.Equal(Array.IndexOf(logits64, logits64.Max()), System.Numerics.Tensors.TensorPrimitives.IndexOfMax(prefill.LastLogits));

        // The signal that stands in for [CLS] attention: attention received per merged token in the last full block.
        var received = model.Vision.Run([a, b], receivedAttention: true).ReceivedAttention!;
        Assert.Equal(a.MergedTokens + b.MergedTokens, received.Length);
        double receivedDiff = received.Select((x, i) => Math.Abs(x - received64[i])).Max();
        output.WriteLine($"received attention: image 1 in [{received[..4].Min():E3}, {received[..4].Max():E3}], image 2 in [{received[4..].Min():E3}, {received[4..].Max():E3}], max diff vs fp64 {receivedDiff:E2}");
        Assert.True(receivedDiff <= 1e-7, $"received attention differs from float64 by {receivedDiff}");
        Assert.Equal(1.0, received[..a.MergedTokens].Sum(x => (double)x), 5);
        Assert.Equal(1.0, received[a.MergedTokens..].Sum(x => (double)x), 5);
        Assert.Equal(model.Vision.Forward([a, b]), model.Vision.Run([a, b], receivedAttention: true).Embeddings);

        // Text after the second image continues from its largest position + 1.
        Assert.Equal(prefill.Positions.Max() + 1 - ids.Length, prefill.RopeDelta);
    }

    [Fact]
    public void The_float64_computation_agrees_with_the_reference_on_a_fixture_case()
    {
        // Validates the float64 path itself on a case with stored logits (the 1280x720 image: several windows, edge windows).
        var c = QwenFixture.ImageCases(QwenFixture.Current).First(x => x.Image == "images/07_1280x720.png");
        var model = QwenFixture.LoadedModel(QwenFixture.Current);
        using var store = SafeTensorStore.Open(QwenFixture.Model(QwenFixture.Current), null, Qwen2VLTensorNames.ToCanonical);
        var img = QwenFixture.Preprocess(c.Image!);
        var (pos, _) = Qwen2VLRopeIndex.Compute(c.InputIds, [img.Grid], Qwen2VLRopeIndex.TokenIds.Of(model.Config), 2);
        var logits64 = new Qwen2VLReference64(store, model.Config).LastLogits(c.InputIds, [img], pos);
        double diff = c.LastLogits.Select((x, i) => Math.Abs(x - logits64[i])).Max();
        output.WriteLine($"float64 vs reference: {diff:E2}");
        Assert.True(diff <= Tolerance, $"the float64 computation differs from the reference by {diff}");
    }

    [Fact]
    public void Decoding_with_the_cache_equals_recomputing_the_sequence()
    {
        var c = QwenFixture.ImageCases(QwenFixture.Legacy).First(x => x.Image == "images/02_480x640.png");
        var model = QwenFixture.LoadedModel(QwenFixture.Legacy);
        var img = QwenFixture.Preprocess(c.Image!);
        var cache = model.CreateCache(c.InputIds.Length, 3);
        var prefill = model.Prefill(c.InputIds, [img], cache);
        int t1 = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(prefill.LastLogits);
        var l2 = model.DecodeStep(t1, prefill.RopeDelta, cache);
        int t2 = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(l2);
        var l3 = model.DecodeStep(t2, prefill.RopeDelta, cache);

        // The same three positions computed in one pass over prompt + t1 + t2 with explicit positions.
        int[] seq = [.. c.InputIds, t1, t2];
        var x = model.Decoder.Embed(seq);
        var visual = model.EncodeImages([img]);
        for (int i = 0, r = 0; i < c.InputIds.Length; i++)
            if (seq[i] == model.Config.ImageTokenId) visual.AsSpan(r++ * 96, 96).CopyTo(x.AsSpan(i * 96, 96));
        int L = c.InputIds.Length;
        var positions = prefill.Positions.Append(PositionIds.Sequential(2, 3, L + prefill.RopeDelta));
        var full = model.CreateCache(seq.Length, 0);
        model.Decoder.Forward(x, seq.Length, positions, full);
        Assert.True(MaxAbsDiff(model.Decoder.Logits(x, L), l2) <= 1e-5f, $"step 1 differs by {MaxAbsDiff(model.Decoder.Logits(x, L), l2)}");
        Assert.True(MaxAbsDiff(model.Decoder.Logits(x, L + 1), l3) <= 1e-5f, $"step 2 differs by {MaxAbsDiff(model.Decoder.Logits(x, L + 1), l3)}");
        Assert.Equal(c.GreedyIds[..2], new[] { t1, t2 });
    }

    [Fact]
    public void Both_key_layouts_hold_the_same_tensors()
    {
        using var a = SafeTensorStore.Open(QwenFixture.Model(QwenFixture.Current), null, Qwen2VLTensorNames.ToCanonical);
        using var b = SafeTensorStore.Open(QwenFixture.Model(QwenFixture.Legacy), null, Qwen2VLTensorNames.ToCanonical);
        Assert.Equal(a.Names, b.Names);
        Assert.Equal(2, b.Files.Count);
        Assert.Equal("model.visual.blocks.0.attn.qkv.weight", Qwen2VLTensorNames.ToCanonical("visual.blocks.0.attn.qkv.weight"));
        Assert.Equal("model.language_model.layers.3.mlp.up_proj.weight", Qwen2VLTensorNames.ToCanonical("model.layers.3.mlp.up_proj.weight"));
        Assert.Equal("model.language_model.norm.weight", Qwen2VLTensorNames.ToCanonical("model.language_model.norm.weight"));
        Assert.Equal("model.visual.merger.ln_q.weight", Qwen2VLTensorNames.ToCanonical("model.visual.merger.ln_q.weight"));
        Assert.Equal("lm_head.weight", Qwen2VLTensorNames.ToCanonical("lm_head.weight"));
        // The two checkpoints have different seeds.
        Assert.NotEqual(a.ReadFloat32("model.language_model.norm.weight"), b.ReadFloat32("model.language_model.norm.weight"));
    }

    /// <summary>Writes a copy of the current-layout checkpoint with <paramref name="edit"/> applied to its tensors and config.</summary>
    internal static void WriteVariant(string dir, Func<List<(string Name, DType Type, long[] Shape, float[] Data)>, List<(string, DType, long[], float[])>> edit, Action<JsonObject>? config = null)
    {
        string src = QwenFixture.Model(QwenFixture.Current);
        foreach (var f in Directory.GetFiles(src).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal)))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        using (var store = SafeTensorStore.Open(src, null, Qwen2VLTensorNames.ToCanonical))
        {
            var tensors = store.Names.Select(n => (n, DType.F16, store.GetInfo(n).Shape, store.ReadFloat32(n))).ToList();
            SafeTensorWriter.Write(Path.Combine(dir, "model.safetensors"), edit(tensors));
        }
        if (config is not null)
        {
            var j = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config(j);
            File.WriteAllText(Path.Combine(dir, "config.json"), j.ToJsonString());
        }
    }

    [Fact]
    public void Tied_embeddings_use_the_embedding_matrix_as_the_LM_head()
    {
        // Tied, without lm_head.weight (as Qwen2.5-VL-3B) vs untied with lm_head.weight := embed_tokens: same logits.
        using var tied = new TempDir();
        using var copied = new TempDir();
        WriteVariant(tied.Path, t => t.Where(x => x.Name != "lm_head.weight").ToList(),
            j => { j["tie_word_embeddings"] = true; j["text_config"]!["tie_word_embeddings"] = true; });
        WriteVariant(copied.Path, t => t.Select(x => x.Name == "lm_head.weight" ? (x.Name, x.Type, x.Shape, t.Single(e => e.Name == "model.language_model.embed_tokens.weight").Data) : x).ToList());
        var c = QwenFixture.TextOnly(QwenFixture.Current);
        using var a = Qwen2VLCpuModel.Load(tied.Path);
        using var b = Qwen2VLCpuModel.Load(copied.Path);
        var la = a.Prefill(c.InputIds, [], a.CreateCache(c.InputIds.Length, 0)).LastLogits;
        var lb = b.Prefill(c.InputIds, [], b.CreateCache(c.InputIds.Length, 0)).LastLogits;
        Assert.Equal(lb, la);
        Assert.True(MaxAbsDiff(c.LastLogits, la) > 1e-3f, "tying changed nothing: the test would not see a wrong head");
    }

    [Theory]
    [InlineData("BF16")]
    [InlineData("F32")]
    public void Bf16_and_fp32_checkpoints_match_the_float64_computation(string dtype)
    {
        var type = Enum.Parse<DType>(dtype);
        // Released Qwen2.5-VL checkpoints are bf16: the same weights rounded to bf16 (or kept in fp32) must give what the
        // float64 computation gives on those very values.
        using var dir = new TempDir();
        WriteVariant(dir.Path, t => t.Select(x => (x.Name, type, x.Shape, x.Data)).ToList());
        var c = QwenFixture.ImageCases(QwenFixture.Current).First(x => x.Image == "images/06_50x60.png");
        var img = QwenFixture.Preprocess(c.Image!);
        using var model = Qwen2VLCpuModel.Load(dir.Path);
        using var store = SafeTensorStore.Open(dir.Path, null, Qwen2VLTensorNames.ToCanonical);
        Assert.Equal(type, store.GetInfo("model.visual.blocks.0.attn.qkv.weight").DType);
        var prefill = model.Prefill(c.InputIds, [img], model.CreateCache(c.InputIds.Length, 0));
        var logits64 = new Qwen2VLReference64(store, model.Config).LastLogits(c.InputIds, [img], prefill.Positions);
        double diff = prefill.LastLogits.Select((x, i) => Math.Abs(x - logits64[i])).Max();
        float fromFp16 = MaxAbsDiff(c.LastLogits, prefill.LastLogits);
        output.WriteLine($"{type}: logits vs float64 on the same weights {diff:E2}; vs the fp16 reference {fromFp16:E2}");
        Assert.True(diff <= Tolerance, $"{type} logits differ from float64 by {diff}");
        if (type == DType.BF16) Assert.True(fromFp16 > Tolerance, "rounding to bf16 changed nothing: the weights were not bf16");
        else Assert.True(fromFp16 <= Tolerance, "fp32 copies of the fp16 weights must give the reference's logits");
    }

    [Fact]
    public void Missing_and_unexpected_tensors_are_named()
    {
        using var missing = new TempDir();
        WriteVariant(missing.Path, t => t.Where(x => x.Name != "model.visual.blocks.2.mlp.up_proj.bias").ToList());
        var e = Assert.Throws<ModelLoadException>(() => Qwen2VLCpuModel.Load(missing.Path));
        Assert.Contains("model.visual.blocks.2.mlp.up_proj.bias", e.Message);

        using var extra = new TempDir();
        WriteVariant(extra.Path, t => [.. t, ("model.visual.blocks.4.norm1.weight", DType.F16, [64], new float[64])]);
        e = Assert.Throws<ModelLoadException>(() => Qwen2VLCpuModel.Load(extra.Path));
        Assert.Contains("model.visual.blocks.4.norm1.weight", e.Message);
        Assert.Contains("does not have", e.Message);

        using var shape = new TempDir();
        WriteVariant(shape.Path, t => t.Select(x => x.Name == "model.visual.merger.mlp.2.weight" ? (x.Name, x.Type, new long[] { 96, 128 }, x.Data[..(96 * 128)]) : x).ToList());
        e = Assert.Throws<ModelLoadException>(() => Qwen2VLCpuModel.Load(shape.Path));
        Assert.Contains("model.visual.merger.mlp.2.weight", e.Message);
        Assert.Contains("[96, 256] was expected", e.Message);
    }

    [Fact]
    public void Prefill_refuses_images_that_do_not_fit_the_prompt()
    {
        var model = QwenFixture.LoadedModel(QwenFixture.Current);
        var c = QwenFixture.ImageCases(QwenFixture.Current).First(x => x.Image == "images/06_50x60.png");
        var other = QwenFixture.Preprocess("images/00_336x336.png");
        Assert.Throws<ArgumentException>(() => model.Prefill(c.InputIds, [other], model.CreateCache(c.InputIds.Length, 0)));
        Assert.Throws<ArgumentException>(() => model.Prefill(c.InputIds, [], model.CreateCache(c.InputIds.Length, 0)));
    }

    private static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }
}

internal static partial class QwenFixture
{
    private static readonly Dictionary<string, Qwen2VLCpuModel> Models = new();

    /// <summary>A loaded model, shared by the tests of one run (the weights are read-only).</summary>
    public static Qwen2VLCpuModel LoadedModel(string checkpoint)
    {
        lock (Models)
        {
            if (!Models.TryGetValue(checkpoint, out var m)) Models[checkpoint] = m = Qwen2VLCpuModel.Load(Model(checkpoint));
            return m;
        }
    }
}
