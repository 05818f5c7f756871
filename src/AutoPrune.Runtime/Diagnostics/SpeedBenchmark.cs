using AutoPrune.Compute;
using System.Diagnostics;
using AutoPrune.Compute.Cpu;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;

using AutoPrune.Pruning;

namespace AutoPrune.Diagnostics;

/// <summary>What <see cref="SpeedBenchmark.Run"/> measures and on what.</summary>
public sealed record SpeedBenchmarkOptions
{
    /// <summary>A checkpoint folder, or null to generate random fp16 weights for <see cref="Architecture"/>.</summary>
    public string? ModelDirectory { get; init; }

    /// <summary>
    /// Architecture for random weights: "llava-1.5-7b", "llava-1.5-13b", "llava-1.6-vicuna-7b", "llava-1.6-mistral-7b",
    /// "tiny-test" or "tiny-next-test". LLaVA-NeXT ones are measured on a 672x672 image: a base view and 2x2 tiles, 2,928 visual tokens.
    /// </summary>
    public string Architecture { get; init; } = "llava-1.5-7b";

    /// <summary>"auto", "cpu", "cuda", "cuda:N" or "ilgpu-cpu", as <see cref="ModelOptions.Device"/>.</summary>
    public string Device { get; init; } = "auto";

    /// <summary>Methods timed at every budget; None always runs at the full visual token count as the reference.</summary>
    public IReadOnlyList<PruningMethod> Methods { get; init; } = [PruningMethod.FastV, PruningMethod.AutoPrune];

    /// <summary>Average visual tokens per layer (processed accounting).</summary>
    public IReadOnlyList<double> Budgets { get; init; } = [192, 128, 64];

    /// <summary>Text tokens around the image (before: system prompt; after: question); about a LLaVA-1.5 VQA prompt.</summary>
    public int TextTokensBefore { get; init; } = 35;
    public int TextTokensAfter { get; init; } = 15;

    public int Repeats { get; init; } = 5;
    public int Warmup { get; init; } = 1;
    /// <summary>Tokens generated after an unpruned prefill to time decoding.</summary>
    public int DecodeTokens { get; init; } = 32;
    public int Seed { get; init; } = 1;

    /// <summary>Replay decode steps and the vision tower as CUDA graphs (<see cref="ModelOptions.CudaGraphs"/>; emulated on ilgpu-cpu).</summary>
    public bool CudaGraphs { get; init; }
}

/// <summary>One prefill configuration's timing (medians over the repeats).</summary>
/// <param name="Skipped">Why this method cannot run at this budget on this model (then the measurements are null).</param>
/// <param name="Counters">What one prefill (the last repeat) asked of the GPU; null on the CPU.</param>
public sealed record PrefillTiming(string Method, double Budget, double? AvgVisualTokensPerLayer, int PromptTokens,
    double? PrefillMs, double? PrefillMsMin, double? MsPerLayer, double? FlopsRatio, double? SpeedupVsUnpruned, string? Skipped = null,
    DeviceCounters? Counters = null)
{
    /// <summary>Visual tokens each decoder layer processed (the method's schedule as run; null for an input cut or a skipped method).</summary>
    public int[]? VisualTokensPerLayer { get; init; }
}

