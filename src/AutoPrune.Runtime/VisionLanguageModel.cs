using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AutoPrune.Compute;
using AutoPrune.Diagnostics;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Loading.Text;
using AutoPrune.Models.Llava;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AutoPrune;

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
    private readonly InferencePipeline _pipeline;
    private readonly LruCache<string, EncodedImage> _visionCache;
    private readonly string _modelName;
    private readonly int _maxPromptTokens;
    private readonly long _maxPromptChars;
    private long _requests;
    private int _disposed;
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
        var t = model.Config.TextConfig;
        int perImage = anyRes?.MaxTokenCount ?? model.TokensPerImage;
        Info = new ModelInfo(dir, model.Device, t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads,
            perImage, model.Grid, t.VocabSize, t.MaxPositionEmbeddings)
        { ModelType = model.Config.ModelType!, TextModelType = t.ModelType ?? "llama", PromptFormat = promptFormat };
        Shape = ShapeOf(model.Config, perImage, model.Grid);
        _modelName = Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
        // A GPU's cached vision features live on the device: the cache and each request using them hold a reference.
        _visionCache = new LruCache<string, EncodedImage>(Math.Max(0, options.VisionCacheSize), onHit: e => e.Retain(), onEvict: e => e.Release());
        _pipeline = new InferencePipeline(model, tokenizer, images, anyRes, Shape, _visionCache, options.PadToSquare);
    }

    private static Pruning.ModelShape ShapeOf(LlavaConfig config, int tokensPerImage, int grid)
    {
        var t = config.TextConfig;
        return new Pruning.ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize, tokensPerImage, grid);
    }

    /// <summary>The decoder and visual-grid shape a checkpoint's config describes, without loading its weights.</summary>
    private static Pruning.ModelShape ShapeOf(LlavaConfig config)
    {
        var v = config.VisionConfig;
        bool dropCls = config.VisionFeatureSelectStrategy == "default";
        return ShapeOf(config, v.NumPatches + (dropCls ? 0 : 1), v.GridSize);
    }

    /// <summary>
    /// Checks, without loading any weights, what would make <see cref="Load"/> or a request fail because of the
    /// configuration: the model folder and its config.json, the device (a named GPU must be present with its driver and
    /// cuBLAS) and <see cref="ModelOptions.DefaultPruning"/> (its budget must be feasible for its method on this model).
    /// Dependency-injection hosts run it at start (<c>ValidateOnStart</c>).
    /// </summary>
    /// <returns>One message per problem; empty when the configuration is usable.</returns>
    public static IReadOnlyList<string> Validate(string modelDirectory, ModelOptions? options = null)
    {
        options ??= new ModelOptions();
        var problems = new List<string>();
        if (DeviceSelector.Problem(options.Device) is { } device) problems.Add(device);
        if (string.IsNullOrWhiteSpace(modelDirectory))
        {
            problems.Add("A model directory is required.");
            return problems;
        }
        LlavaConfig config;
        try { config = LlavaConfig.Load(Path.GetFullPath(modelDirectory), options.FileLimits ?? new InputFileLimits()); }
        catch (ModelLoadException e)
        {
            problems.Add(e.Message);
            return problems;
        }
        if (!config.IsAnyRes && CheckPruning(ShapeOf(config), options.DefaultPruning) is { } pruning) problems.Add($"ModelOptions.DefaultPruning: {pruning}");
        return problems;
    }

    /// <summary>
    /// Throws what a request with <paramref name="pruning"/> would throw because of it (an infeasible budget, naming the
    /// smallest feasible one), without running a request; adapters call it when they are configured.
    /// </summary>
    /// <exception cref="ArgumentException">The budget cannot be met by the method on this model.</exception>
    public void ValidatePruning(Pruning.PruningOptions pruning)
    {
        ArgumentNullException.ThrowIfNull(pruning);
        if (CheckPruning(Shape, pruning) is { } problem) throw new ArgumentException(problem, nameof(pruning));
    }

    /// <summary>Why <paramref name="pruning"/> cannot run on a model of <paramref name="shape"/> (an infeasible budget), or null.</summary>
    private static string? CheckPruning(Pruning.ModelShape shape, Pruning.PruningOptions? pruning)
    {
        if (pruning is null || pruning.Method == Pruning.PruningMethod.None) return null;
        try
        {
            _ = new Pruning.PruningSession(shape, pruning, 0);
            return null;
        }
        catch (ArgumentException e)
        {
            return e.Message;
        }
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
        if (!config.IsAnyRes && CheckPruning(ShapeOf(config), options.DefaultPruning) is { } pruning)
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
        ILlavaBackend model;
        try
        {
            using var store = SafeTensorStore.Open(dir, limits);
            Action<double> weights = f => progress?.Report(new LoadProgress("weights", 0.05 + 0.95 * f));
            if (options.CudaGraphs && gpu is null)
                throw new NotSupportedException(Compute.Cuda.CudaGraph.NeedsCuda);
            model = Models.ModelBackends.Create<ILlavaBackend>(gpu, DeviceSelector.IsAuto(options.Device), log, backend => new LlavaModel(backend, store, config, weights),
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
        string device = model.Device;
        progress?.Report(new LoadProgress("ready", 1));
        log.LogInformation("Loaded {Dir} on {Device} in {Ms:F0} ms: {Layers} decoder layers, hidden {Hidden}, up to {Visual} visual tokens per image",
            dir, device, sw.Elapsed.TotalMilliseconds, config.TextConfig.NumHiddenLayers, config.TextConfig.HiddenSize, anyRes?.MaxTokenCount ?? model.TokensPerImage);
        var calibrationPath = Path.Combine(dir, Pruning.AutoPruneCalibration.FileName);
        Pruning.AutoPruneCalibration? calibration = null;
        if (File.Exists(calibrationPath))
        {
            try
            {
                calibration = Pruning.AutoPruneCalibration.Load(calibrationPath, options.FileLimits.OptionsBytes);
                var t = config.TextConfig;
                calibration.EnsureMatches(new Pruning.ModelShape(t.NumHiddenLayers, t.NumAttentionHeads, t.HiddenSize, t.IntermediateSize, model.TokensPerImage, model.Grid),
                    $"AutoPrune calibration file '{calibrationPath}'");
            }
            catch (ArgumentException e) { model.Dispose(); throw new ModelLoadException(e.Message, dir); }
            log.LogInformation("AutoPrune calibration from {File}: {Signal} in [{Low}, {High}] over {Samples} questions", calibrationPath, calibration.Signal, calibration.Low, calibration.High, calibration.Samples);
        }
        return new VisionLanguageModel(dir, model, tokenizer, images, anyRes, promptFormat, options, log) { ModelCalibration = calibration };
    }

    /// <summary>Loads on a worker thread.</summary>
    public static Task<VisionLanguageModel> LoadAsync(string modelDirectory, ModelOptions? options = null, IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
        => Task.Run(() => Load(modelDirectory, options, progress), ct);

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
        await foreach (var chunk in RunAsync(prepared, ct).ConfigureAwait(false))
            answer = chunk.Answer ?? answer;
        return (answer!, captured!);
    }

    /// <summary>Answers a request and hands the sequence after the prefill and each layer's cached tokens to <paramref name="inspect"/> (tests).</summary>
    internal async Task<VisionAnswer> AskInspectingAsync(VisionRequest request, Action<Compute.SequenceState, int[]> inspect, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var prepared = Prepare(request) with { OnPrefillState = inspect };
        VisionAnswer? answer = null;
        await foreach (var chunk in RunAsync(prepared, ct).ConfigureAwait(false))
            answer = chunk.Answer ?? answer;
        return answer!;
    }

    /// <summary>The prompt ids a request is run with (image placeholders expanded), for tests.</summary>
    internal int[] PromptIds(VisionRequest request) => Prepare(request).Ids;

    /// <summary>Streams the answer token by token; the last chunk carries the full <see cref="VisionAnswer"/>.</summary>
    public IAsyncEnumerable<AnswerChunk> StreamAsync(VisionRequest request, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        return RunAsync(Prepare(request), ct); // validation errors surface here, before any queueing
    }

    /// <summary>Queues a prepared request for a compute slot and runs it on a worker thread, streaming its chunks.</summary>
    private async IAsyncEnumerable<AnswerChunk> RunAsync(PreparedRequest prepared, [EnumeratorCancellation] CancellationToken ct)
    {
        using var telemetry = new RequestTelemetry(_modelName, Info.Device, prepared);
        long id = Interlocked.Increment(ref _requests);
        _log.LogDebug("Request {Id}: {Images} image(s), {PromptTokens} prompt tokens, method {Method}, at most {MaxNew} new tokens",
            id, prepared.Request.Images.Count, prepared.Ids.Length, Pruning.PruningMethods.Name(prepared.Pruning.Method), prepared.MaxNew);
        // The timeout fires from a dedicated thread, not a pool timer, so a host that blocks the pool cannot delay it.
        using var timeout = _options.RequestTimeout is null ? null : new CancellationTokenSource();
        using var deadline = timeout is null ? null : Compute.DeadlineThread.Shared.CancelAfter(timeout, _options.RequestTimeout!.Value);
        // Cancelled by the caller, the timeout, or a reader that stops early (so no compute slot is held for nobody).
        using var stop = timeout is null ? CancellationTokenSource.CreateLinkedTokenSource(ct, _shutdown.Token) : CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token, _shutdown.Token);
        var token = stop.Token;
        var channel = Channel.CreateUnbounded<AnswerChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var producer = Task.Run(async () =>
        {
            try
            {
                await _gate.WaitAsync(token).ConfigureAwait(false);
                // The slot is released on the compute thread as soon as the work stops, not in a continuation that would first
                // wait for a thread-pool thread (seconds when the host keeps the pool busy).
                await ComputeThread.Run(() =>
                {
                    try { _pipeline.Run(prepared, telemetry, c => channel.Writer.TryWrite(c), token); }
                    finally { _gate.Release(); }
                }).ConfigureAwait(false);
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
        // Records a failure (or a cancellation) once, with a debug line, and lets it go on to the reader.
        void Fail(Exception e)
        {
            bool cancelled = e is OperationCanceledException or TimeoutException || (e is ObjectDisposedException && _shutdown.IsCancellationRequested);
            telemetry.Failed(e, cancelled);
            if (cancelled) _log.LogDebug("Request {Id} was cancelled ({Error})", id, e.GetType().Name);
            else _log.LogDebug(e, "Request {Id} failed", id);
        }
        bool completed = false, failed = false;
        try
        {
            while (true)
            {
                bool more;
                try
                {
                    ThrowIfStopped();
                    try { more = await channel.Reader.WaitToReadAsync(token).ConfigureAwait(false); }
                    catch (OperationCanceledException) when (token.IsCancellationRequested) { ThrowIfStopped(); throw; }
                }
                catch (Exception e)
                {
                    failed = true;
                    Fail(e);
                    throw;
                }
                if (!more) break;
                while (channel.Reader.TryRead(out var chunk))
                {
                    try { ThrowIfStopped(); }
                    catch (Exception e)
                    {
                        failed = true;
                        Fail(e);
                        throw;
                    }
                    if (chunk.Answer is { } answer)
                    {
                        telemetry.Completed(answer);
                        _log.LogDebug("Request {Id}: {Tokens} tokens ({Finish}); {Method} kept {Kept:F1} of {Visual} visual tokens per layer, {Flops:P1} of the prefill FLOPs; " +
                            "vision {VisionMs:F0} ms, prefill {PrefillMs:F0} ms, decode {DecodeMs:F0} ms",
                            id, answer.TokenIds.Count, answer.FinishReason, Pruning.PruningMethods.Name(answer.Report.Method), answer.Report.AvgVisualTokensProcessed,
                            answer.VisualTokens, answer.Report.FlopsRatio, answer.Timings.VisionMs, answer.Timings.PrefillMs, answer.Timings.DecodeMs);
                    }
                    yield return chunk;
                }
            }
            completed = true;
        }
        finally
        {
            if (!producer.IsCompleted) stop.Cancel();
            if (!completed && !failed)
                telemetry.Failed(new OperationCanceledException("The reader stopped before the answer was complete."), cancelled: true);
        }
        await producer.ConfigureAwait(false); // it never throws: its outcome went through the channel
    }

    private TimeoutException TimedOut() => new($"The request did not finish within the {_options.RequestTimeout!.Value.TotalSeconds:0.###} s request timeout.");

    private PreparedRequest Prepare(VisionRequest request)
    {
        // Null parts, shape, length in characters, sampling and pruning values: all before tokenising or reading an image.
        var g = RequestValidator.Validate(request, _options, _maxPromptChars, _maxPromptTokens);
        string prompt = PromptFormats.Format(_promptFormat, request.Turns.Select(t => (t.Role.ToString().ToLowerInvariant(), t.Text)).ToList());
        // LLaVA-NeXT: an image's token count follows from its size, read from its header here, before queueing.
        var layouts = _anyRes is null ? null : request.Images.Select(_anyRes.Layout).ToArray();
        int[] imageTokens = layouts?.Select(l => l.TokenCount).ToArray() ?? request.Images.Select(_ => _model.TokensPerImage).ToArray();
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
        RequestValidator.CheckResponseFormatBudget(g, maxNew);
        // An explicit method that cannot serve this request is an error; a default one falls back to None with a note.
        var (resolved, note) = Pruning.PruningCapabilities.Resolve(request.Pruning, request.DefaultPruning ?? _options.DefaultPruning,
            new Pruning.PruningRequestShape(request.Images.Count, _model.Config.IsAnyRes));
        var pruning = WithCalibration(resolved);
        // LLaVA-NeXT: the policy sees the image's own visual tokens (its patches, without the image_newline rows) and views.
        var pruningShape = layouts is { Length: > 0 } ? Shape with { VisualTokens = layouts[0].Patches, ViewPatches = layouts[0].ViewPatches() } : null;
        if (pruning.Method != Pruning.PruningMethod.None)
            _ = new Pruning.PruningSession(pruningShape ?? Shape, pruning, 0); // an infeasible budget fails here, before queueing
        return new PreparedRequest(request with { Generation = g }, ids, maxNew, pruning, note is null ? [] : [note], imageTokens)
        {
            ImagePatches = layouts?.Select(l => l.Patches).ToArray(),
            PruningShape = pruningShape,
        };
    }

    /// <summary>
    /// AutoPrune's calibration for a request: the one in the options, else the file they name, else the model folder's
    /// <c>autoprune-calibration.json</c> (read at load), else none (the scale-free default).
    /// </summary>
    private Pruning.PruningOptions WithCalibration(Pruning.PruningOptions pruning)
    {
        if (pruning.Method != Pruning.PruningMethod.AutoPrune || pruning.AutoPruneCalibration is not null) return pruning;
        // A named file is read for each request (a small JSON file), so an edited calibration applies at once.
        var calibration = pruning.AutoPruneCalibrationFile is { Length: > 0 } file
            ? Pruning.AutoPruneCalibration.Load(file, _options.FileLimits.OptionsBytes)
            : ModelCalibration;
        return calibration is null ? pruning : pruning with { AutoPruneCalibration = calibration };
    }

    /// <summary>The AutoPrune calibration found in the model folder at load, if any.</summary>
    public Pruning.AutoPruneCalibration? ModelCalibration { get; private init; }

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
        if (held == slots)
        {
            _visionCache.Clear(); // the cached images' device buffers go back before the device does
            _model.Dispose();
        }
        else _log.LogWarning("Disposed while {Count} request(s) were still computing; the model's memory is not released early.", slots - held);
        _gate.Dispose();
        _shutdown.Dispose();
    }
}
