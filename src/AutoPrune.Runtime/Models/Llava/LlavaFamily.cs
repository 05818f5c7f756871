using System.Diagnostics;
using AutoPrune.Compute;
using AutoPrune.Diagnostics;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Loading.Text;
using AutoPrune.Pruning;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Models.Llava;

/// <summary>
/// LLaVA-1.5 (<c>llava</c>) and LLaVA-NeXT (<c>llava_next</c>, anyres tiles) with Llama or Mistral text models: the
/// Hugging Face config, the llava-hf tensor names (<see cref="TensorNames"/>), the SentencePiece tokenizer and the Vicuna
/// or Mistral prompt format, CLIP preprocessing (and LLaVA-NeXT's tiling), and <see cref="LlavaModel"/>.
/// </summary>
internal sealed class LlavaFamily : IModelFamily
{
    public static LlavaFamily Instance { get; } = new();

    public string Name => "LLaVA";
    public IReadOnlyList<string> ModelTypes { get; } = [LlavaConfig.SupportedModelType, LlavaConfig.NextModelType];

    /// <summary>The decoder and visual-grid shape a checkpoint's config describes, without loading its weights.</summary>
    internal static ModelShape ShapeOf(LlavaConfig config, int? tokensPerImage = null, int? grid = null)
    {
        var t = config.TextConfig;
        var v = config.VisionConfig;
        bool dropCls = config.VisionFeatureSelectStrategy == "default";
        return new ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize,
            tokensPerImage ?? v.NumPatches + (dropCls ? 0 : 1), grid ?? v.GridSize);
    }

    public IReadOnlyList<string> Validate(string folder, ModelOptions options)
    {
        var problems = new List<string>();
        LlavaConfig config;
        try { config = LlavaConfig.Load(folder, options.FileLimits ?? new InputFileLimits()); }
        catch (ModelLoadException e)
        {
            problems.Add(e.Message);
            return problems;
        }
        if (!config.IsAnyRes && RequestPlanner.CheckPruning(ShapeOf(config), RequestPlanner.Configured(options.DefaultPruning)) is { } pruning)
            problems.Add($"ModelOptions.DefaultPruning: {pruning}");
        return problems;
    }

    public ModelRuntime Load(string dir, ModelOptions options, ILogger log, IProgress<LoadProgress>? progress)
    {
        var limits = options.FileLimits;
        var sw = Stopwatch.StartNew();
        progress?.Report(new LoadProgress("config", 0));
        var config = LlavaConfig.Load(dir, limits);
        if (!config.IsAnyRes && RequestPlanner.CheckPruning(ShapeOf(config), RequestPlanner.Configured(options.DefaultPruning)) is { } pruning)
            throw new ArgumentException($"ModelOptions.DefaultPruning cannot run on '{dir}': {pruning}", nameof(options));
        progress?.Report(new LoadProgress("tokenizer", 0.02));
        var tokenizer = LlavaTokenizer.Load(dir, config.ImageTokenIndex, limits, config.TextConfig.VocabSize);
        var promptFormat = options.PromptFormat == PromptFormat.Auto ? PromptFormats.Detect(dir, config, limits) : options.PromptFormat;
        var images = ImagePreprocessor.Load(dir, limits, config.VisionConfig.ImageSize);
        images.MaxPixels = options.MaxImagePixels;
        var anyResImages = config.IsAnyRes ? AnyResImageProcessor.Load(dir, config, images) : null;
        AnyResPipeline? anyRes = null;
        progress?.Report(new LoadProgress("weights", 0.05));
        var gpu = DeviceSelector.Open(options.Device, log);
        LlavaModel model;
        try
        {
            using var store = TensorNames.Open(dir, limits);
            Action<double> weights = f => progress?.Report(new LoadProgress("weights", 0.05 + 0.95 * f));
            if (options.CudaGraphs && gpu is null)
                throw new NotSupportedException(Compute.Cuda.CudaGraph.NeedsCuda);
            model = ModelBackends.Create(gpu, DeviceSelector.IsAuto(options.Device), log, backend => new LlavaModel(backend, store, config, weights),
                options.CpuPrecision, options.CudaGraphs);
            gpu = null; // owned by the model now (or disposed by the fallback)
            if (anyResImages is not null)
            {
                try { anyRes = new AnyResPipeline(anyResImages, new AnyResAssembler(store, config.TextConfig.HiddenSize)); }
                catch { model.Dispose(); throw; }
            }
            var unexpected = LlavaModel.UnexpectedTensors(store, config);
            if (unexpected.Count > 0)
            {
                model.Dispose();
                throw new ModelLoadException(
                    $"Checkpoint in '{dir}' has {unexpected.Count} tensor(s) the LLaVA model does not use, e.g. {string.Join(", ", unexpected.Take(5))}. " +
                    "It may be a different architecture than config.json says.", dir, unexpected[0]);
            }
        }
        finally
        {
            gpu?.Dispose();
        }
        progress?.Report(new LoadProgress("ready", 1));
        log.LogInformation("Loaded {Dir} on {Device} in {Ms:F0} ms: {Layers} decoder layers, hidden {Hidden}, up to {Visual} visual tokens per image",
            dir, model.Device, sw.Elapsed.TotalMilliseconds, config.TextConfig.NumHiddenLayers, config.TextConfig.HiddenSize, anyRes?.MaxTokenCount ?? model.TokensPerImage);
        AutoPruneCalibration? calibration;
        try { calibration = RequestPlanner.LoadCalibration(dir, ShapeOf(config, model.TokensPerImage, model.Grid), options, log); }
        catch { model.Dispose(); throw; }
        return new LlavaRuntime(dir, model, tokenizer, images, anyRes, promptFormat, options) { Calibration = calibration };
    }
}