/// <summary>Everything one <see cref="SpeedBenchmark.Run"/> measured, in one run on one device.</summary>
/// <remarks>
/// <c>PeakDeviceMemoryMb</c> counts AutoPrune's own device buffers (weights, caches, scratch, pool); <c>DeviceUsedMb</c>
/// is the most the CUDA driver reported in use on the whole GPU at the end of any stage (CUDA context, cuBLAS
/// workspace and other processes included); null on the CPU.
/// </remarks>
public sealed record SpeedReport(
    string Model, string Device, string Weights, int DecoderLayers, int VisualTokens,
    double LoadSeconds, double VisionTowerMs, double ProjectorMs,
    IReadOnlyList<PrefillTiming> Prefill,
    double DecodeMsPerToken, int DecodeTokens,
    double? PeakDeviceMemoryMb, double? WeightsDeviceMemoryMb, double PeakWorkingSetMb, int Repeats, int Warmup,
    double? DeviceUsedMb = null, int ImageViews = 1)
{
    /// <summary>What one greedy decode step asked of the GPU (the last timed step); null on the CPU.</summary>
    public DeviceCounters? DecodeCountersPerToken { get; init; }
    /// <summary>
    /// The greedy token ids the decode produced (warm-up steps first). The same options give the same ids with and
    /// without CUDA graphs: a graphed step must compute what the ungraphed one does, bit for bit.
    /// </summary>
    public IReadOnlyList<int> DecodeTokenIds { get; init; } = [];
    /// <summary>
    /// SHA-256 of the bits of the logits of one more decode step after the timed ones (hex): random weights often repeat
    /// one token, so the ids alone would not show a step that reads a stale position or cache length; the logits do.
    /// </summary>
    public string DecodeLogitsSha256 { get; init; } = "";
    /// <summary>True when decode steps and the vision tower were replayed as CUDA graphs (emulated on ilgpu-cpu).</summary>
    public bool CudaGraphs { get; init; }
    /// <summary>
    /// How the GPU code path computes long attention: "tiled" (one tensor-core launch), or "gemm: " and why (a head
    /// dimension or device the tiled kernel does not take, or its load-time check failing); null on the CPU.
    /// </summary>
    public string? LongAttention { get; init; }
    /// <summary>What the vision tower asked of the GPU for one image (all its views); null on the CPU.</summary>
    public DeviceCounters? VisionCounters { get; init; }
    /// <summary>What the projector asked of the GPU for one image; null on the CPU.</summary>
    public DeviceCounters? ProjectorCounters { get; init; }
}

/// <summary>
/// Times the stages of the model on one device with synthetic inputs (random pixels, random token ids): vision tower,
/// projector, language-model prefill per pruning method and budget (pruning signals and row gathers included), and
/// greedy decoding. With no checkpoint folder it generates random fp16 weights for a named architecture in memory,
/// so the LLaVA-1.5-7B shape can be measured without downloading it. Answers are meaningless; timings are not.
/// </summary>
public static class SpeedBenchmark
{
    /// <summary>Most measured (or warm-up) runs per stage: a number from a command line never sizes anything past it.</summary>
    public const int MaxRepeats = 10_000;

