using AutoPrune.Compute;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Models;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AutoPrune;

/// <summary>
/// A vision-language model loaded from a Hugging Face folder (LLaVA-1.5, LLaVA-NeXT). Thread-safe: any number of
/// callers may ask at once; at most <see cref="ModelOptions.MaxConcurrentRequests"/> compute at a time.
/// </summary>
/// <remarks>
/// The façade only hosts: the model's family loads the folder (<see cref="ModelFamilies"/>), a
/// <see cref="RequestPlanner"/> prepares each request (its prompt and its pruning plan, solved once), and a
/// <see cref="ModelHost"/> runs it.
/// </remarks>
public sealed class VisionLanguageModel : IDisposable
{
    private readonly ModelRuntime _model;
    private readonly RequestPlanner _planner;
    private readonly ModelHost _host;

    private VisionLanguageModel(ModelRuntime model, ModelOptions options, ILogger log)
    {
        _model = model;
        _planner = new RequestPlanner(model, options);
        _host = new ModelHost(model, options, log);
    }

    public ModelInfo Info => _model.Info;

    /// <summary>Decoder and visual-token shape, as the pruning policies see it.</summary>
    public Pruning.ModelShape Shape => _model.Shape;

    /// <summary>The AutoPrune calibration found in the model folder at load, if any.</summary>
    public Pruning.AutoPruneCalibration? ModelCalibration => _model.Calibration;

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
        var dir = Path.GetFullPath(modelDirectory);
        problems.AddRange(ModelFamilies.For(dir, options.FileLimits ?? new InputFileLimits()).Validate(dir, options));
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
        if (RequestPlanner.CheckPruning(Shape, pruning) is { } problem) throw new ArgumentException(problem, nameof(pruning));
    }

    /// <summary>
    /// Loads a checkpoint folder (config.json, safetensors, tokenizer, preprocessor_config.json): LLaVA (<c>llava</c>) or
    /// LLaVA-NeXT (<c>llava_next</c>), chosen by config.json's <c>model_type</c>.
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
        var model = ModelFamilies.For(dir, limits).Load(dir, options, log, progress);
        try { return new VisionLanguageModel(model, options, log); }
        catch { model.Dispose(); throw; }
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
        ObjectDisposedException.ThrowIf(_host.IsDisposed, this);
        float[]? captured = null;
        var prepared = _planner.Prepare(request) with { OnPrefillLogits = l => captured = l };
        VisionAnswer? answer = null;
        await foreach (var chunk in _host.RunAsync(prepared, ct).ConfigureAwait(false))
            answer = chunk.Answer ?? answer;
        return (answer!, captured!);
    }

    /// <summary>Answers a request and hands the sequence after the prefill and each layer's cached tokens to <paramref name="inspect"/> (tests).</summary>
    internal async Task<VisionAnswer> AskInspectingAsync(VisionRequest request, Action<Compute.SequenceState, int[]> inspect, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_host.IsDisposed, this);
        var prepared = _planner.Prepare(request) with { OnPrefillState = inspect };
        VisionAnswer? answer = null;
        await foreach (var chunk in _host.RunAsync(prepared, ct).ConfigureAwait(false))
            answer = chunk.Answer ?? answer;
        return answer!;
    }

    /// <summary>The prompt ids a request is run with (image placeholders expanded), for tests.</summary>
    internal int[] PromptIds(VisionRequest request) => _planner.Prepare(request).Ids;

    /// <summary>Streams the answer token by token; the last chunk carries the full <see cref="VisionAnswer"/>.</summary>
    public IAsyncEnumerable<AnswerChunk> StreamAsync(VisionRequest request, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_host.IsDisposed, this);
        return _host.RunAsync(_planner.Prepare(request), ct); // validation errors surface here, before any queueing
    }

    /// <summary>
    /// Rejects new requests and ends queued and running ones with an <see cref="ObjectDisposedException"/> (running
    /// ones stop at the next layer or token), waits for them (up to 30 s), then releases the model (on a GPU, its
    /// device memory). A request still running after the wait keeps the model alive rather than having it freed under it.
    /// </summary>
    public void Dispose() => _host.Dispose();
}