/// <summary>A loaded LLaVA model as the host runs it: its prompt format, image path (with a vision cache) and model.</summary>
internal sealed class LlavaRuntime : ModelRuntime
{
    private readonly LlavaModel _model;
    private readonly LlavaTokenizer _tokenizer;
    private readonly ImagePreprocessor _images;
    /// <summary>LLaVA-NeXT's image path (null for LLaVA-1.5).</summary>
    private readonly AnyResPipeline? _anyRes;
    private readonly PromptFormat _promptFormat;
    private readonly LruCache<string, EncodedImage> _visionCache;
    private readonly bool _padToSquare;

    public LlavaRuntime(string dir, LlavaModel model, LlavaTokenizer tokenizer, ImagePreprocessor images, AnyResPipeline? anyRes, PromptFormat promptFormat, ModelOptions options)
    {
        _model = model; _tokenizer = tokenizer; _images = images; _anyRes = anyRes; _promptFormat = promptFormat; _padToSquare = options.PadToSquare;
        var t = model.Config.TextConfig;
        int perImage = anyRes?.MaxTokenCount ?? model.TokensPerImage;
        Info = new ModelInfo(dir, model.Device, t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads,
            perImage, model.Grid, t.VocabSize, t.MaxPositionEmbeddings)
        { ModelType = model.Config.ModelType!, TextModelType = t.ModelType ?? "llama", PromptFormat = promptFormat };
        Shape = LlavaFamily.ShapeOf(model.Config, perImage, model.Grid);
        // A GPU's cached vision features live on the device: the cache and each request using them hold a reference.
        _visionCache = new LruCache<string, EncodedImage>(Math.Max(0, options.VisionCacheSize), onHit: e => e.Retain(), onEvict: e => e.Release());
    }

    internal LlavaModel Model => _model;
    public override ModelInfo Info { get; }
    public override ModelShape Shape { get; }
    public override string Device => _model.Device;
    public override DeviceCounterSet? Counters => _model.Counters;
    public override ITextTokenizer Tokenizer => _tokenizer;
    public override PruningSignals Signals => _model.Signals;
    public override int ContextLength => _model.Config.TextConfig.MaxPositionEmbeddings;
    public override int? SlidingWindow => _model.Config.TextConfig.SlidingWindow;
    public override bool MultiViewImages => _model.Config.IsAnyRes;

    public override PromptPlan Plan(VisionRequest request)
    {
        string prompt = PromptFormats.Format(_promptFormat, request.Turns.Select(t => (t.Role.ToString().ToLowerInvariant(), t.Text)).ToList());
        // LLaVA-NeXT: an image's token count follows from its size, read from its header here, before queueing.
        var layouts = _anyRes is null ? null : request.Images.Select(_anyRes.Layout).ToArray();
        int[] imageTokens = layouts?.Select(l => l.TokenCount).ToArray() ?? request.Images.Select(_ => _model.TokensPerImage).ToArray();
        var ids = _tokenizer.EncodePrompt(prompt, imageTokens);
        int prefix = Math.Max(0, Array.IndexOf(ids, _model.Config.ImageTokenIndex));
        return new PromptPlan(ids, imageTokens, prefix)
        {
            ImagePatches = layouts?.Select(l => l.Patches).ToArray(),
            // LLaVA-NeXT: the policy sees the image's own visual tokens (its patches, without the image_newline rows) and views.
            PruningShape = layouts is { Length: > 0 } ? Shape with { VisualTokens = layouts[0].Patches, ViewPatches = layouts[0].ViewPatches() } : null,
        };
    }

