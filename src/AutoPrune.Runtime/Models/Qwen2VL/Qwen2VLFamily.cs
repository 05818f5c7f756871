using System.Diagnostics;
using AutoPrune.Compute;
using AutoPrune.Diagnostics;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Pruning;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL (<c>qwen2_5_vl</c>): its config (<see cref="Qwen2VLConfig"/>), both key layouts (<see cref="Qwen2VLTensorNames"/>),
/// the byte-level BPE tokenizer and ChatML template, the smart-resize image processor, and <see cref="Qwen2VLModel"/>.
/// <c>qwen2_vl</c> and <c>qwen3_vl</c> folders come here too, so their error names them.
/// </summary>
internal sealed class Qwen2VLFamily : IModelFamily
{
    public static Qwen2VLFamily Instance { get; } = new();

    /// <summary>
    /// The pruning Qwen2.5-VL gets when nothing is configured: AutoPrune keeping a quarter of each image's merged tokens
    /// (an image's count follows its size, so a fraction is the natural budget).
    /// </summary>
    public static PruningOptions DefaultPruning { get; } = PruningOptions.Default with { Budget = 0.25 };

    public string Name => "Qwen2.5-VL";
    public IReadOnlyList<string> ModelTypes { get; } = [Qwen2VLConfig.SupportedModelType, "qwen2_vl", "qwen3_vl", "qwen3_vl_moe"];

    /// <summary>The decoder's shape as the pruning policies see it, for an image of <paramref name="visualTokens"/> merged tokens on a grid whose longer side is <paramref name="gridSide"/>.</summary>
    internal static ModelShape ShapeOf(Qwen2VLConfig config, int visualTokens, int gridSide)
    {
        var t = config.Text;
        return new ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize, Math.Max(1, visualTokens), Math.Max(1, gridSide))
        { PositionComponents = Qwen2VLRopeIndex.Components };
    }

    public IReadOnlyList<string> Validate(string folder, ModelOptions options)
    {
        var limits = options.FileLimits ?? new InputFileLimits();
        var problems = new List<string>();
        try
        {
            var config = Qwen2VLConfig.Load(folder, limits);
            _ = Qwen2VLImageProcessor.Load(folder, config.Vision, limits);
            if (options.PromptFormat is not (PromptFormat.Auto or PromptFormat.ChatML))
                problems.Add($"ModelOptions.PromptFormat is {options.PromptFormat}; a Qwen2.5-VL checkpoint takes its ChatML template (PromptFormat.Auto or ChatML).");
        }
        catch (ModelLoadException e) { problems.Add(e.Message); }
        return problems;
    }

    public ModelRuntime Load(string dir, ModelOptions options, ILogger log, IProgress<LoadProgress>? progress)
    {
        var limits = options.FileLimits;
        var sw = Stopwatch.StartNew();
        progress?.Report(new LoadProgress("config", 0));
        var config = Qwen2VLConfig.Load(dir, limits);
        if (options.PromptFormat is not (PromptFormat.Auto or PromptFormat.ChatML))
            throw new ArgumentException($"ModelOptions.PromptFormat is {options.PromptFormat}, but '{dir}' is a Qwen2.5-VL checkpoint, which takes its ChatML template (PromptFormat.Auto or ChatML).", nameof(options));
        progress?.Report(new LoadProgress("tokenizer", 0.02));
        var tokenizer = Qwen2Tokenizer.Load(dir, config, limits);
        var images = Qwen2VLImageProcessor.Load(dir, config.Vision, limits);
        images.MaxPixels = options.MaxImagePixels;
        images.MaxFileBytes = limits.ImageBytes;
        progress?.Report(new LoadProgress("weights", 0.05));
        var gpu = DeviceSelector.Open(options.Device, log);
        Qwen2VLModel model;
        try
        {
            using var store = SafeTensorStore.Open(dir, limits, Qwen2VLTensorNames.ToCanonical);
            Action<double> weights = f => progress?.Report(new LoadProgress("weights", 0.05 + 0.95 * f));
            if (options.CudaGraphs && gpu is null)
                throw new NotSupportedException(Compute.Cuda.CudaGraph.NeedsCuda);
            model = ModelBackends.Create(gpu, DeviceSelector.IsAuto(options.Device), log, backend => new Qwen2VLModel(backend, store, config, weights),
                options.CpuPrecision, options.CudaGraphs);
            gpu = null; // owned by the model now (or disposed by the fallback)
            var unused = store.UnusedTensors().Where(n => !(config.Text.TieWordEmbeddings && n == Qwen2VLTensorNames.LmHead)).ToList();
            if (unused.Count > 0)
            {
                model.Dispose();
                throw new ModelLoadException(
                    $"The checkpoint at '{store.Folder}' has {unused.Count} tensor(s) a Qwen2.5-VL model does not have: {string.Join(", ", unused.Take(10))}{(unused.Count > 10 ? ", ..." : "")} " +
                    "(names shown in the current transformers layout; config.json may not describe these weights).", store.Folder, unused[0]);
            }
        }
        finally
        {
            gpu?.Dispose();
        }
        progress?.Report(new LoadProgress("ready", 1));
        log.LogInformation("Loaded {Dir} (Qwen2.5-VL) on {Device} in {Ms:F0} ms: {Layers} decoder layers, hidden {Hidden}, vision depth {Depth}",
            dir, model.Device, sw.Elapsed.TotalMilliseconds, config.Text.NumHiddenLayers, config.Text.HiddenSize, config.Vision.Depth);
        AutoPruneCalibration? calibration;
        try { calibration = RequestPlanner.LoadCalibration(dir, ShapeOf(config, 1, 1), options, log); }
        catch { model.Dispose(); throw; }
        return new Qwen2VLRuntime(dir, model, tokenizer, images) { Calibration = calibration };
    }
}

