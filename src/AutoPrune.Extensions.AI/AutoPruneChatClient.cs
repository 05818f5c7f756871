using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AutoPrune.Extensions.AI;

/// <summary>
/// <see cref="IChatClient"/> over a local <see cref="VisionLanguageModel"/>: images arrive as image <see cref="DataContent"/>
/// (bytes or a data URI) or <see cref="UriContent"/> with a <c>file:</c> URI; a chat without images is a text question;
/// pruning knobs as <c>ChatOptions.AdditionalProperties["method"]</c> / <c>["budget"]</c>; every answer carries its
/// <see cref="Pruning.PruningReport"/> (read it with <see cref="PruningReportExtensions.GetPruningReport(ChatResponse)"/>).
/// Options the model cannot honour are rejected (see <see cref="ChatOptionsSupport"/>). Thread-safe.
/// </summary>
public sealed class AutoPruneChatClient : IChatClient
{
    private readonly Lazy<VisionLanguageModel> _model;
    private readonly bool _ownsModel;
    private readonly AutoPruneChatClientOptions _options;
    private readonly ChatClientMetadata _metadata;
    private readonly ILogger _log;
    private int _disposed;

    /// <summary>Wraps a model the caller owns (it is not disposed with the client).</summary>
    public AutoPruneChatClient(VisionLanguageModel model, AutoPruneChatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _options = options?.Clone() ?? new AutoPruneChatClientOptions();
        _options.ModelDirectory ??= model.Info.Directory;
        _ = _options.DefaultMethod; // an unknown method fails here
        if (_options.Budget is double b) PruningKnobs.CheckBudget(b, nameof(AutoPruneChatClientOptions.Budget));
        _options.Pruning = _options.BasePruning(); // an options file is read (and checked) once, now
        _model = new Lazy<VisionLanguageModel>(model);
        _ownsModel = false;
        _metadata = CreateMetadata(_options);
        _log = Logger(_options);
    }

    /// <summary>
    /// Creates a client that loads <see cref="AutoPruneChatClientOptions.ModelDirectory"/> on its first request and disposes
    /// the model with itself. The settings are checked here (<see cref="AutoPruneChatClientOptions.Validate"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The settings cannot work; the message lists every problem.</exception>
    public AutoPruneChatClient(AutoPruneChatClientOptions options)
        : this(ValidOrThrow(options), static o => LoadLazily(o), ownsModel: true) { }

    /// <summary>Creates a client that loads <paramref name="modelDirectory"/> on its first request.</summary>
    /// <exception cref="ArgumentException">The settings cannot work; the message lists every problem.</exception>
    public AutoPruneChatClient(string modelDirectory, Action<AutoPruneChatClientOptions>? configure = null)
        : this(Configure(modelDirectory, configure)) { }

    /// <summary>A client over a model shared with other clients (dependency injection); the model is not disposed with it.</summary>
    internal AutoPruneChatClient(AutoPruneChatClientOptions options, Lazy<VisionLanguageModel> model)
        : this(options, _ => model, ownsModel: false) { }

    private AutoPruneChatClient(AutoPruneChatClientOptions options, Func<AutoPruneChatClientOptions, Lazy<VisionLanguageModel>> model, bool ownsModel)
    {
        _options = options.Clone();
        _options.Pruning = _options.BasePruning(); // an options file is read (and checked) once, now
        _model = model(_options);
        _ownsModel = ownsModel;
        _metadata = CreateMetadata(_options);
        _log = Logger(_options);
    }

    private static AutoPruneChatClientOptions ValidOrThrow(AutoPruneChatClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var problems = options.Validate();
        if (problems.Count > 0) throw new ArgumentException(string.Join(" ", problems), nameof(options));
        return options;
    }

    private static Lazy<VisionLanguageModel> LoadLazily(AutoPruneChatClientOptions o)
    {
        var dir = o.ModelDirectory!;
        var modelOptions = o.ToModelOptions();
        return new Lazy<VisionLanguageModel>(() => VisionLanguageModel.Load(dir, modelOptions), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    private static AutoPruneChatClientOptions Configure(string modelDirectory, Action<AutoPruneChatClientOptions>? configure)
    {
        var o = new AutoPruneChatClientOptions { ModelDirectory = modelDirectory };
        configure?.Invoke(o);
        return o;
    }

    // No provider URI: the model is local, and a file: URI would make OpenTelemetry middleware report server.port = -1.
    private static ChatClientMetadata CreateMetadata(AutoPruneChatClientOptions o) => new("autoprune", providerUri: null, o.ResolveModelId());

    private static ILogger Logger(AutoPruneChatClientOptions o) =>
        o.ModelOptions?.LoggerFactory?.CreateLogger<AutoPruneChatClient>() ?? (ILogger)NullLogger.Instance;

    /// <summary>The model (loading it now if it has not been loaded yet).</summary>
    public VisionLanguageModel Model
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            return _model.Value;
        }
    }