    /// <summary>The projected visual tokens of each image (on a GPU they stay on the device) and the prompt ids they go into.</summary>
    private sealed class Encoded(int[] ids, List<ImageRows> projected, List<int[]>? visualIndices, double preprocessMs, double visionMs, int imageToken)
        : EncodedImages(ids, preprocessMs, visionMs)
    {
        public List<ImageRows> Projected { get; } = projected;
        public List<int[]>? VisualIndices { get; } = visualIndices;

        /// <summary>What a policy chose before the LLM (VisionZip, DivPrune, AutoPrune's selection before layer 0), if anything.</summary>
        public PreLlmRows? Selected { get; init; }

        /// <summary>
        /// The images' vision features, held until the prefill ends (a policy may read them there: AutoPrune's [CLS] term at
        /// layer 0), then released; with no vision cache that frees them.
        /// </summary>
        public IReadOnlyList<EncodedImage> Held { get; init; } = [];

        public override int TextTokens
        {
            get
            {
                int prefix = Math.Max(0, Array.IndexOf(Ids, imageToken));
                return Ids.Length - prefix - Ids.Count(t => t == imageToken);
            }
        }

        public override void Release()
        {
            foreach (var e in Held) e.Release();
        }
    }

    /// <summary>Preprocessing, vision tower and projector for each image (VisionZip selects its tokens here; LLaVA-NeXT assembles its views).</summary>
    public override EncodedImages Encode(PreparedRequest p, RequestTelemetry telemetry, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var model = _model;
        int imageToken = model.Config.ImageTokenIndex;
        var session = p.Session;
        var ids = p.Ids;
        var projected = new List<ImageRows>(p.Request.Images.Count);
        var held = new List<EncodedImage>(p.Request.Images.Count);
        List<int[]>? visualIndices = _anyRes is null ? null : [];
        PreLlmRows? selected = null;
        double preprocessMs = 0;
        try
        {
            for (int i = 0; i < p.Request.Images.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                var image = p.Request.Images[i];
                // The cache is keyed by the image's content (SHA-256 of its bytes, read once and within the file limit), so a
                // file rewritten in place is never answered from it.
                var clock = Stopwatch.StartNew();
                ReadOnlyMemory<byte> bytes = image.Path is not null ? ImagePreprocessor.ReadFile(image.Path, _images.MaxFileBytes) : image.Bytes;
                string key = $"{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes.Span))}|{_padToSquare}";
                // A hit takes a reference to the (GPU's device) features before the cache could drop them.
                EncodedImage? encoded = _visionCache.TryGet(key, out var cached) ? cached : null;
                bool hit = encoded is not null;
                if (!hit) preprocessMs += clock.Elapsed.TotalMilliseconds; // reading and hashing count as preprocessing on a miss; a hit reports 0
                float[]? pixels = hit || _anyRes is not null ? null : Preprocess(image, bytes.Span, i, telemetry, ref preprocessMs);
                using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Vision);
                span?.SetTag(AutoPruneTelemetry.Tags.ImageIndex, i);
                span?.SetTag(AutoPruneTelemetry.Tags.VisionCached, hit);
                if (encoded is null)
                {
                    // LLaVA-NeXT preprocesses its views inside the vision span (the tiles are cut as they are encoded).
                    encoded = _anyRes is not null
                        ? _anyRes.Encode(model, bytes.Span, image.Path, ref preprocessMs, ct)
                        : new EncodedImage([model.VisionForward(pixels, ct)], null);
                    encoded.Retain(); // the cache's own reference
                    if (!_visionCache.Add(key, encoded)) encoded.Release();
                }
                held.Add(encoded);
                if (_anyRes is not null)
                {
                    var (imageRows, map) = _anyRes.Assemble(model, encoded);
                    if (map.Sequence.Count != p.ImageTokens[i])
                        throw new ImageDecodeException($"The image {image.Name} is {map.Layout.ImageWidth}x{map.Layout.ImageHeight} ({map.Sequence.Count} tokens) now, not what its header said when the request was queued ({p.ImageTokens[i]} tokens); it changed in between.");
                    var visualImage = VisualImage.FromAnyRes(map, imageRows, model.Hidden, session.ViewShares, (f, n) => model.Project(f, n));
                    session.SetImage(visualImage);
                    // Policies that choose before the LLM keep some of the patches (and every image_newline row) of the one image.
                    if (p.Request.Images.Count == 1 && SelectBeforeLlm(model, session, visualImage, null) is { } kept)
                    {
                        selected = kept;
                        projected.Add(kept.Rows);
                        visualIndices = [kept.VisualIndex!];
                        ids = ShortenImageRun(ids, imageToken, kept.Rows.Rows);
                        continue;
                    }
                    // Visual indices stay unique across images: each image's patches follow the earlier images' patches.
                    int offset = visualIndices!.Sum(v => v.Count(x => x >= 0));
                    visualIndices!.Add(map.Sequence.Select(x => x >= 0 ? x + offset : x).ToArray());
                    projected.Add(ImageRows.OnHost(imageRows, model.Hidden));
                    continue;
                }
                var vision = encoded.Views[0];
                var square = VisualImage.FromVision(vision, VisualTokenMap.Square(model.Grid, !model.Config.DropClsToken), model.Hidden, (f, n) => model.Project(f, n));
                session.SetImage(square, vision);
                // Policies that choose before the LLM (VisionZip, DivPrune, AutoPrune's selection before layer 0) hand back the rows that enter it.
                if (SelectBeforeLlm(model, session, square, vision) is { } chosen)
                {
                    selected = chosen;
                    projected.Add(chosen.Rows);
                    if (chosen.VisualIndex is not null) visualIndices = [chosen.VisualIndex];
                    ids = ShortenImageRun(ids, imageToken, chosen.Rows.Rows);
                }
                else
                    projected.Add(model.ProjectImage(vision));
            }
        }
        catch
        {
            foreach (var rows in projected) rows.Dispose();
            foreach (var e in held) e.Release();
            throw;
        }
        return new Encoded(ids, projected, visualIndices, preprocessMs, sw.Elapsed.TotalMilliseconds - preprocessMs, imageToken) { Selected = selected, Held = held };
    }

    public override SequenceState BuildSequence(PreparedRequest p, EncodedImages encoded)
    {
        var e = (Encoded)encoded;
        var ids = e.Ids;
        var positions = e.Selected?.Positions(ids.Length, p.Prefix, PositionIds.Sequential(p.Ids.Length));
        try { return _model.BuildSequence(ids, e.Projected, e.VisualIndices, positions); }
        finally { foreach (var rows in e.Projected) rows.Dispose(); }
    }

    public override IGeneration StartGeneration(int extraCapacity) => _model.StartGeneration(extraCapacity);

    /// <summary>
    /// The rows a policy that chooses before the LLM lets in, projected, or null when the policy does not choose there.
    /// Where the vision features are on a GPU and the image is LLaVA-1.5's square grid, the selection runs there (the
    /// device-pruner registry): nothing but the chosen rows' count comes back before the prefill, and only the device knows
    /// their patches.
    /// </summary>
    internal static PreLlmRows? SelectBeforeLlm(ILlavaBackend model, PruningSession session, VisualImage image, VisionFeatures? vision)
    {
        var policy = session.Policy;
        if (vision is not null && image.Map.SquareGrid is not null && Pruning.Device.DevicePruners.SelectBeforeLlm(policy, vision, model) is { } onDevice)
            return onDevice;
        return policy.SelectBeforeLlm(image) is { } chosen ? PreLlmRows.OnHost(chosen, model.Hidden) : null;
    }

    /// <summary>Decodes and resizes a LLaVA-1.5 image (its own span, timed into <paramref name="preprocessMs"/>).</summary>
    private float[] Preprocess(ImageInput image, ReadOnlySpan<byte> bytes, int index, RequestTelemetry telemetry, ref double preprocessMs)
    {
        using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Preprocess);
        span?.SetTag(AutoPruneTelemetry.Tags.ImageIndex, index);
        var clock = Stopwatch.StartNew();
        var pixels = _images.Preprocess(bytes, _padToSquare, image.Path);
        preprocessMs += clock.Elapsed.TotalMilliseconds;
        return pixels;
    }

    /// <summary>Replaces the (single) run of image tokens with <paramref name="count"/> of them.</summary>
    internal static int[] ShortenImageRun(int[] ids, int imageToken, int count)
    {
        int first = Array.IndexOf(ids, imageToken), last = Array.LastIndexOf(ids, imageToken);
        return [.. ids.AsSpan(0, first), .. Enumerable.Repeat(imageToken, count), .. ids.AsSpan(last + 1)];
    }

    public override void ClearCaches() => _visionCache.Clear();

    public override void Dispose()
    {
        _visionCache.Clear();
        _model.Dispose();
    }
}