/// <summary>
/// A loaded Qwen2.5-VL model as the host runs it: ChatML prompts whose image runs follow each image's resized size (read
/// from its header when the request is planned), the vision tower over all of a request's images, a policy's selection
/// before the LLM on the merged tokens (kept tokens keep their 3-component positions), and the M-RoPE sequence.
/// </summary>
internal sealed class Qwen2VLRuntime : ModelRuntime
{
    private readonly Qwen2VLModel _model;
    private readonly Qwen2Tokenizer _tokenizer;
    private readonly Qwen2VLImageProcessor _images;

    public Qwen2VLRuntime(string dir, Qwen2VLModel model, Qwen2Tokenizer tokenizer, Qwen2VLImageProcessor images)
    {
        _model = model; _tokenizer = tokenizer; _images = images;
        var t = model.Config.Text;
        var pre = images.Config;
        // The most merged tokens one image can give (max_pixels), for the model's description.
        int maxTokens = (int)Math.Min(int.MaxValue, pre.ResolvedMaxPixels / ((long)pre.Factor * pre.Factor));
        int maxSide = model.Vision.Rope.MaxPositions / pre.MergeSize;
        Info = new ModelInfo(dir, model.Device, t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads,
            maxTokens, maxSide, t.VocabSize, t.MaxPositionEmbeddings)
        { ModelType = Qwen2VLConfig.SupportedModelType, TextModelType = "qwen2", PromptFormat = PromptFormat.ChatML };
        Shape = Qwen2VLFamily.ShapeOf(model.Config, maxTokens, maxSide);
    }

    internal Qwen2VLModel Model => _model;
    public override ModelInfo Info { get; }
    public override ModelShape Shape { get; }
    public override string Device => _model.Device;
    public override DeviceCounterSet? Counters => _model.Counters;
    public override ITextTokenizer Tokenizer => _tokenizer;
    public override PruningSignals Signals => PruningSignals.All;
    public override int ContextLength => _model.Config.Text.MaxPositionEmbeddings;
    public override PruningOptions DefaultPruning => Qwen2VLFamily.DefaultPruning;

