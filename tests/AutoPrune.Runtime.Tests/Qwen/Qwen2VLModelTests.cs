using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Diagnostics;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using AutoPrune.Models.Qwen2VL;
using AutoPrune.Tests.Loading;
using Xunit;
using Xunit.Abstractions;

using AutoPrune.Models;
using AutoPrune.Models.Text;

namespace AutoPrune.Tests.Qwen;

/// <summary>
/// Both fixture checkpoints written once over the backend ops (<see cref="Qwen2VLModel"/>): on the fp32 CPU backend, on
/// the CPU backend matching the device's arithmetic, and on the GPU code path on ILGPU's CPU accelerator.
/// </summary>
public sealed class QwenBackendFixture : IDisposable
{
    private readonly Dictionary<string, Qwen2VLModel> _cpu = [], _matched = [], _gpu = [];

    internal Qwen2VLModel Cpu(string checkpoint) => Get(_cpu, checkpoint, () => new CpuBackend());
    internal Qwen2VLModel Matched(string checkpoint) => Get(_matched, checkpoint, () => new CpuBackend(CpuPrecision.MatchDevice));
    internal Qwen2VLModel Gpu(string checkpoint) => Get(_gpu, checkpoint, () => new CudaBackend(CudaDevice.CreateForTests()));

    private static Qwen2VLModel Get(Dictionary<string, Qwen2VLModel> models, string checkpoint, Func<Backend> backend)
    {
        lock (models)
        {
            if (!models.TryGetValue(checkpoint, out var m)) models[checkpoint] = m = Qwen2VLModel.Load(QwenFixture.Model(checkpoint), backend());
            return m;
        }
    }

    /// <summary>What one prompt gives on a backend: the merged tokens, the prefill and step logits, the greedy ids.</summary>
    /// <param name="FirstDecodePosition">The position the first decode token gets in the last layer (the CPU cache's, read after the prefill; -1 on a GPU, where it stays on the device).</param>
    /// <param name="Prompt">The prompt's positions as built; <paramref name="AfterPrefill"/> the sequence's after the prefill (a hook's prunes applied).</param>
    internal sealed record Result(float[]? Vision, float[]? Received, List<float[]> Logits, int[] Greedy, int FirstDecodePosition, PositionIds Prompt, PositionIds AfterPrefill);

    /// <summary>
    /// Runs a prompt: the images' merged tokens (and received attention), the prefill, <paramref name="logitSteps"/> decode
    /// steps whose logits are kept, then greedy steps up to <paramref name="greedy"/> ids.
    /// </summary>
    internal static Result Run(Qwen2VLModel model, int[] ids, IReadOnlyList<Qwen2VLImage> images, int greedy, int logitSteps = 0, bool received = false, IPrefillHook? hook = null)
    {
        using var tokens = images.Count > 0 ? model.EncodeImages(images, received) : null;
        var vision = tokens?.ToHost();
        var recv = tokens?.ReceivedToHost();
        var state = model.BuildSequence(ids, tokens);
        var prompt = state.Positions;
        using var gen = model.StartGeneration(Math.Max(greedy, logitSteps + 1));
        var logits = new List<float[]> { gen.Prefill(state, hook, CancellationToken.None) };
        // The last layer's (a prune between layers may renumber the later layers' positions only).
        int decodePosition = ((DecoderGeneration)gen).Session.Cache(model.DecoderLayers - 1) is CpuKvLayer kv ? kv.NextPosition : -1;
        var out_ = new List<int> { CpuOps.ArgMax(logits[0]) };
        for (int s = 0; s < logitSteps; s++)
        {
            logits.Add(gen.Step(out_[^1]));
            out_.Add(CpuOps.ArgMax(logits[^1]));
        }
        while (out_.Count < greedy) out_.Add(gen.StepGreedy(out_[^1]));
        return new Result(vision, recv, logits, out_.Take(Math.Max(greedy, 1)).ToArray(), decodePosition, prompt, state.Positions);
    }

    public void Dispose()
    {
        foreach (var m in _cpu.Values.Concat(_matched.Values).Concat(_gpu.Values)) m.Dispose();
    }
}

public sealed class Qwen2VLModelTests(QwenBackendFixture fx, ITestOutputHelper output) : IClassFixture<QwenBackendFixture>
{
    private const float Tolerance = 1e-4f;

