using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Loading.Text;
using AutoPrune.Models.Llava;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AutoPrune;

/// <summary>Progress of a model load: a stage name and the fraction done (0..1).</summary>
public readonly record struct LoadProgress(string Stage, double Fraction);

/// <summary>Facts about a loaded model.</summary>
/// <param name="VisualTokensPerImage">Visual tokens one image takes; for LLaVA-NeXT, where it depends on the image's size, the most it can be.</param>
/// <param name="GridSize">Patches per side of the vision tower's grid (of each view, for LLaVA-NeXT).</param>
public sealed record ModelInfo(string Directory, string Device, int DecoderLayers, int HiddenSize, int Heads, int KvHeads,
    int VisualTokensPerImage, int GridSize, int VocabSize, int ContextLength)
{
    /// <summary>config.json's model_type: "llava" (LLaVA-1.5) or "llava_next" (LLaVA-1.6, anyres).</summary>
    public string ModelType { get; init; } = Loading.LlavaConfig.SupportedModelType;
    /// <summary>The text model's type: "llama" or "mistral".</summary>
    public string TextModelType { get; init; } = "llama";
    /// <summary>The prompt format conversations are written in.</summary>
    public PromptFormat PromptFormat { get; init; } = PromptFormat.Vicuna;
}

/// <summary>
/// A LLaVA-family vision-language model loaded from a Hugging Face folder. Thread-safe: any number of
/// callers may ask at once; at most <see cref="ModelOptions.MaxConcurrentRequests"/> compute at a time.
/// </summary>
public sealed class VisionLanguageModel : IDisposable
{
    private readonly ILlavaBackend _model;
    private readonly LlavaTokenizer _tokenizer;
    private readonly ImagePreprocessor _images;
    /// <summary>LLaVA-NeXT's image path (null for LLaVA-1.5).</summary>
    private readonly AnyResPipeline? _anyRes;
    private readonly PromptFormat _promptFormat;
    private readonly ModelOptions _options;
    private readonly ILogger _log;
    private readonly SemaphoreSlim _gate;
    private readonly LruCache<string, EncodedImage> _visionCache;
    private int _disposed;
    private readonly int _maxPromptTokens;
    private readonly long _maxPromptChars;
    /// <summary>Cancelled by <see cref="Dispose"/>: ends queued and running requests so the model can be released.</summary>
    private readonly CancellationTokenSource _shutdown = new();

    public ModelInfo Info { get; }

    /// <summary>Decoder and visual-grid shape, as the pruning policies see it.</summary>
    public Pruning.ModelShape Shape { get; }