    public override PromptPlan Plan(VisionRequest request)
    {
        string prompt = Qwen2VLChatTemplate.Render(Qwen2VLChatTemplate.FromTurns(request.Turns));
        // Each image's merged tokens follow from its resized size, known from its header: before any pixel is decoded.
        var grids = new (int Rows, int Cols)[request.Images.Count];
        var tokens = new int[request.Images.Count];
        int patch = _images.Config.PatchSize, merge = _images.Config.MergeSize, maxSide = _model.Vision.Rope.MaxPositions;
        for (int i = 0; i < request.Images.Count; i++)
        {
            var image = request.Images[i];
            var (w, h) = image.Path is not null
                ? ImagePreprocessor.ReadSizeFile(image.Path, _images.MaxPixels, _images.MaxFileBytes)
                : ImagePreprocessor.ReadSize(image.Bytes.Span, _images.MaxPixels, null);
            (int rh, int rw) = ResizedSize(w, h, image);
            int gh = rh / patch, gw = rw / patch;
            if (Math.Max(gh, gw) > maxSide)
                throw new ImageDecodeException($"The image {image.Name} resizes to {rw}x{rh}, a grid of {gw}x{gh} patches; the vision tower's rotary tables cover {maxSide} patches a side (lower max_pixels in preprocessor_config.json).", image.Path);
            grids[i] = (gh / merge, gw / merge);
            tokens[i] = grids[i].Rows * grids[i].Cols;
        }
        var ids = _tokenizer.EncodePrompt(prompt, tokens);
        int prefix = Math.Max(0, Array.IndexOf(ids, _model.Config.ImageTokenId));
        return new PromptPlan(ids, tokens, prefix)
        {
            PruningShape = tokens.Length > 0 ? Qwen2VLFamily.ShapeOf(_model.Config, tokens[0], Math.Max(grids[0].Rows, grids[0].Cols)) : null,
        };
    }

    private (int H, int W) ResizedSize(int width, int height, ImageInput image)
    {
        try { return _images.ResizedSize(width, height); }
        catch (ArgumentException e) { throw new ImageDecodeException($"The image {image.Name}: {e.Message}", image.Path); }
    }

    /// <summary>The images' merged tokens (on the backend) or a policy's selection of them, and the prompt ids they go into.</summary>
    private sealed class Encoded(int[] ids, Qwen2VLImageTokens? tokens, double preprocessMs, double visionMs, int imageToken, double visionFlops)
        : EncodedImages(ids, preprocessMs, visionMs)
    {
        public Qwen2VLImageTokens? Tokens { get; } = tokens;

        /// <summary>What a policy chose before the LLM, and the kept rows' original positions.</summary>
        public (PreLlmSelection Selection, PositionIds Positions)? Selected { get; init; }

        public override double VisionFlops { get; } = visionFlops;

        public override int TextTokens
        {
            get
            {
                int prefix = Math.Max(0, Array.IndexOf(Ids, imageToken));
                return Ids.Length - prefix - Ids.Count(t => t == imageToken);
            }
        }

        public override void Release() => Tokens?.Dispose();
    }