    private static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    private static int Differing(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        int n = 0;
        for (int i = 0; i < a.Length; i++) if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i])) n++;
        return n;
    }

    private static Qwen2VLImage[] Images(QwenFixture.Case c) => c.Image is null ? [] : [QwenFixture.Preprocess(c.Image)];

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void On_the_cpu_backend_logits_and_greedy_ids_match_the_reference(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var r = QwenBackendFixture.Run(fx.Cpu(checkpoint), c.InputIds, Images(c), c.GreedyIds.Length);
        Assert.Equal(c.DecodePositionIds[0], r.FirstDecodePosition);
        float worst = MaxAbsDiff(c.LastLogits, r.Logits[0]);
        output.WriteLine($"{c}: max |logit - reference| = {worst:E2}");
        Assert.True(worst <= Tolerance, $"last-position logits differ from the reference by up to {worst:E3}");
        if (!c.GreedyNearTie) Assert.Equal(c.GreedyIds, r.Greedy);
        else Assert.Equal(c.GreedyIds[0], r.Greedy[0]);
        if (c.Image is not null)
        {
            double sum = r.Vision!.Sum(x => (double)x);
            Assert.True(Math.Abs(sum - c.VisionSum) <= Tolerance, $"vision output sum {sum} vs {c.VisionSum}");
            Assert.True(MaxAbsDiff(c.VisionFirst8!, r.Vision.AsSpan(0, 8)) <= Tolerance);
        }
    }

    [Theory]
    [InlineData(QwenFixture.Current, "images/06_50x60.png")]
    [InlineData(QwenFixture.Legacy, "images/07_1280x720.png")]
    public void On_ilgpu_cpu_every_stage_equals_the_matched_cpu_backend_bit_for_bit(string checkpoint, string image)
    {
        var c = QwenFixture.ImageCases(checkpoint).First(x => x.Image == image);
        var images = Images(c);
        var model = fx.Gpu(checkpoint);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var gpu = QwenBackendFixture.Run(model, c.InputIds, images, c.GreedyIds.Length, logitSteps: 2, received: true);
        double gpuMs = sw.Elapsed.TotalMilliseconds;
        var cpu = QwenBackendFixture.Run(fx.Matched(checkpoint), c.InputIds, images, c.GreedyIds.Length, logitSteps: 2, received: true);
        output.WriteLine($"{c}: ilgpu-cpu {gpuMs:F0} ms; vision {Differing(cpu.Vision!, gpu.Vision!)} differ, received {Differing(cpu.Received!, gpu.Received!)}, " +
            string.Join(", ", cpu.Logits.Select((l, s) => $"logits {s}: {Differing(l, gpu.Logits[s])}")) + $"; vs reference {MaxAbsDiff(c.LastLogits, gpu.Logits[0]):E2}");
        Assert.Equal(0, Differing(cpu.Vision!, gpu.Vision!));
        Assert.Equal(0, Differing(cpu.Received!, gpu.Received!));
        for (int s = 0; s < cpu.Logits.Count; s++) Assert.Equal(0, Differing(cpu.Logits[s], gpu.Logits[s]));
        Assert.Equal(cpu.Greedy, gpu.Greedy);
        Assert.True(MaxAbsDiff(c.LastLogits, gpu.Logits[0]) <= 1e-2f);
    }

    /// <summary>Two images in one prompt (and a text-only one): each backend against the float64 computation, the emulated GPU against the matched CPU bit for bit.</summary>
    [Fact]
    public void A_two_image_prompt_matches_the_float64_computation_on_every_backend()
    {
        var tok = QwenFixture.Tokenizer(QwenFixture.Current);
        Qwen2VLImage a = QwenFixture.Preprocess("images/06_50x60.png"), b = QwenFixture.Preprocess("images/03_1000x300.png");
        string prompt = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.Image, Qwen2VLPart.OfText("Which has more circles,"), Qwen2VLPart.Image, Qwen2VLPart.OfText(" or this one?"))]);
        var ids = tok.EncodePrompt(prompt, [a.MergedTokens, b.MergedTokens]);
        var config = fx.Cpu(QwenFixture.Current).Config;
        using var store = SafeTensorStore.Open(QwenFixture.Model(QwenFixture.Current), null, Qwen2VLTensorNames.ToCanonical);
        var reference = new Qwen2VLReference64(store, config);
        var v64 = reference.Vision([a, b], out var received64);
        var (positions, _) = Qwen2VLRopeIndex.Compute(ids, [a.Grid, b.Grid], Qwen2VLRopeIndex.TokenIds.Of(config), 2);
        var logits64 = reference.LastLogits(ids, [a, b], positions);

        var cpu = QwenBackendFixture.Run(fx.Cpu(QwenFixture.Current), ids, [a, b], 3, received: true);
        double dVision = cpu.Vision!.Select((x, i) => Math.Abs(x - v64[i])).Max();
        double dLogits = cpu.Logits[0].Select((x, i) => Math.Abs(x - logits64[i])).Max();
        double dReceived = cpu.Received!.Select((x, i) => Math.Abs(x - received64[i])).Max();
        Assert.Equal(positions.Max() + 1, cpu.FirstDecodePosition);
        var gpu = QwenBackendFixture.Run(fx.Gpu(QwenFixture.Current), ids, [a, b], 3, logitSteps: 1, received: true);
        var matched = QwenBackendFixture.Run(fx.Matched(QwenFixture.Current), ids, [a, b], 3, logitSteps: 1, received: true);
        double gLogits = gpu.Logits[0].Select((x, i) => Math.Abs(x - logits64[i])).Max();
        output.WriteLine($"two images, {ids.Length} tokens: CPU vs float64: vision {dVision:E2}, logits {dLogits:E2}, received {dReceived:E2}; " +
            $"ilgpu-cpu vs float64 logits {gLogits:E2}, vs matched CPU: {Differing(matched.Vision!, gpu.Vision!)} vision, {Differing(matched.Received!, gpu.Received!)} received, " +
            $"{Differing(matched.Logits[0], gpu.Logits[0])} + {Differing(matched.Logits[1], gpu.Logits[1])} logits differ");
        Assert.True(dVision <= Tolerance, $"vision output differs from float64 by {dVision}");
        Assert.True(dLogits <= Tolerance, $"logits differ from float64 by {dLogits}");
        Assert.True(dReceived <= 1e-7, $"received attention differs from float64 by {dReceived}");
        Assert.Equal(1.0, cpu.Received![..a.MergedTokens].Sum(x => (double)x), 5);
        Assert.Equal(1.0, cpu.Received[a.MergedTokens..].Sum(x => (double)x), 5);
        Assert.Equal(Array.IndexOf(logits64, logits64.Max()), cpu.Greedy[0]);
        Assert.True(gLogits <= 1e-2, $"the emulated GPU's logits differ from float64 by {gLogits}");
        Assert.Equal(0, Differing(matched.Vision!, gpu.Vision!));
        Assert.Equal(0, Differing(matched.Received!, gpu.Received!));
        for (int s = 0; s < 2; s++) Assert.Equal(0, Differing(matched.Logits[s], gpu.Logits[s]));
        Assert.Equal(matched.Greedy, gpu.Greedy);
        Assert.Equal(cpu.Greedy, gpu.Greedy);
    }

    [Theory]
    [InlineData(QwenFixture.Current)]
    [InlineData(QwenFixture.Legacy)]
    public void A_text_only_prompt_matches_the_reference_on_the_emulated_gpu_and_equals_the_matched_cpu(string checkpoint)
    {
        var c = QwenFixture.TextOnly(checkpoint);
        var gpu = QwenBackendFixture.Run(fx.Gpu(checkpoint), c.InputIds, [], c.GreedyIds.Length, logitSteps: 2);
        var matched = QwenBackendFixture.Run(fx.Matched(checkpoint), c.InputIds, [], c.GreedyIds.Length, logitSteps: 2);
        float d = MaxAbsDiff(c.LastLogits, gpu.Logits[0]);
        output.WriteLine($"{checkpoint} text-only: ilgpu-cpu vs reference {d:E2}; {string.Join(", ", gpu.Logits.Select((l, s) => Differing(matched.Logits[s], l)))} logits differ from the matched CPU");
        Assert.True(d <= 1e-2f);
        for (int s = 0; s < gpu.Logits.Count; s++) Assert.Equal(0, Differing(matched.Logits[s], gpu.Logits[s]));
        Assert.Equal(matched.Greedy, gpu.Greedy);
        Assert.Equal(c.GreedyIds, gpu.Greedy);
    }

    /// <summary>
    /// The GPU code path's counters for a Qwen request (ILGPU's CPU accelerator counts as a GPU does): the vision stage
    /// never waits, a prefill waits once (logits and greedy token together), a greedy decode token once for its 4 bytes
    /// and uploads nothing; a second request allocates nothing on the device.
    /// </summary>
    [Fact]
    public void A_prefill_waits_once_and_a_greedy_decode_token_once()
    {
        var model = fx.Gpu(QwenFixture.Legacy);
        var c = QwenFixture.ImageCases(QwenFixture.Legacy).First(x => x.Image == "images/05_800x800.png");
        var images = Images(c);
        var counters = model.Counters!;
        var times = new List<double>();
        DeviceCounters Measure(Action a)
        {
            var before = counters.Snapshot();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            a();
            times.Add(sw.Elapsed.TotalMilliseconds);
            return counters.Snapshot() - before;
        }
        QwenBackendFixture.Run(model, c.InputIds, images, 4); // the first request sizes the pools
        Qwen2VLImageTokens? tokens = null;
        SequenceState? state = null;
        IGeneration? gen = null;
        try
        {
            var vision = Measure(() => tokens = model.EncodeImages(images));
            var build = Measure(() => state = model.BuildSequence(c.InputIds, tokens));
            gen = model.StartGeneration(4);
            float[] logits = [];
            var prefill = Measure(() => logits = gen.Prefill(state!, null, CancellationToken.None));
            int id = CpuOps.ArgMax(logits);
            var first = Measure(() => id = gen.StepGreedy(id));
            var step = Measure(() => id = gen.StepGreedy(id));
            int patches = c.PixelShape![0];
            output.WriteLine($"{c.Image} ({patches} patches, {c.InputIds.Length} prompt tokens):\n vision {vision}\n sequence {build}\n prefill {prefill}\n first decode step {first}\n decode step {step}\n emulated times (ms): {string.Join(", ", times.Select(t => t.ToString("F0")))}");
            Assert.Equal(0, vision.HostSyncs);
            Assert.Equal(0, vision.DeviceAllocations + build.DeviceAllocations + prefill.DeviceAllocations + step.DeviceAllocations);
            // Up: the fp16 patches, their two rotary components, the window and frame offsets and the reverse index.
            int windows = c.CuWindowSeqlens!.Length;
            Assert.Equal(2L * patches * 1176 + 4L * (2 * patches + patches / 4 + windows + 2), vision.H2DBytes);
            // The sequence: the token ids (the source map) and the 3 x n M-RoPE positions.
            Assert.Equal(4L * 4 * c.InputIds.Length, build.H2DBytes);
            Assert.Equal(0, build.HostSyncs);
            Assert.Equal(1, prefill.HostSyncs);
            Assert.Equal(0, prefill.H2DBytes);
            Assert.Equal(1, step.HostSyncs);
            Assert.Equal(4, step.D2HBytes);
            Assert.Equal(0, step.H2DBytes);
            // LLaVA's 8 launches and cuBLAS calls per layer and one more for the q|k|v bias; plus the embedding, the final norm,
            // the LM head, the argmax and the advance.
            Assert.Equal(9 * model.DecoderLayers + 5, step.Enqueued);
        }
        finally
        {
            gen?.Dispose();
            tokens?.Dispose();
        }
    }

    [Fact]
    public void Tied_embeddings_use_the_embedding_matrix_even_when_a_head_is_stored()
    {
        // Tied without lm_head.weight (as Qwen2.5-VL-3B), tied with a different stored lm_head (transformers ignores it),
        // and untied with lm_head := embed_tokens: the same logits.
        using var tied = new TempDir();
        using var tiedWithHead = new TempDir();
        using var copied = new TempDir();
        static void Tie(System.Text.Json.Nodes.JsonObject j) { j["tie_word_embeddings"] = true; j["text_config"]!["tie_word_embeddings"] = true; }
        Qwen2VLForwardTests.WriteVariant(tied.Path, t => t.Where(x => x.Name != "lm_head.weight").ToList(), Tie);
        Qwen2VLForwardTests.WriteVariant(tiedWithHead.Path, t => t, Tie);
        Qwen2VLForwardTests.WriteVariant(copied.Path, t => t.Select(x => x.Name == "lm_head.weight" ? (x.Name, x.Type, x.Shape, t.Single(e => e.Name == "model.language_model.embed_tokens.weight").Data) : x).ToList());
        var c = QwenFixture.TextOnly(QwenFixture.Current);
        float[] Logits(string dir)
        {
            using var m = Qwen2VLModel.Load(dir);
            return QwenBackendFixture.Run(m, c.InputIds, [], 1).Logits[0];
        }
        var la = Logits(tied.Path);
        Assert.Equal(Logits(copied.Path), la);
        Assert.Equal(la, Logits(tiedWithHead.Path));
        Assert.True(MaxAbsDiff(c.LastLogits, la) > 1e-3f, "tying changed nothing: the test would not see a wrong head");
    }

    [Fact]
    public void Loading_names_missing_and_left_over_tensors_and_prompts_must_fit_the_images()
    {
        using var missing = new TempDir();
        Qwen2VLForwardTests.WriteVariant(missing.Path, t => t.Where(x => x.Name != "model.visual.blocks.2.mlp.up_proj.bias").ToList());
        Assert.Contains("model.visual.blocks.2.mlp.up_proj.bias", Assert.Throws<ModelLoadException>(() => Qwen2VLModel.Load(missing.Path)).Message);
        using var extra = new TempDir();
        Qwen2VLForwardTests.WriteVariant(extra.Path, t => [.. t, ("model.visual.blocks.4.norm1.weight", DType.F16, [64], new float[64])]);
        var e = Assert.Throws<ModelLoadException>(() => Qwen2VLModel.Load(extra.Path));
        Assert.Contains("model.visual.blocks.4.norm1.weight", e.Message);
        Assert.Contains("does not have", e.Message);

        var model = fx.Cpu(QwenFixture.Current);
        var c = QwenFixture.ImageCases(QwenFixture.Current).First(x => x.Image == "images/06_50x60.png");
        using var other = model.EncodeImages([QwenFixture.Preprocess("images/00_336x336.png")]);
        Assert.Throws<ArgumentException>(() => model.BuildSequence(c.InputIds, other));
        Assert.Throws<ArgumentException>(() => model.BuildSequence(c.InputIds, null));
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentOutOfRangeException>(() => model.BuildSequence([1, 2, 9999], null)).Message);
    }

    /// <summary>Keeps the text and every other merged token after one layer, reading the host signals first (as a policy on the host would).</summary>
    private sealed class KeepEveryOtherImageRow(int layer, bool renumber) : IPrefillHook
    {
        public int[] Kept { get; private set; } = [];
        public float[] LastRowAttention { get; private set; } = [];
        public float[] NextQueries { get; private set; } = [];

        public PruneAction? AfterLayer(LayerView view)
        {
            if (view.Layer != layer) return null;
            int n = view.State.Length;
            LastRowAttention = view.AttentionRows([n - 1]);
            NextQueries = view.NextLayerQueryKeys().Q;
            var visual = view.State.VisualIndex;
            Kept = Enumerable.Range(0, n).Where(i => visual[i] < 0 || visual[i] % 2 == 0).ToArray();
            return new PruneAction(Kept, null, renumber);
        }

        public bool ReadsAttention(int l) => l == layer;
    }

    /// <summary>
    /// A prune between layers on a Qwen sequence (the decoder sessions' M-RoPE bookkeeping): the kept rows keep their three
    /// position components (or are renumbered in all three), the layer's attention rows and the next layer's queries are
    /// rotated by M-RoPE, and the emulated GPU equals the matched CPU bit for bit in signals and logits.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_prune_between_layers_keeps_each_rows_m_rope_positions_on_both_backends(bool renumber)
    {
        var c = QwenFixture.ImageCases(QwenFixture.Current).First(x => x.Image == "images/00_336x336.png");
        var images = Images(c);
        var results = new List<(QwenBackendFixture.Result R, KeepEveryOtherImageRow Hook)>();
        foreach (var model in new[] { fx.Gpu(QwenFixture.Current), fx.Matched(QwenFixture.Current), fx.Cpu(QwenFixture.Current) })
        {
            var hook = new KeepEveryOtherImageRow(1, renumber);
            results.Add((QwenBackendFixture.Run(model, c.InputIds, images, 3, logitSteps: 1, hook: hook), hook));
        }
        var (gpu, gh) = results[0];
        var (matched, mh) = results[1];
        var (cpu, ch) = results[2];
        var expected = gpu.Prompt.Gather(gh.Kept);
        if (renumber) expected = expected.Renumbered();
        output.WriteLine($"kept {gh.Kept.Length} of {c.InputIds.Length} rows; renumbered {renumber}; GPU vs matched: {Differing(matched.Logits[0], gpu.Logits[0])} + {Differing(matched.Logits[1], gpu.Logits[1])} logits, " +
            $"{Differing(mh.LastRowAttention, gh.LastRowAttention)} attention, {Differing(mh.NextQueries, gh.NextQueries)} queries differ; vs fp32 CPU logits {MaxAbsDiff(cpu.Logits[0], gpu.Logits[0]):E2}");
        Assert.Equal(c.InputIds.Length - c.NumImageTokens / 2, gh.Kept.Length);
        foreach (var r in new[] { gpu, matched, cpu })
        {
            Assert.Equal(3, r.AfterPrefill.Components);
            Assert.Equal(expected.Values.ToArray(), r.AfterPrefill.Values.ToArray());
            // The last layer decodes after the last kept row's largest position (renumbered: after the new length).
            if (r.FirstDecodePosition >= 0) Assert.Equal(expected.MaxAt(expected.Count - 1) + 1, r.FirstDecodePosition);
        }
        Assert.Equal(0, Differing(mh.NextQueries, gh.NextQueries));
        for (int s = 0; s < 2; s++) Assert.Equal(0, Differing(matched.Logits[s], gpu.Logits[s]));
        Assert.Equal(matched.Greedy, gpu.Greedy);
        Assert.True(MaxAbsDiff(cpu.Logits[0], gpu.Logits[0]) <= 1e-2f);
        // The signals the hook read are M-RoPE's on every backend (the host's attention rows are the CPU engine's
        // arithmetic, not the device's, so they agree to float rounding only).
        Assert.True(MaxAbsDiff(mh.LastRowAttention, gh.LastRowAttention) <= 1e-6f);
        Assert.True(MaxAbsDiff(ch.LastRowAttention, gh.LastRowAttention) <= 1e-3f);
        Assert.True(MaxAbsDiff(ch.NextQueries, gh.NextQueries) <= 2e-2f * Math.Max(1f, ch.NextQueries.Max(MathF.Abs)));
        // Pruning changed the answer's logits (the hook did something).
        Assert.True(MaxAbsDiff(QwenBackendFixture.Run(fx.Cpu(QwenFixture.Current), c.InputIds, images, 1).Logits[0], cpu.Logits[0]) > 1e-4f);
    }

    /// <summary>
    /// The 2D vision rotary embedding as a backend <see cref="RotaryTable"/> (frequencies [f0..f(q-1), f0..f(q-1)], sections
    /// [q, q], positions [rows, columns]) turns q exactly as the standalone tower's own cos/sin tables do, on the CPU and
    /// on the GPU path's tables.
    /// </summary>
    [Fact]
    public void The_vision_rotary_table_reproduces_the_standalone_tables_exactly()
    {
        var standalone = QwenFixture.LoadedModel(QwenFixture.Current).Vision;
        var cfg = standalone.Config;
        var geometry = Qwen2VLVisionGeometry.Create([(1, 16, 58), (1, 4, 4)], 2, 4);
        var order = geometry.PatchOrder();
        var (cos, sin) = standalone.RotaryTables(geometry, order);
        int n = geometry.Patches, heads = cfg.NumHeads, hd = cfg.HeadDim, h = heads * hd;
        var x = Enumerable.Range(0, n * h).Select(i => MathF.Sin(i * 0.37f) * 3f).ToArray();
        var expected = (float[])x.Clone();
        QwenRope.Apply(expected, n, heads, hd, cos, sin);
        var qkv = new float[n * 3 * h];
        for (int r = 0; r < n; r++)
            for (int part = 0; part < 3; part++) x.AsSpan(r * h, h).CopyTo(qkv.AsSpan(r * 3 * h + part * h, h));
        var positions = new int[2 * n];
        for (int r = 0; r < n; r++) { positions[r] = geometry.RotaryRows[order[r]]; positions[n + r] = geometry.RotaryCols[order[r]]; }
        foreach (var model in new[] { fx.Cpu(QwenFixture.Current), fx.Gpu(QwenFixture.Current) })
        {
            var b = model.Backend;
            using var scope = b.Enter();
            using var tq = b.Allocate(qkv.Length, TensorKind.Float);
            b.Upload(qkv, tq);
            using var tp = b.Allocate(positions.Length, TensorKind.Int);
            b.Upload(positions, tp);
            using var q32 = b.Allocate(n * h, TensorKind.Float);
            using var k32 = b.Allocate(n * h, TensorKind.Float);
            using var q = b.Allocate(n * h, TensorKind.Half);
            using var k = b.Allocate(n * h, TensorKind.Half);
            using var v = b.Allocate(n * h, TensorKind.Half);
            b.SplitHeads(tq, n, new HeadLayout(heads, heads, hd), model.Vision.Rope, tp, q32, k32, q, k, v, null);
            Assert.Equal(0, Differing(expected, b.Download(q32)));
            Assert.Equal(0, Differing(expected, b.Download(k32)));
        }
        Assert.Equal([hd / 4, hd / 4], fx.Cpu(QwenFixture.Current).Vision.Rope.Sections!);
    }
}
