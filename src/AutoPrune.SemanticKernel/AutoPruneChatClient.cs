using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;

namespace AutoPrune.SemanticKernel;

/// <summary>
/// <see cref="IChatClient"/> over a local <see cref="VisionLanguageModel"/>: images arrive as image <see cref="DataContent"/>
/// (bytes or a data URI) or <see cref="UriContent"/> with a <c>file:</c> URI; pruning knobs as
/// <c>ChatOptions.AdditionalProperties["method"]</c> / <c>["budget"]</c>; every response carries its
/// <see cref="Pruning.PruningReport"/> in <c>AdditionalProperties["autoprune.report"]</c>.
/// Thread-safe; the model is loaded on first use when the client was created from options.
/// </summary>
public sealed class AutoPruneChatClient : IChatClient
{
    private readonly Lazy<VisionLanguageModel> _model;
    private readonly bool _ownsModel;
    private readonly AutoPruneChatClientOptions _options;
    private readonly ChatClientMetadata _metadata;
    private int _disposed;

    /// <summary>Wraps a model the caller owns (it is not disposed with the client).</summary>
    public AutoPruneChatClient(VisionLanguageModel model, AutoPruneChatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _options = options?.Clone() ?? new AutoPruneChatClientOptions();
        _options.ModelDirectory ??= model.Info.Directory;
        _model = new Lazy<VisionLanguageModel>(model);
        _ownsModel = false;
        _metadata = CreateMetadata();
        _ = _options.DefaultMethod; // validate eagerly
    }

    /// <summary>Creates a client that loads <see cref="AutoPruneChatClientOptions.ModelDirectory"/> on its first request and disposes the model with itself.</summary>
    public AutoPruneChatClient(AutoPruneChatClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.ModelDirectory))
            throw new ArgumentException("AutoPruneChatClientOptions.ModelDirectory is required (configuration key 'AutoPrune:ModelDirectory').", nameof(options));
        _options = options.Clone();
        _ = _options.DefaultMethod;
        var modelOptions = _options.ToModelOptions();
        var dir = _options.ModelDirectory!;
        _model = new Lazy<VisionLanguageModel>(() => VisionLanguageModel.Load(dir, modelOptions), LazyThreadSafetyMode.ExecutionAndPublication);
        _ownsModel = true;
        _metadata = CreateMetadata();
    }

    /// <summary>Creates a client that loads <paramref name="modelDirectory"/> on its first request.</summary>
    public AutoPruneChatClient(string modelDirectory, Action<AutoPruneChatClientOptions>? configure = null)
        : this(Configure(modelDirectory, configure)) { }

    private static AutoPruneChatClientOptions Configure(string modelDirectory, Action<AutoPruneChatClientOptions>? configure)
    {
        var o = new AutoPruneChatClientOptions { ModelDirectory = modelDirectory };
        configure?.Invoke(o);
        return o;
    }

    private ChatClientMetadata CreateMetadata() =>
        new("autoprune", _options.ModelDirectory is { } d ? new Uri(Path.GetFullPath(d) + Path.DirectorySeparatorChar) : null, _options.ResolveModelId());

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

    /// <summary>Translates a chat into the runtime request this client would run (no model needed).</summary>
    public VisionRequest CreateRequest(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
        => ChatRequestTranslator.ToVisionRequest(messages, options, _options);

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