    public override EncodedImages Encode(PreparedRequest p, RequestTelemetry telemetry, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var request = p.Request;
        var session = p.Session;
        double preprocessMs = 0;
        var processed = new Qwen2VLImage[request.Images.Count];
        for (int i = 0; i < processed.Length; i++)
        {
            ct.ThrowIfCancellationRequested();
            var image = request.Images[i];
            using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Preprocess);
            span?.SetTag(AutoPruneTelemetry.Tags.ImageIndex, i);
            var clock = Stopwatch.StartNew();
            processed[i] = image.Path is not null ? _images.PreprocessFile(image.Path) : _images.Preprocess(image.Bytes.Span);
            preprocessMs += clock.Elapsed.TotalMilliseconds;
            if (processed[i].MergedTokens != p.ImageTokens[i])
                throw new ImageDecodeException($"The image {image.Name} is {processed[i].Width}x{processed[i].Height} ({processed[i].MergedTokens} tokens) now, not what its header said when the request was queued ({p.ImageTokens[i]} tokens); it changed in between.", image.Path);
        }
        var ids = p.Ids;
        if (processed.Length == 0)
            return new Encoded(ids, null, preprocessMs, 0, _model.Config.ImageTokenId, 0);
        var policy = session.Policy;
        bool pruned = p.Pruning.Method != PruningMethod.None;
        bool received = pruned && PruningSignalNeeds.Of(p.Pruning).HasFlag(PruningSignals.VisionAttention);
        Qwen2VLImageTokens tokens;
        using (var span = telemetry.Stage(AutoPruneTelemetry.Spans.Vision))
            tokens = _model.EncodeImages(processed, received, ct);
        double visionFlops = VisionFlops(_model.Config, processed.Select(x => x.Grid).ToArray());
        try
        {
            (PreLlmSelection, PositionIds)? selected = null;
            if (pruned && processed.Length == 1)
            {
                var img = processed[0];
                var grid = img.Grid;
                int merge = img.MergeSize;
                var map = VisualTokenMap.Grid(grid.H / merge, grid.W / merge, merge, img.Width, img.Height, img.ResizedWidth, img.ResizedHeight);
                // The merged tokens (and the attention they receive) come to the host only when a policy reads them.
                var visual = VisualImage.FromTokens(map, () => tokens.ToHost(), received ? () => tokens.ReceivedToHost() : null, _model.Hidden, null,
                    _model.Backend.HalfActivations);
                session.SetImage(visual);
                if (policy.SelectBeforeLlm(visual) is { } chosen)
                {
                    // M-RoPE: every kept token keeps its (t, h, w) position, whatever the method's own convention.
                    var kept = chosen with { OriginalPositions = true };
                    var full = Qwen2VLRopeIndex.Compute(ids, [grid], Qwen2VLRopeIndex.TokenIds.Of(_model.Config), merge).Positions;
                    ids = ShortenImageRun(ids, _model.Config.ImageTokenId, kept.Count);
                    var positions = PreLlmRows.OnHost(kept, _model.Hidden).Positions(ids.Length, p.Prefix, full)!;
                    selected = (kept, positions);
                }
            }
            return new Encoded(ids, tokens, preprocessMs, sw.Elapsed.TotalMilliseconds - preprocessMs, _model.Config.ImageTokenId, visionFlops) { Selected = selected };
        }
        catch
        {
            tokens.Dispose();
            throw;
        }
    }

    public override SequenceState BuildSequence(PreparedRequest p, EncodedImages encoded)
    {
        var e = (Encoded)encoded;
        if (e.Selected is not { } s)
            return _model.BuildSequence(e.Ids, e.Tokens);
        var b = _model.Backend;
        Tensor rows;
        using (b.Enter())
        {
            rows = b.Allocate(s.Selection.Projected.Length, TensorKind.Float);
            b.Upload(s.Selection.Projected, rows);
        }
        try { return _model.BuildSequence(e.Ids, rows, s.Selection.VisualIndex, s.Positions); }
        finally { rows.Dispose(); }
    }

    public override IGeneration StartGeneration(int extraCapacity) => _model.StartGeneration(extraCapacity);

    /// <summary>Replaces the (single) run of image tokens with <paramref name="count"/> of them.</summary>
    private static int[] ShortenImageRun(int[] ids, int imageToken, int count)
    {
        int first = Array.IndexOf(ids, imageToken), last = Array.LastIndexOf(ids, imageToken);
        return [.. ids.AsSpan(0, first), .. Enumerable.Repeat(imageToken, count), .. ids.AsSpan(last + 1)];
    }

    /// <summary>
    /// The vision tower's and merger's FLOPs for <paramref name="grids"/>, in the decoder's convention (multiply-adds of
    /// the linear layers, 2·n²·d for attention over each window or image): patch embedding, per block
    /// 4·n·d² + attention + 3·n·d·m (SwiGLU), the merger's two layers.
    /// </summary>
    internal static double VisionFlops(Qwen2VLConfig config, IReadOnlyList<(int T, int H, int W)> grids)
    {
        var v = config.Vision;
        var g = Qwen2VLVisionGeometry.Create(grids, v.SpatialMergeSize, v.WindowMergedTokens);
        double n = g.Patches, d = v.HiddenSize, m = v.IntermediateSize;
        static double Squares(int[] cu)
        {
            double s = 0;
            for (int i = 1; i < cu.Length; i++) s += (double)(cu[i] - cu[i - 1]) * (cu[i] - cu[i - 1]);
            return s;
        }
        double windows = Squares(g.CuWindowSeqlens), frames = Squares(g.CuSeqlens);
        double flops = n * v.PatchValues * d;
        for (int b = 0; b < v.Depth; b++)
            flops += 4 * n * d * d + 2 * (v.IsFullAttention(b) ? frames : windows) * d + 3 * n * d * m;
        double merged = g.MergedTokens, wide = d * v.MergeUnit;
        flops += merged * wide * wide + merged * wide * v.OutHiddenSize;
        return flops;
    }

    public override void Dispose() => _model.Dispose();
}