    private VisionLanguageModel(string dir, ILlavaBackend model, LlavaTokenizer tokenizer, ImagePreprocessor images, AnyResPipeline? anyRes,
        PromptFormat promptFormat, ModelOptions options, ILogger log)
    {
        _model = model; _tokenizer = tokenizer; _images = images; _anyRes = anyRes; _promptFormat = promptFormat; _options = options; _log = log;
        _gate = new SemaphoreSlim(Math.Max(1, options.MaxConcurrentRequests));
        _maxPromptTokens = Math.Min(model.Config.TextConfig.MaxPositionEmbeddings, options.MaxPromptTokens ?? int.MaxValue);
        _maxPromptChars = RequestValidator.MaxPromptChars(_maxPromptTokens, tokenizer.LongestTokenChars);
        _visionCache = new LruCache<string, EncodedImage>(Math.Max(0, options.VisionCacheSize));
        var t = model.Config.TextConfig;
        int perImage = anyRes?.MaxTokenCount ?? model.TokensPerImage;
        Info = new ModelInfo(dir, model.Device, t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads,
            perImage, model.Grid, t.VocabSize, t.MaxPositionEmbeddings)
        { ModelType = model.Config.ModelType!, TextModelType = t.ModelType ?? "llama", PromptFormat = promptFormat };
        Shape = new Pruning.ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize, perImage, model.Grid);
    }

    /// <summary>
    /// Loads a LLaVA (<c>llava</c>) or LLaVA-NeXT (<c>llava_next</c>) checkpoint folder (config.json, safetensors,
    /// tokenizer, preprocessor_config.json).
    /// </summary>
    /// <exception cref="ModelLoadException">Anything missing, malformed or inconsistent, named with its file and tensor.</exception>
    public static VisionLanguageModel Load(string modelDirectory, ModelOptions? options = null, IProgress<LoadProgress>? progress = null)
    {
        options ??= new ModelOptions();
        var log = options.LoggerFactory?.CreateLogger<VisionLanguageModel>() ?? (ILogger)NullLogger.Instance;
        if (string.IsNullOrWhiteSpace(modelDirectory))
            throw new ArgumentException("A model directory is required.", nameof(modelDirectory));
        var dir = Path.GetFullPath(modelDirectory);
        if (!Directory.Exists(dir))
            throw new ModelLoadException($"Model directory '{dir}' does not exist.", dir);
        var limits = options.FileLimits ?? throw new ArgumentNullException(nameof(options), "ModelOptions.FileLimits is null.");
        limits.Validate();
        if (options.MaxImagePixels < 1 || options.MaxImagePixels > ImageSizePlan.MaxBufferPixels)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxImagePixels, $"MaxImagePixels must be between 1 and {ImageSizePlan.MaxBufferPixels:N0}.");
        var sw = Stopwatch.StartNew();
        progress?.Report(new LoadProgress("config", 0));
        var config = LlavaConfig.Load(dir, limits);
        progress?.Report(new LoadProgress("tokenizer", 0.02));
        var tokenizer = LlavaTokenizer.Load(dir, config.ImageTokenIndex, limits, config.TextConfig.VocabSize);
        var promptFormat = options.PromptFormat == PromptFormat.Auto ? PromptFormats.Detect(dir, config, limits) : options.PromptFormat;
        var images = ImagePreprocessor.Load(dir, limits, config.VisionConfig.ImageSize);
        images.MaxPixels = options.MaxImagePixels;
        var anyResImages = config.IsAnyRes ? AnyResImageProcessor.Load(dir, config, images) : null;
        AnyResPipeline? anyRes = null;
        progress?.Report(new LoadProgress("weights", 0.05));
        var gpu = OpenDevice(options.Device, log);
        ILlavaBackend model;
        try
        {
            using var store = SafeTensorStore.Open(dir, limits);
            Action<double> weights = f => progress?.Report(new LoadProgress("weights", 0.05 + 0.95 * f));
            bool auto = (options.Device ?? "").Trim().ToLowerInvariant() is "auto" or "";
            model = CreateBackend(store, config, gpu, auto, log, weights);
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
        string device = model.Device;
        progress?.Report(new LoadProgress("ready", 1));
        log.LogInformation("Loaded {Dir} on {Device} in {Ms:F0} ms: {Layers} decoder layers, hidden {Hidden}, up to {Visual} visual tokens per image",
            dir, device, sw.Elapsed.TotalMilliseconds, config.TextConfig.NumHiddenLayers, config.TextConfig.HiddenSize, anyRes?.MaxTokenCount ?? model.TokensPerImage);
        return new VisionLanguageModel(dir, model, tokenizer, images, anyRes, promptFormat, options, log);
    }

    /// <summary>
    /// The CPU model, or the GPU model on <paramref name="gpu"/> (which it then owns). With <paramref name="auto"/>, a GPU
    /// model that fails to start (kernels the driver rejects, cuBLAS that will not initialise) falls back to the CPU
    /// with a warning and <paramref name="gpu"/> is disposed; a device asked for by name fails instead. Checkpoint
    /// errors (<see cref="ModelLoadException"/>) are never masked.
    /// </summary>
    internal static ILlavaBackend CreateBackend(ITensorSource store, LlavaConfig config, Compute.Cuda.CudaDevice? gpu, bool auto, ILogger log,
        Action<double>? progress = null, Func<ITensorSource, LlavaConfig, Compute.Cuda.CudaDevice, Action<double>?, ILlavaBackend>? gpuFactory = null)
    {
        if (gpu is null) return new LlavaModel(store, config, progress);
        gpuFactory ??= static (s, c, d, p) => new Models.Llava.Cuda.CudaLlavaModel(s, c, d, p);
        try
        {
            return gpuFactory(store, config, gpu, progress);
        }
        catch (Exception e) when (auto && e is not ModelLoadException)
        {
            log.LogWarning("Device auto: the GPU backend could not start on {Gpu} ({Error}: {Message}); running on the CPU",
                gpu.Description, e.GetType().Name, e.Message);
            gpu.Dispose();
            return new LlavaModel(store, config, progress);
        }
        catch
        {
            gpu.Dispose();
            throw;
        }
    }

    /// <summary>Loads on a worker thread.</summary>
    public static Task<VisionLanguageModel> LoadAsync(string modelDirectory, ModelOptions? options = null, IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
        => Task.Run(() => Load(modelDirectory, options, progress), ct);

    /// <summary>
    /// The GPU to run on, or null for the CPU backend. "cpu": the CPU. "auto": CUDA device 0 when the driver, a device and
    /// cuBLAS are all present, else the CPU (the log says which and why). "cuda" / "cuda:N": that GPU, or a
    /// <see cref="NotSupportedException"/> naming what is missing. "ilgpu-cpu": the GPU code path on ILGPU's CPU
    /// accelerator with a host GEMM (slow; for checking the GPU path on a machine without one).
    /// </summary>
    internal static Compute.Cuda.CudaDevice? OpenDevice(string device, ILogger log)
    {
        var d = (device ?? "").Trim().ToLowerInvariant();
        switch (d)
        {
            case "cpu":
                return null;
            case "ilgpu-cpu":
                return Compute.Cuda.CudaDevice.CreateForTests();
            case "auto" or "":
            {
                var probe = Compute.Cuda.CudaDevice.Probe(0);
                if (!probe.Usable)
                {
                    log.LogInformation("Device auto: {Probe}; running on the CPU", probe.Describe());
                    return null;
                }
                try
                {
                    var gpu = Compute.Cuda.CudaDevice.Open("cuda:0");
                    log.LogInformation("Device auto: running on {Gpu}", gpu.Description);
                    return gpu;
                }
                catch (Exception e)
                {
                    log.LogWarning("Device auto: {Probe} could not be opened ({Error}); running on the CPU", probe.Describe(), e.Message);
                    return null;
                }
            }
        }
        if (d.StartsWith("cuda", StringComparison.Ordinal))
            return Compute.Cuda.CudaDevice.Open(d); // throws NotSupportedException naming the missing piece
        throw new ArgumentException($"Unknown device '{device}': expected \"cpu\", \"auto\", \"cuda\", \"cuda:N\" or \"ilgpu-cpu\".", nameof(device));
    }

    /// <summary>Answers one question about zero or more images.</summary>
    public Task<VisionAnswer> AskAsync(string question, ImageInput image, GenerationOptions? generation = null, CancellationToken ct = default)
        => AskAsync(VisionRequest.Create(question, image) with { Generation = generation ?? new GenerationOptions() }, ct);

    /// <summary>Answers a request (a question or a conversation with images).</summary>
    public async Task<VisionAnswer> AskAsync(VisionRequest request, CancellationToken ct = default)
    {
        VisionAnswer? answer = null;
        await foreach (var chunk in StreamAsync(request, ct).ConfigureAwait(false))
            answer = chunk.Answer ?? answer;
        return answer!;
    }

    /// <summary>Answers a request and hands back the full last-position prefill logits (for comparing devices).</summary>
    internal async Task<(VisionAnswer Answer, float[] PrefillLogits)> AskWithLogitsAsync(VisionRequest request, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        float[]? captured = null;
        var prepared = Prepare(request) with { OnPrefillLogits = l => captured = l };
        VisionAnswer? answer = null;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct, _shutdown.Token);
        try
        {
            await _gate.WaitAsync(stop.Token).ConfigureAwait(false);
            try { await ComputeThread.Run(() => Run(prepared, c => answer = c.Answer ?? answer, stop.Token)).ConfigureAwait(false); }
            finally { _gate.Release(); }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException && _shutdown.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            throw Disposed();
        }
        return (answer!, captured!);
    }

    /// <summary>The prompt ids a request is run with (image placeholders expanded), for tests.</summary>
    internal int[] PromptIds(VisionRequest request) => Prepare(request).Ids;

    /// <summary>Streams the answer token by token; the last chunk carries the full <see cref="VisionAnswer"/>.</summary>
    public async IAsyncEnumerable<AnswerChunk> StreamAsync(VisionRequest request, [EnumeratorCancellation] CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var prepared = Prepare(request); // validation errors surface here, before any queueing
        using var timeout = _options.RequestTimeout is TimeSpan t ? new CancellationTokenSource(t) : null;
        // Cancelled by the caller, the timeout, or a reader that stops early (so no compute slot is held for nobody).
        using var stop = timeout is null ? CancellationTokenSource.CreateLinkedTokenSource(ct, _shutdown.Token) : CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token, _shutdown.Token);
        var token = stop.Token;
        var channel = Channel.CreateUnbounded<AnswerChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var producer = Task.Run(async () =>
        {
            try
            {
                await _gate.WaitAsync(token).ConfigureAwait(false);
                try { await ComputeThread.Run(() => Run(prepared, c => channel.Writer.TryWrite(c), token)).ConfigureAwait(false); }
                finally { _gate.Release(); }
                channel.Writer.TryComplete();
            }
            catch (OperationCanceledException) when (timeout?.IsCancellationRequested == true && !ct.IsCancellationRequested)
            {
                channel.Writer.TryComplete(TimedOut());
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException && _shutdown.IsCancellationRequested && !ct.IsCancellationRequested)
            {
                channel.Writer.TryComplete(Disposed());
            }
            catch (Exception e) { channel.Writer.TryComplete(e); }
        }, CancellationToken.None);
        // The caller's cancellation, the timeout and a dispose end the enumeration at once, checked before every chunk;
        // the compute thread stops at its next layer or token and then frees its slot.
        void ThrowIfStopped()
        {
            if (ct.IsCancellationRequested) throw new OperationCanceledException("The request was cancelled.", null, ct);
            if (timeout?.IsCancellationRequested == true) throw TimedOut();
            if (_shutdown.IsCancellationRequested) throw Disposed();
        }
        try
        {
            var reader = channel.Reader;
            while (true)
            {
                ThrowIfStopped();
                bool more;
                try { more = await reader.WaitToReadAsync(token).ConfigureAwait(false); }
                catch (OperationCanceledException) when (token.IsCancellationRequested) { ThrowIfStopped(); throw; }
                if (!more) break;
                while (reader.TryRead(out var chunk))
                {
                    ThrowIfStopped();
                    yield return chunk;
                }
            }
        }
        finally
        {
            if (!producer.IsCompleted) stop.Cancel();
        }
        await producer.ConfigureAwait(false);
    }

    private TimeoutException TimedOut() => new($"The request did not finish within the {_options.RequestTimeout!.Value.TotalSeconds:0.###} s request timeout.");

    /// <param name="ImageTokens">Visual tokens of each image in the prompt.</param>
    /// <param name="PruningNote">Why the pruning that runs is not the one the defaults named (LLaVA-NeXT), or null.</param>
    private sealed record Prepared(VisionRequest Request, int[] Ids, int MaxNew, Pruning.PruningOptions Pruning, int[] ImageTokens, string? PruningNote)
    {
        /// <summary>Receives the full last-position prefill logits (device comparisons).</summary>
        public Action<float[]>? OnPrefillLogits { get; init; }
    }

    private Prepared Prepare(VisionRequest request)
    {
        // Null parts, shape, length in characters, sampling and pruning values: all before tokenising or reading an image.
        var g = RequestValidator.Validate(request, _options, _maxPromptChars, _maxPromptTokens);
        string prompt = PromptFormats.Format(_promptFormat, request.Turns.Select(t => (t.Role.ToString().ToLowerInvariant(), t.Text)).ToList());
        // LLaVA-NeXT: an image's token count follows from its size, read from its header here, before queueing.
        int[] imageTokens = request.Images.Select(img => _anyRes?.TokenCount(img) ?? _model.TokensPerImage).ToArray();
        var ids = _tokenizer.EncodePrompt(prompt, imageTokens);
        int context = Info.ContextLength, maxPrompt = _maxPromptTokens;
        if (ids.Length > maxPrompt)
            throw new ArgumentException($"The prompt is {ids.Length} tokens long ({request.Images.Count} image(s), {imageTokens.Sum()} visual tokens, and text); the limit is {maxPrompt}.", nameof(request));
        if (_model.Config.TextConfig.SlidingWindow is int window)
        {
            // Attention over the whole cache equals Mistral's windowed attention while the sequence fits the window.
            if (ids.Length > window)
                throw new ArgumentException($"The prompt is {ids.Length} tokens long but the text model attends within a sliding window of {window} tokens (text_config.sliding_window); prompts longer than the window are not supported.", nameof(request));
            context = Math.Min(context, window);
        }
        int maxNew = Math.Min(g.MaxNewTokens, context - ids.Length);
        if (maxNew < 1)
            throw new ArgumentException($"The prompt ({ids.Length} tokens) leaves no room to answer in the model's context of {context} tokens.", nameof(request));
        var (pruning, note) = Pruning.AnyResPruningGate.Resolve(_model.Config, request.Pruning, _options.DefaultPruning);
        if (pruning.Method != Pruning.PruningMethod.None)
        {
            if (request.Images.Count != 1)
                throw new ArgumentException($"Pruning method {pruning.Method} works on exactly one image per request (got {request.Images.Count}); use method None for several images.", nameof(request));
            _ = new Pruning.PruningSession(Shape, pruning, 0); // an infeasible budget fails here, before queueing
        }
        return new Prepared(request with { Generation = g }, ids, maxNew, pruning, imageTokens, note);
    }

    /// <summary>
    /// Preprocesses an image and runs the vision tower (on every view, for LLaVA-NeXT), or takes both from the small cache of
    /// recent images. The cache is keyed by the image's content (SHA-256 of its bytes, read once and within
    /// <see cref="InputFileLimits.ImageBytes"/>), so a file rewritten in place is never answered from it.
    /// </summary>
    private EncodedImage VisionFor(ImageInput img, ref double preprocessMs, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        ReadOnlyMemory<byte> encoded = img.Path is not null ? ImagePreprocessor.ReadFile(img.Path, _images.MaxFileBytes) : img.Bytes;
        string key = $"{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(encoded.Span))}|{_options.PadToSquare}";
        if (_visionCache.TryGet(key, out var cached)) return cached;
        preprocessMs += sw.Elapsed.TotalMilliseconds;
        EncodedImage vision;
        if (_anyRes is not null)
            vision = _anyRes.Encode(_model, encoded.Span, img.Path, ref preprocessMs, ct);
        else
        {
            sw.Restart();
            var pixels = _images.Preprocess(encoded.Span, _options.PadToSquare, img.Path);
            preprocessMs += sw.Elapsed.TotalMilliseconds;
            vision = new EncodedImage([_model.VisionForward(pixels, ct)], null);
        }
        _visionCache.Add(key, vision);
        return vision;
    }

    /// <summary>Replaces the (single) run of image tokens with <paramref name="count"/> of them.</summary>
    internal static int[] ShortenImageRun(int[] ids, int imageToken, int count)
    {
        int first = Array.IndexOf(ids, imageToken), last = Array.LastIndexOf(ids, imageToken);
        return [.. ids.AsSpan(0, first), .. Enumerable.Repeat(imageToken, count), .. ids.AsSpan(last + 1)];
    }

    private void Run(Prepared p, Action<AnswerChunk> emit, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        var g = p.Request.Generation;
        // Images
        var sw = Stopwatch.StartNew();
        int imageToken = _model.Config.ImageTokenIndex;
        int prefix = Math.Max(0, Array.IndexOf(p.Ids, imageToken));
        // The image run the pruning session sees first is the first image's (for LLaVA-NeXT its size decides how long).
        var shape = p.ImageTokens.Length > 0 ? Shape with { VisualTokens = p.ImageTokens[0] } : Shape;
        var session = new Pruning.PruningSession(shape, p.Pruning, prefix);
        var ids = p.Ids;
        var projected = new List<float[]>(p.Request.Images.Count);
        List<int[]>? visualIndices = _anyRes is null ? null : [];
        double preprocessMs = 0;
        foreach (var img in p.Request.Images)
        {
            ct.ThrowIfCancellationRequested();
            var encoded = VisionFor(img, ref preprocessMs, ct);
            if (_anyRes is not null)
            {
                var (imageRows, map) = _anyRes.Assemble(_model, encoded);
                if (map.Sequence.Count != p.ImageTokens[projected.Count])
                    throw new ImageDecodeException($"The image {img.Name} is {map.Layout.ImageWidth}x{map.Layout.ImageHeight} ({map.Sequence.Count} tokens) now, not what its header said when the request was queued ({p.ImageTokens[projected.Count]} tokens); it changed in between.");
                session.TokenMap ??= map;
                // Visual indices stay unique across images: each image's patches follow the earlier images' patches.
                int offset = visualIndices!.Sum(v => v.Count(i => i >= 0));
                visualIndices.Add(map.Sequence.Select(i => i >= 0 ? i + offset : i).ToArray());
                projected.Add(imageRows);
                continue;
            }
            var vision = encoded.Views[0];
            session.SetVision(vision);
            if (p.Pruning.Method == Pruning.PruningMethod.VisionZip)
            {
                var zip = ((Pruning.VisionZipPolicy)session.Policy).Select(vision);
                projected.Add(_model.Project(zip.Hidden, zip.Count));
                visualIndices = [[.. zip.Dominant, .. Enumerable.Repeat(-2, zip.ContextualTargets.Length)]];
                ids = ShortenImageRun(ids, imageToken, zip.Count);
            }
            else
                projected.Add(_model.Project(vision.Features, vision.Tokens));
        }
        double visionMs = sw.Elapsed.TotalMilliseconds - preprocessMs;
        // Prefill
        sw.Restart();
        var state = SequenceBuilder.Build(_model, ids, projected, visualIndices);
        int textTokens = ids.Length - (Array.LastIndexOf(ids, imageToken) + 1);
        using var generation = _model.StartGeneration(p.MaxNew);
        var logits = generation.Prefill(state, session.NeedsDecoderHook ? session : null, ct);
        NonFiniteLogitsException.ThrowIfAny(logits, "the last prompt position");
        p.OnPrefillLogits?.Invoke((float[])logits.Clone());
        var report = session.Finish(state, p.Request.Images.Count == 0 ? ids.Length : textTokens);
        if (p.PruningNote is not null) report = report with { Notes = [.. report.Notes, p.PruningNote] };
        var top = Sampler.TopK(logits, 5);
        double prefillMs = sw.Elapsed.TotalMilliseconds;
        // Decode
        sw.Restart();
        var sampler = new Sampler(g);
        var decoder = _tokenizer.CreateStreamingDecoder();
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        var finish = AnswerFinishReason.Length;
        var stops = g.StopSequences?.Where(s => !string.IsNullOrEmpty(s)).ToArray() ?? [];
        int? greedyNext = null;
        for (int step = 0; step < p.MaxNew; step++)
        {
            ct.ThrowIfCancellationRequested();
            int next = greedyNext ?? sampler.Next(logits);
            if (next == _tokenizer.EosId) { finish = AnswerFinishReason.Stop; break; }
            tokens.Add(next);
            string piece = decoder.Push(next);
            text.Append(piece);
            string? stop = stops.FirstOrDefault(s => text.ToString().EndsWith(s, StringComparison.Ordinal));
            if (stop is not null)
            {
                int keepLen = text.Length - stop.Length;
                int alreadyEmitted = text.Length - piece.Length;
                if (keepLen > alreadyEmitted) emit(new AnswerChunk(text.ToString(alreadyEmitted, keepLen - alreadyEmitted), next, null));
                text.Length = keepLen;
                finish = AnswerFinishReason.StopSequence;
                break;
            }
            if (piece.Length > 0) emit(new AnswerChunk(piece, next, null));
            if (step + 1 < p.MaxNew)
            {
                // Greedy decoding asks the backend for the next id only (a GPU then returns 4 bytes, not the logits).
                if (sampler.IsGreedy) greedyNext = generation.StepGreedy(next);
                else NonFiniteLogitsException.ThrowIfAny(logits = generation.Step(next), $"decoding step {step + 1}");
            }
        }
        double decodeMs = sw.Elapsed.TotalMilliseconds;
        var answer = new VisionAnswer
        {
            Text = text.ToString(),
            TokenIds = tokens,
            FinishReason = finish,
            PromptTokens = p.Ids.Length,
            VisualTokens = p.ImageTokens.Sum(),
            TopLogits = top,
            Timings = new AnswerTimings(preprocessMs, visionMs, prefillMs, decodeMs, total.Elapsed.TotalMilliseconds),
            Device = Info.Device,
            Report = report,
        };
        emit(new AnswerChunk("", null, answer));
    }

    private ObjectDisposedException Disposed() => new(nameof(VisionLanguageModel), "The model was disposed while this request was queued or running.");

    /// <summary>
    /// Rejects new requests and ends queued and running ones with an <see cref="ObjectDisposedException"/> (running
    /// ones stop at the next layer or token), waits for them (up to 30 s), then releases the model (on a GPU, its
    /// device memory). A request still running after the wait keeps the model alive rather than having it freed under it.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _shutdown.Cancel();
        int slots = Math.Max(1, _options.MaxConcurrentRequests), held = 0;
        var deadline = Stopwatch.StartNew();
        while (held < slots && _gate.Wait(TimeSpan.FromSeconds(Math.Max(0, 30 - deadline.Elapsed.TotalSeconds)))) held++;
        if (held == slots) _model.Dispose();
        else _log.LogWarning("Disposed while {Count} request(s) were still computing; the model's memory is not released early.", slots - held);
        _gate.Dispose();
        _shutdown.Dispose();
    }
}