    public static SpeedReport Run(SpeedBenchmarkOptions o, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.Repeats is < 1 or > MaxRepeats) throw new ArgumentOutOfRangeException(nameof(o), $"Repeats must be between 1 and {MaxRepeats:N0} (got {o.Repeats:N0}).");
        if (o.Warmup is < 0 or > MaxRepeats) throw new ArgumentOutOfRangeException(nameof(o), $"Warmup must be between 0 and {MaxRepeats:N0} (got {o.Warmup:N0}).");
        if (o.DecodeTokens < 1) throw new ArgumentOutOfRangeException(nameof(o), "DecodeTokens must be at least 1.");
        if (o.TextTokensBefore < 1 || o.TextTokensAfter < 1) throw new ArgumentOutOfRangeException(nameof(o), "Text token counts must be at least 1.");
        var sw = Stopwatch.StartNew();
        var (model, anyRes, weights, name) = LoadBackend(o, progress);
        using var owned = model;
        double loadSeconds = sw.Elapsed.TotalSeconds;
        var gpuBackend = (model as LlavaModel)?.Backend as Compute.Cuda.CudaBackend;
        double? weightsMb = gpuBackend is { } g0 ? g0.Memory.CurrentBytes / 1048576.0 : null;
        double? deviceUsed = null;
        void SampleDevice()
        {
            if (gpuBackend is { Accelerator: ILGPU.Runtime.Cuda.CudaAccelerator cuda })
            {
                using var bind = cuda.BindScoped();
                cuda.Synchronize();
                double used = (cuda.MemorySize - cuda.GetFreeMemory()) / 1048576.0;
                deviceUsed = Math.Max(deviceUsed ?? 0, used);
            }
        }
        SampleDevice();
        var cfg = model.Config;
        var t = cfg.TextConfig;
        var v = cfg.VisionConfig;
        // LLaVA-NeXT: a typical image's views (base + tiles) through the tower, then stitched, unpadded, projected, with newlines.
        var layout = anyRes is null ? null
            : new Loading.Images.AnyResGrid(cfg.GridPinpoints, v.ImageSize, v.PatchSize).Plan(LlavaPresets.TypicalNextImageSize, LlavaPresets.TypicalNextImageSize);
        int visual = layout?.TokenCount ?? model.TokensPerImage, views = layout?.Views ?? 1;
        var shape = new ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize, visual, model.Grid);
        // What the pruning methods see: a LLaVA-NeXT image's visual patches and views (its image_newline rows are not visual tokens).
        var pruneShape = layout is null ? shape : shape with { VisualTokens = layout.Patches, ViewPatches = layout.ViewPatches() };
        int newlines = visual - pruneShape.VisualTokens;
        var rng = new Random(o.Seed);
        var pixels = new float[v.NumChannels * v.ImageSize * v.ImageSize];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rng.NextDouble() * 4 - 2);
        int[] ids = SyntheticPrompt(rng, t.VocabSize, cfg.ImageTokenIndex, o.TextTokensBefore, visual, o.TextTokensAfter);
        if ((long)ids.Length + o.DecodeTokens + o.Warmup + 1 > t.MaxPositionEmbeddings)
            throw new ArgumentException($"The synthetic prompt ({ids.Length} tokens) plus {o.DecodeTokens} generated, {o.Warmup} warm-up and one checked token exceeds the model's {t.MaxPositionEmbeddings} positions.");

        // Vision tower and projector.
        progress?.Report("vision tower");
        // LLaVA-NeXT's views go through the tower as the request path sends them: one batch (on a GPU, one forward).
        var viewPixels = views == 1 ? pixels : Enumerable.Repeat(pixels, views).SelectMany(p => p).ToArray();
        VisionFeatures[] Tower() => views == 1 ? [model.VisionForward(pixels)] : model.VisionForwardViews(viewPixels, views);
        AnyResTokenMap? map = null;
        float[]? anyResTokens = null;
        ImageRows Projector(VisionFeatures[] f)
        {
            if (layout is null) return model.ProjectImage(f[0]);
            (anyResTokens, map) = anyRes!.Assemble(model, layout, f);
            return ImageRows.OnHost(anyResTokens, model.Hidden);
        }
        void Release(VisionFeatures[] f) { foreach (var v in f) v.Device?.Release(); }
        VisionFeatures[] towerOut = [];
        var visionCounters = Count(model, () => towerOut = Tower());
        ImageRows? projected = null;
        var projectorCounters = Count(model, () => projected = Projector(towerOut));
        var (timedMap, timedTokens) = (map, anyResTokens); // the map and tokens the prefills use (the repeats below reassemble)
        var visionMs = new List<double>();
        var projMs = new List<double>();
        for (int r = 0; r < o.Warmup + o.Repeats; r++)
        {
            ct.ThrowIfCancellationRequested();
            sw.Restart();
            var again = Tower();
            double vm = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            var rows = Projector(again);
            double pm = sw.Elapsed.TotalMilliseconds;
            rows.Dispose();
            Release(again);
            if (r >= o.Warmup) { visionMs.Add(vm); projMs.Add(pm); }
        }
        VisionFeatures vision = towerOut[0];
        using var projectedRows = projected!;
        SampleDevice();

        // Prefill: the unpruned reference first, then each method at each budget.
        var prefill = new List<PrefillTiming>();
        // (None at a smaller budget feeds only that many visual tokens: the cost floor of a prompt that short.)
        var combos = new List<(PruningMethod Method, double Budget)> { (PruningMethod.None, visual) };
        foreach (var b in o.Budgets)
        {
            if (b < visual) combos.Add((PruningMethod.None, b));
            foreach (var m in o.Methods.Where(m => m != PruningMethod.None))
                combos.Add((m, b));
        }
        double reference = double.NaN;
        foreach (var (method, budget) in combos)
        {
            progress?.Report($"prefill {method} at {budget}");
            var options = new PruningOptions { Method = method, Budget = budget };
            var runIds = ids;
            var runProjected = projectedRows;
            var runShape = pruneShape;
            if (method == PruningMethod.None && budget < visual)
            {
                int keep = Math.Max(1, (int)Math.Round(budget));
                runIds = LlavaRuntime.ShortenImageRun(ids, cfg.ImageTokenIndex, keep);
                runProjected = projectedRows.FirstRows(keep);
                runShape = shape with { VisualTokens = keep };
            }
            try
            {
                _ = PruningCapabilities.Resolve(options, null, new PruningRequestShape(1, cfg.IsAnyRes));
                _ = new PruningSession(pruneShape, options, 1);
            }
            catch (Exception e) when (e is InfeasibleBudgetException or NotSupportedException)
            {
                prefill.Add(new PrefillTiming(method.ToString(), budget, null, ids.Length, null, null, null, null, null, e.Message));
                continue;
            }
            var times = new List<double>();
            PruningReport? report = null;
            int promptTokens = 0;
            DeviceCounters? counters = null;
            for (int r = 0; r < o.Warmup + o.Repeats; r++)
            {
                ct.ThrowIfCancellationRequested();
                double ms = 0;
                PruningReport? rep = null;
                int n = 0;
                var c = Count(model, () => (ms, rep, n) = TimePrefill(model, runShape, options, runIds, vision, runProjected, runIds == ids ? timedMap : null, timedTokens));
                if (r >= o.Warmup) { times.Add(ms); report = rep; promptTokens = n; counters = c; }
            }
            SampleDevice();
            double med = Median(times);
            if (method == PruningMethod.None && runIds == ids) reference = med;
            double avg = runIds == ids ? report!.AvgVisualTokensProcessed : runIds.Count(t => t == cfg.ImageTokenIndex);
            int prefix = Array.IndexOf(ids, cfg.ImageTokenIndex), text = ids.Length - prefix - visual;
            double flops = runIds == ids ? report!.FlopsRatio
                : FlopsModel.Ratio(pruneShape, prefix, text + newlines, Enumerable.Repeat((int)avg, shape.Layers).ToArray());
            prefill.Add(new PrefillTiming(runIds == ids ? method.ToString() : "None (input cut)", budget, Math.Round(avg, 2), promptTokens,
                Math.Round(med, 3), Math.Round(times.Min(), 3), Math.Round(med / shape.Layers, 4), Math.Round(flops, 4),
                Math.Round(reference / med, 2), Counters: counters)
            {
                VisualTokensPerLayer = runIds == ids ? report!.VisualTokensPerLayer.ToArray() : null,
            });
        }

        // Decode: greedy steps after an unpruned prefill.
        progress?.Report("decode");
        double perToken;
        DeviceCounters? decodeCounters = null;
        var decodedIds = new int[o.Warmup + o.DecodeTokens];
        string decodeLogitsHash;
        {
            var state = model.BuildSequence(ids, [projectedRows]);
            using var gen = model.StartGeneration(o.DecodeTokens + o.Warmup + 1);
            var logits = gen.Prefill(state, null, ct);
            // Greedy decoding as a request does it: only the next id comes back from a GPU.
            int next = CpuOps.ArgMax(logits);
            for (int i = 0; i < o.Warmup; i++) decodedIds[i] = next = gen.StepGreedy(next);
            sw.Restart();
            for (int i = 0; i < o.DecodeTokens; i++)
            {
                ct.ThrowIfCancellationRequested();
                if (i < o.DecodeTokens - 1) next = gen.StepGreedy(next);
                else decodeCounters = Count(model, () => next = gen.StepGreedy(next));
                decodedIds[o.Warmup + i] = next;
            }
            perToken = sw.Elapsed.TotalMilliseconds / o.DecodeTokens;
            SampleDevice();
            decodeLogitsHash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(gen.Step(next).AsSpan())));
        }

        Release(towerOut);
        double? peakMb = gpuBackend is { } g ? g.Memory.PeakBytes / 1048576.0 : null;
        return new SpeedReport(name, model.Device, weights, shape.Layers, visual, Math.Round(loadSeconds, 2),
            Math.Round(Median(visionMs), 3), Math.Round(Median(projMs), 3), prefill, Math.Round(perToken, 3), o.DecodeTokens,
            peakMb is double p ? Math.Round(p, 1) : null, weightsMb is double w ? Math.Round(w, 1) : null,
            Math.Round(Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0, 1), o.Repeats, o.Warmup,
            deviceUsed is double du ? Math.Round(du, 1) : null, views)
        {
            DecodeCountersPerToken = decodeCounters, DecodeTokenIds = decodedIds, DecodeLogitsSha256 = decodeLogitsHash, CudaGraphs = o.CudaGraphs, VisionCounters = visionCounters, ProjectorCounters = projectorCounters,
            LongAttention = gpuBackend?.LongAttention,
        };
    }

    /// <summary>Runs <paramref name="work"/> and returns what it asked of the device (null on the CPU backend).</summary>
    private static DeviceCounters? Count(ILlavaBackend model, Action work)
    {
        if (model.Counters is null) { work(); return null; }
        var set = new DeviceCounterSet();
        using (DeviceCounterSet.BeginRequest(set)) work();
        return set.Snapshot();
    }

    /// <param name="map">LLaVA-NeXT: the image's token map and its <paramref name="tokens"/> in prompt order (null: LLaVA-1.5, or an input cut short).</param>
    private static (double Ms, PruningReport Report, int PromptTokens) TimePrefill(ILlavaBackend model, ModelShape shape, PruningOptions options,
        int[] ids, VisionFeatures vision, ImageRows projected, AnyResTokenMap? map = null, float[]? tokens = null)
    {
        int prefix = Array.IndexOf(ids, model.Config.ImageTokenIndex);
        var session = new PruningSession(shape, options, prefix) { Newlines = map?.Layout.FeatureRows ?? 0 };
        var image = map is not null
            ? VisualImage.FromAnyRes(map, tokens!, model.Hidden, session.ViewShares, (f, n) => model.Project(f, n))
            : VisualImage.FromVision(vision, VisualTokenMap.Square(model.Grid, !model.Config.DropClsToken), model.Hidden, (f, n) => model.Project(f, n));
        session.SetImage(image, map is null ? vision : null);
        var sw = Stopwatch.StartNew();
        // Policies that choose before the LLM (VisionZip, DivPrune, AutoPrune's first stage) shorten the prompt; their selection is timed too.
        var chosen = LlavaRuntime.SelectBeforeLlm(model, session, image, map is null ? vision : null);
        PositionIds? positions = null;
        if (chosen is not null)
        {
            int full = ids.Length;
            ids = LlavaRuntime.ShortenImageRun(ids, model.Config.ImageTokenIndex, chosen.Rows.Rows);
            positions = chosen.Positions(ids.Length, prefix, PositionIds.Sequential(full));
        }
        int textTokens = ids.Length - (Array.LastIndexOf(ids, model.Config.ImageTokenIndex) + 1);
        SequenceState state;
        int[]? visualIndex = chosen?.VisualIndex ?? map?.Sequence.ToArray();
        try { state = model.BuildSequence(ids, [chosen?.Rows ?? projected], visualIndex is { } v ? [v] : null, positions); }
        finally { chosen?.Rows.Dispose(); }
        using var gen = model.StartGeneration(1);
        gen.Prefill(state, session.NeedsDecoderHook ? session : null, CancellationToken.None);
        double ms = sw.Elapsed.TotalMilliseconds;
        return (ms, session.Finish(state, textTokens), ids.Length);
    }

    /// <summary>BOS, random text ids, the image run, random text ids (never the image token).</summary>
    internal static int[] SyntheticPrompt(Random rng, int vocab, int imageToken, int before, int visual, int after)
    {
        int Text() { int id; do id = rng.Next(3, vocab); while (id == imageToken); return id; }
        var ids = new List<int> { 1 };
        for (int i = 1; i < before; i++) ids.Add(Text());
        ids.AddRange(Enumerable.Repeat(imageToken, visual));
        for (int i = 0; i < after; i++) ids.Add(Text());
        return ids.ToArray();
    }

    private static (ILlavaBackend Model, AnyResAssembler? AnyRes, string Weights, string Name) LoadBackend(SpeedBenchmarkOptions o, IProgress<string>? progress)
    {
        progress?.Report("loading weights");
        var gpu = Compute.DeviceSelector.Open(o.Device, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        if (o.CudaGraphs && gpu is null) throw new NotSupportedException(Compute.Cuda.CudaGraph.NeedsCuda);
        try
        {
            if (o.ModelDirectory is { } dir)
            {
                var config = LlavaConfig.Load(dir);
                using var store = TensorNames.Open(dir);
                var device = gpu;
                gpu = null; // the model owns it now (and disposes it if it cannot start)
                ILlavaBackend m = LlavaModel.Create(store, config, device, o.CudaGraphs);
                try { return (m, config.IsAnyRes ? new AnyResAssembler(store, config.TextConfig.HiddenSize) : null, "checkpoint", Path.GetFullPath(dir)); }
                catch { m.Dispose(); throw; }
            }
            var cfg = LlavaPresets.ByName(o.Architecture);
            CheckMemory(cfg, gpu, o.Architecture);
            var random = new RandomTensorSource(cfg, (ulong)o.Seed);
            var onDevice = gpu;
            gpu = null;
            ILlavaBackend r = LlavaModel.Create(random, cfg, onDevice, o.CudaGraphs);
            return (r, cfg.IsAnyRes ? new AnyResAssembler(random, cfg.TextConfig.HiddenSize) : null, $"random fp16 (seed {o.Seed})", o.Architecture);
        }
        finally
        {
            gpu?.Dispose();
        }
    }

    /// <summary>
    /// Refuses, before generating anything, an architecture that cannot fit: fp16 weights (2 bytes per parameter, as
    /// generated and kept) plus a working margin in RAM on the CPU backend, fp16 on the GPU.
    /// </summary>
    private static void CheckMemory(LlavaConfig cfg, Compute.Cuda.CudaDevice? gpu, string name)
    {
        long parameters = LlavaTensorManifest.ParameterCount(cfg);
        if (gpu is null)
        {
            long need = parameters * 2 + (2L << 30), have = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            if (need > have)
                throw new InvalidOperationException($"{name} has {parameters / 1e9:F2} billion parameters: {parameters * 2 / 1e9:F1} GB as fp16 on the CPU backend (and about 2 GB to run), more than the {have / 1e9:F1} GB available. Use --device cuda, or a smaller architecture (tiny-test).");
        }
        else if (gpu.IsCuda)
        {
            long need = parameters * 2, have = gpu.Accelerator.MemorySize;
            if (need > have * 0.95)
                throw new InvalidOperationException($"{name} needs {need / 1e9:F1} GB of fp16 weights but {gpu.Description} has {have / 1e9:F1} GB.");
        }
    }

    private static double Median(List<double> xs)
    {
        var a = xs.OrderBy(x => x).ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }
}
