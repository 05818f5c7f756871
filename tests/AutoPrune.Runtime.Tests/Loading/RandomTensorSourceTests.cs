using System.Diagnostics;
using AutoPrune.Loading;
using Xunit;
using Xunit.Abstractions;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Loading;

public class RandomTensorSourceTests(ITestOutputHelper output)
{
    private const string UpProj = "language_model.model.layers.0.mlp.up_proj.weight";

    private static double Mean(ReadOnlySpan<float> x)
    {
        double s = 0;
        foreach (var v in x) s += v;
        return s / x.Length;
    }

    private static double Std(ReadOnlySpan<float> x)
    {
        double m = Mean(x), s = 0;
        foreach (var v in x) s += (v - m) * (v - m);
        return Math.Sqrt(s / x.Length);
    }

    [Fact]
    public void Same_seed_and_name_give_identical_values_across_instances_and_read_order()
    {
        var a = new RandomTensorSource(7);
        var b = new RandomTensorSource(7);
        var a1 = a.ReadFloat32(UpProj, 64, 192);
        _ = b.ReadFloat32("language_model.model.layers.1.mlp.up_proj.weight", 64, 192); // another tensor first
        var b1 = b.ReadFloat32(UpProj, 64, 192);
        Assert.Equal(a1, b1);
        Assert.Equal(a1, a.ReadFloat32(UpProj, 64, 192)); // reading again gives the same values
    }

    [Fact]
    public void Different_seed_or_name_give_different_values()
    {
        var x = new RandomTensorSource(1).ReadFloat32(UpProj, 64, 192);
        var otherSeed = new RandomTensorSource(2).ReadFloat32(UpProj, 64, 192);
        var otherName = new RandomTensorSource(1).ReadFloat32("language_model.model.layers.0.mlp.gate_proj.weight", 64, 192);
        // Independent draws: essentially no element coincides.
        Assert.True(x.Zip(otherSeed).Count(p => p.First == p.Second) < 10);
        Assert.True(x.Zip(otherName).Count(p => p.First == p.Second) < 10);
    }

    [Fact]
    public void Newer_checkpoint_names_give_the_canonical_tensor()
    {
        var s = new RandomTensorSource(3);
        Assert.Equal(s.ReadFloat32(UpProj, 32, 48), s.ReadFloat32("model.language_model.layers.0.mlp.up_proj.weight", 32, 48));
        Assert.Equal(s.ReadFloat32("language_model.lm_head.weight", 10, 8), s.ReadFloat32("lm_head.weight", 10, 8));
    }

    [Fact]
    public void Values_depend_only_on_the_element_index_not_on_the_parallel_split()
    {
        // 300k elements are generated in parallel chunks; 1001 (odd) on the calling thread.
        var s = new RandomTensorSource(11);
        var big = s.ReadFloat32(UpProj, 300_001);
        var small = s.ReadFloat32(UpProj, 1001);
        Assert.Equal(small, big.AsSpan(0, 1001).ToArray());
        var big16 = s.ReadFloat16(UpProj, 300_001);
        for (int i = 0; i < big.Length; i += 997) Assert.Equal((Half)big[i], big16[i]);
    }

    [Theory]
    [InlineData(0L, 1)]
    [InlineData(0L, 7)]
    [InlineData(0L, 8)]
    [InlineData(0L, 1001)]
    [InlineData(65536L, 4099)]
    [InlineData(3L, 50)] // odd start (the scalar path)
    public void Vectorized_generation_matches_the_scalar_reference(long first, int count)
    {
        ulong key = RandomTensorSource.KeyFor(99, UpProj);
        var fast = new float[count];
        var reference = new float[count];
        RandomTensorSource.FillUniform(key, first, fast);
        RandomTensorSource.FillUniformScalar(key, first, reference);
        Assert.Equal(reference, fast);
        // And a range starting at an odd element continues the same sequence.
        var whole = new float[count + 1];
        RandomTensorSource.FillUniform(key, first, whole);
        var tail = new float[count];
        RandomTensorSource.FillUniform(key, first + 1, tail);
        Assert.Equal(whole.AsSpan(1).ToArray(), tail);
    }

    [Fact]
    public void Weights_are_uniform_with_mean_zero_and_std_0_02()
    {
        var w = new RandomTensorSource(5).ReadFloat32(UpProj, 4096, 1024); // 4M values: standard error of the mean 1e-5
        double mean = Mean(w), std = Std(w);
        output.WriteLine($"mean {mean:E3}, std {std:F6}, min {w.Min():F6}, max {w.Max():F6}");
        Assert.True(Math.Abs(mean) < 1e-4, $"mean {mean}");
        Assert.True(Math.Abs(std - 0.02) < 0.02 * 0.005, $"std {std}");
        float a = RandomTensorSource.Amplitude;
        Assert.Equal(MathF.Sqrt(3) * 0.02f, a, 6);
        Assert.All(w, v => Assert.True(v > -a && v < a));
        Assert.True(w.Max() > a * 0.999f && w.Min() < -a * 0.999f); // the whole range is used
        // Uniform: a quarter of the values in each quarter of the range.
        int q = w.Count(v => v > a / 2);
        Assert.InRange(q / (double)w.Length, 0.245, 0.255);
    }