    /// <summary>The model, loaded on a worker thread the first time.</summary>
    private ValueTask<VisionLanguageModel> GetModelAsync(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        return _model.IsValueCreated ? ValueTask.FromResult(_model.Value) : new ValueTask<VisionLanguageModel>(Task.Run(() => _model.Value, ct));
    }

    /// <summary>The client's settings (a copy).</summary>
    public AutoPruneChatClientOptions Options => _options.Clone();

    /// <summary>
    /// Translates a chat into the runtime request this client would run (no model needed). Options the model cannot
    /// honour throw <see cref="NotSupportedException"/>; ignored ones are logged as warnings.
    /// </summary>
    public VisionRequest CreateRequest(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        foreach (var ignored in ChatOptionsSupport.Check(options, _metadata.DefaultModelId!))
            _log.LogWarning("ChatOptions.{Option} is ignored by the AutoPrune chat client (the local model has no use for it)", ignored);
        return ChatRequestTranslator.ToVisionRequest(messages, options, _options);
    }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = CreateRequest(messages, options);
        var responseId = NewId("chatcmpl");
        var created = DateTimeOffset.UtcNow;
        var model = await GetModelAsync(cancellationToken).ConfigureAwait(false);
        var answer = await model.AskAsync(request, cancellationToken).ConfigureAwait(false);
        var message = new ChatMessage(ChatRole.Assistant, answer.Text)
        {
            MessageId = responseId,
            CreatedAt = created,
            AdditionalProperties = ToProperties(answer),
        };
        return new ChatResponse(message)
        {
            ResponseId = responseId,
            ModelId = _metadata.DefaultModelId,
            CreatedAt = created,
            FinishReason = ToFinishReason(answer.FinishReason),
            Usage = ToUsage(answer),
            AdditionalProperties = ToProperties(answer),
            RawRepresentation = answer,
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = CreateRequest(messages, options);
        var model = await GetModelAsync(cancellationToken).ConfigureAwait(false);
        var responseId = NewId("chatcmpl");
        var created = DateTimeOffset.UtcNow;
        // A linked source, cancelled when the caller stops early (breaks or disposes), so the model stops generating too.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            await foreach (var chunk in model.StreamAsync(request, stop.Token).ConfigureAwait(false))
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (chunk.Answer is { } answer)
                {
                    yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(ToUsage(answer))])
                    {
                        ResponseId = responseId,
                        MessageId = responseId,
                        ModelId = _metadata.DefaultModelId,
                        CreatedAt = created,
                        FinishReason = ToFinishReason(answer.FinishReason),
                        AdditionalProperties = ToProperties(answer),
                        RawRepresentation = answer,
                    };
                }
                else if (chunk.Text.Length > 0)
                {
                    yield return new ChatResponseUpdate(ChatRole.Assistant, chunk.Text)
                    {
                        ResponseId = responseId,
                        MessageId = responseId,
                        ModelId = _metadata.DefaultModelId,
                        CreatedAt = created,
                        RawRepresentation = chunk,
                    };
                }
            }
        }
        finally
        {
            stop.Cancel();
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType == typeof(AutoPruneChatClientOptions)) return _options.Clone();
        if (serviceType == typeof(VisionLanguageModel)) return Model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_ownsModel && _model.IsValueCreated) _model.Value.Dispose();
    }

    internal static ChatFinishReason ToFinishReason(AnswerFinishReason reason) =>
        reason == AnswerFinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    private static UsageDetails ToUsage(VisionAnswer a) => new()
    {
        InputTokenCount = a.PromptTokens,
        OutputTokenCount = a.TokenIds.Count,
        TotalTokenCount = a.PromptTokens + a.TokenIds.Count,
    };

    private static AdditionalPropertiesDictionary ToProperties(VisionAnswer a) => new()
    {
        [PruningKnobs.ReportKey] = a.Report,
        ["autoprune.visual_tokens"] = a.VisualTokens,
        ["autoprune.timings"] = a.Timings,
        ["autoprune.device"] = a.Device,
    };

    private static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";
}