    [Theory]
    [InlineData("language_model.model.embed_tokens.weight", 402L, 192L)]
    [InlineData("vision_tower.vision_model.embeddings.position_embedding.weight", 577L, 128L)]
    [InlineData("vision_tower.vision_model.embeddings.class_embedding", 1024L)]
    [InlineData("vision_tower.vision_model.embeddings.patch_embedding.weight", 128L, 3L, 14L, 14L)]
    public void Embeddings_are_random_with_std_0_02(string name, params long[] shape)
    {
        var w = new RandomTensorSource(9).ReadFloat32(name, shape);
        Assert.Equal(shape.Aggregate(1L, (x, d) => x * d), w.Length);
        Assert.True(Math.Abs(Mean(w)) < 0.002, $"mean {Mean(w)}");
        Assert.True(Math.Abs(Std(w) - 0.02) < 0.002, $"std {Std(w)}");
    }

    [Theory]
    [InlineData("vision_tower.vision_model.pre_layrnorm.weight")]
    [InlineData("vision_tower.vision_model.encoder.layers.3.layer_norm1.weight")]
    [InlineData("vision_tower.vision_model.encoder.layers.3.layer_norm2.weight")]
    [InlineData("vision_tower.vision_model.post_layernorm.weight")]
    [InlineData("language_model.model.layers.5.input_layernorm.weight")]
    [InlineData("language_model.model.layers.5.post_attention_layernorm.weight")]
    [InlineData("language_model.model.norm.weight")]
    public void Norm_weights_are_ones(string name)
    {
        var s = new RandomTensorSource(4);
        Assert.All(s.ReadFloat32(name, 300), v => Assert.Equal(1f, v));
        Assert.All(s.ReadFloat16(name, 300), v => Assert.Equal(Half.One, v));
    }

    [Theory]
    [InlineData("vision_tower.vision_model.pre_layrnorm.bias")]
    [InlineData("vision_tower.vision_model.encoder.layers.3.layer_norm1.bias")]
    [InlineData("vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.bias")]
    [InlineData("vision_tower.vision_model.encoder.layers.3.mlp.fc1.bias")]
    [InlineData("multi_modal_projector.linear_1.bias")]
    public void Biases_are_zeros(string name)
    {
        var s = new RandomTensorSource(4);
        Assert.All(s.ReadFloat32(name, 300), v => Assert.Equal(0f, v));
        Assert.All(s.ReadFloat16(name, 300), v => Assert.Equal((Half)0f, v));
    }

    [Theory]
    [InlineData(UpProj, 1L)]
    [InlineData(UpProj, 4097L)] // odd, single-threaded
    [InlineData(UpProj, 333_333L)] // parallel, odd tail
    [InlineData("language_model.model.norm.weight", 17L)]
    [InlineData("multi_modal_projector.linear_2.bias", 17L)]
    public void Float16_values_are_the_float32_values_rounded(string name, long count)
    {
        var s = new RandomTensorSource(21);
        var f32 = s.ReadFloat32(name, count);
        var f16 = s.ReadFloat16(name, count);
        Assert.Equal(f32.Length, f16.Length);
        for (int i = 0; i < f32.Length; i++)
        {
            if ((Half)f32[i] != f16[i])
                Assert.Fail($"element {i}: fp32 {f32[i]:R} rounds to {(Half)f32[i]} but fp16 read gave {f16[i]}");
        }
    }

    [Fact]
    public void The_expected_shape_is_required()
    {
        var s = new RandomTensorSource(1);
        var e1 = Assert.Throws<ArgumentException>(() => s.ReadFloat32(UpProj));
        Assert.Contains(UpProj, e1.Message);
        Assert.Contains("shape", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => s.ReadFloat16(UpProj));
        Assert.Contains(UpProj, e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => s.ReadFloat32(UpProj, null!));
        Assert.Contains(UpProj, e3.Message);
        var e4 = Assert.Throws<ArgumentException>(() => s.ReadFloat32(UpProj, 4, 0));
        Assert.Contains(UpProj, e4.Message);
        var e5 = Assert.Throws<ArgumentException>(() => s.ReadFloat16(UpProj, 1L << 20, 1L << 20));
        Assert.Contains(UpProj, e5.Message);
        Assert.Empty(s.Requests); // nothing was generated
    }

    [Fact]
    public void Contains_everything_except_the_lm_head_when_embeddings_are_tied()
    {
        var untied = new RandomTensorSource(1);
        Assert.True(untied.Contains("language_model.lm_head.weight"));
        Assert.True(untied.Contains("lm_head.weight"));
        Assert.True(untied.Contains("anything.at.all"));

        var config = LlavaPresets.TinyTest();
        Assert.True(new RandomTensorSource(config, 1).Contains("language_model.lm_head.weight"));
        config.TextConfig.TieWordEmbeddings = true;
        var tied = new RandomTensorSource(config, 1);
        Assert.True(tied.TieWordEmbeddings);
        Assert.False(tied.Contains("language_model.lm_head.weight"));
        Assert.False(tied.Contains("lm_head.weight")); // newer layout maps to the same tensor
        Assert.True(tied.Contains("language_model.model.embed_tokens.weight"));

        config = LlavaPresets.TinyTest();
        config.TieWordEmbeddings = true; // the llava-level flag counts too
        Assert.False(new RandomTensorSource(config, 1).Contains("language_model.lm_head.weight"));
    }

    [Fact]
    public void Unused_tensors_is_always_empty_and_requests_are_recorded()
    {
        var s = new RandomTensorSource(1);
        Assert.Empty(s.UnusedTensors());
        s.ReadFloat32("model.language_model.norm.weight", 8);
        s.ReadFloat16(UpProj, 4, 8);
        Assert.Empty(s.UnusedTensors());
        Assert.Equal(["language_model.model.norm.weight", UpProj], s.Requests.Select(r => r.Name));
        Assert.Equal(new long[] { 4, 8 }, s.Requests[1].Shape);
        Assert.Equal(40, s.ElementsGenerated);
    }

    [Fact]
    public void Into_variants_fill_a_callers_buffer_with_the_same_values()
    {
        var s = new RandomTensorSource(13);
        var f32 = new float[70_001];
        s.ReadFloat32Into(UpProj, f32, 70_001);
        Assert.Equal(s.ReadFloat32(UpProj, 70_001), f32);
        var f16 = new Half[70_001];
        s.ReadFloat16Into(UpProj, f16, 70_001);
        Assert.Equal(s.ReadFloat16(UpProj, 70_001), f16);
        var ones = new Half[5];
        s.ReadFloat16Into("language_model.model.norm.weight", ones, 5);
        Assert.All(ones, v => Assert.Equal(Half.One, v));

        int before = s.Requests.Count;
        var ex = Assert.Throws<ArgumentException>(() => s.ReadFloat16Into(UpProj, new Half[10], 11));
        Assert.Contains(UpProj, ex.Message);
        Assert.Throws<ArgumentException>(() => s.ReadFloat32Into(UpProj, new float[10]));
        Assert.Equal(before, s.Requests.Count);
    }

    /// <summary>Times nothing it asserts on: it prints how long generation takes on this machine.</summary>
    [Fact]
    public void Generates_a_4096x11008_float16_tensor()
    {
        var s = new RandomTensorSource(42);
        _ = s.ReadFloat16("language_model.model.layers.1.mlp.up_proj.weight", 11008, 4096); // warm-up (JIT)
        var sw = Stopwatch.StartNew();
        var w = s.ReadFloat16(UpProj, 11008, 4096);
        double fresh = sw.Elapsed.TotalMilliseconds;
        var reused = new Half[w.Length];
        s.ReadFloat16Into("language_model.model.layers.2.mlp.up_proj.weight", reused, 11008, 4096); // touch the pages once
        sw.Restart();
        s.ReadFloat16Into(UpProj, reused, 11008, 4096);
        double into = sw.Elapsed.TotalMilliseconds;
        output.WriteLine($"4096x11008 fp16 ({w.Length / 1e6:F1} M values) on {Environment.ProcessorCount} cores: " +
                         $"{fresh:F1} ms into a new array, {into:F1} ms into a reused buffer ({w.Length / into / 1e6:F2} G values/s)");

        Assert.Equal(4096L * 11008, w.Length);
        Assert.Equal(w, reused);
        int outside = 0, nonFinite = 0;
        for (int i = 0; i < w.Length; i++)
        {
            float v = (float)w[i];
            if (!float.IsFinite(v)) nonFinite++;
            if (MathF.Abs(v) > RandomTensorSource.Amplitude * 1.001f) outside++;
        }
        Assert.Equal(0, nonFinite);
        Assert.Equal(0, outside);
        Assert.NotEqual(w[0], w[w.Length - 1]);
    }
}
