using System.Diagnostics.Metrics;
using System.Threading.RateLimiting;
using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AutoPrune.AspNetCore;

/// <summary>
/// The model behind the endpoint (the <see cref="AutoPruneChatClient"/> registered in DI), the bounded queue in front
/// of it, its readiness, and the shutdown deadline of in-flight requests. One per application.
/// </summary>
internal sealed class ModelHost : IDisposable
{
    /// <summary>The meter of the server's own instruments (queue length, running requests, rejections).</summary>
    public const string MeterName = "AutoPrune.Server";

    private readonly IServiceProvider _services;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _hardStop = new();
    private readonly Meter _meter;
    private readonly Counter<long> _rejected;
    private volatile bool _ready;
    private volatile bool _stopping;
    private volatile string? _failure;
    private AutoPruneChatClient? _client;

    public ModelHost(IServiceProvider services, IOptions<AutoPruneServerOptions> options, IHostApplicationLifetime lifetime, ILogger<ModelHost> log, IMeterFactory meters)
    {
        _services = services;
        _log = log;
        Options = options.Value;
        Keys = ApiKeys.Load(Options);
        int permits = Options.MaxConcurrentRequests ?? Client.Options.MaxConcurrentRequests ?? Client.Options.ModelOptions?.MaxConcurrentRequests ?? new ModelOptions().MaxConcurrentRequests;
        Permits = permits;
        Queue = new ConcurrencyLimiter(new ConcurrencyLimiterOptions
        {
            PermitLimit = permits,
            QueueLimit = Options.QueueLimit,
            QueueProcessingOrder = QueueProcessingOrder.OldestFirst,
        });
        ModelId = Client.GetService<ChatClientMetadata>()?.DefaultModelId ?? "autoprune";
        Bodies = new BodyBudget(Options.ConcurrentBodyBytes);
        Images = new ImageSource(Options, services.GetService<IHttpClientFactory>(), Client.Options.ModelOptions?.MaxImagePixels ?? new ModelOptions().MaxImagePixels);
        _meter = meters.Create(MeterName);
        _rejected = _meter.CreateCounter<long>("autoprune.server.rejected", "{request}", "Chat completions refused with 429 because the queue or the concurrent-body budget was full.");
        _meter.CreateObservableGauge("autoprune.server.queued", () => (long)(Queue.GetStatistics()?.CurrentQueuedCount ?? 0), "{request}", "Chat completions waiting for the model.");
        _meter.CreateObservableGauge("autoprune.server.body_bytes", () => Bodies.InUse, "By", "Request body bytes held (admitted against MaxConcurrentBodyBytes).");
        _meter.CreateObservableGauge("autoprune.server.running", () => (long)(Permits - (Queue.GetStatistics()?.CurrentAvailablePermits ?? Permits)), "{request}", "Chat completions running on the model.");
        lifetime.ApplicationStopping.Register(() =>
        {
            _stopping = true;
            // In-flight requests may finish within the shutdown timeout; then they are cancelled.
            _hardStop.CancelAfter(TimeSpan.FromSeconds(Math.Max(0, Options.ShutdownTimeoutSeconds - 0.5)));
        });
    }

    public AutoPruneServerOptions Options { get; }
    public ApiKeys Keys { get; }
    public ConcurrencyLimiter Queue { get; }
    public int Permits { get; }
    public string ModelId { get; }
    public ImageSource Images { get; }

    /// <summary>The bytes of request bodies held at once (<see cref="AutoPruneServerOptions.MaxConcurrentBodyBytes"/>).</summary>
    public BodyBudget Bodies { get; }

    /// <summary>The most tokens one answer can have (the model's <c>MaxNewTokensLimit</c> and its context); set once the model is loaded.</summary>
    public int MaxOutputTokens { get; private set; } = 1;

    /// <summary>When the server started (the models list's <c>created</c>).</summary>
    public long Created { get; } = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>Cancelled when in-flight requests must end (the shutdown timeout has passed).</summary>
    public CancellationToken HardStop => _hardStop.Token;

    public bool IsReady => _ready && !_stopping;
    public bool IsStopping => _stopping;
    public string? Failure => _failure;

    /// <summary>The AutoPrune chat client registered in DI (possibly under middleware).</summary>
    public AutoPruneChatClient Client => _client ??= Resolve(_services);

    private static AutoPruneChatClient Resolve(IServiceProvider services)
    {
        var chat = services.GetService<IChatClient>() ?? throw new InvalidOperationException(
            "No IChatClient is registered: call services.AddAutoPruneChatClient(...) before mapping the AutoPrune OpenAI endpoint.");
        return chat.GetService<AutoPruneChatClient>() ?? throw new InvalidOperationException(
            $"The registered IChatClient ({chat.GetType().Name}) is not an AutoPrune chat client (register one with AddAutoPruneChatClient).");
    }

    public void Rejected() => _rejected.Add(1);

    /// <summary>Loads the model (and runs one short request when warm-up is on); then the server is ready.</summary>
    public async Task LoadAsync(CancellationToken ct)
    {
        try
        {
            var started = System.Diagnostics.Stopwatch.StartNew();
            var model = await Task.Run(() => Client.Model, ct).ConfigureAwait(false);
            int limit = Client.Options.ModelOptions?.MaxNewTokensLimit ?? new ModelOptions().MaxNewTokensLimit;
            MaxOutputTokens = Math.Max(1, Math.Min(limit, model.Info.ContextLength));
            if (Options.Warmup)
            {
                var request = Client.CreateRequest([new ChatMessage(ChatRole.User, "Hello")], new ChatOptions { MaxOutputTokens = 1 });
                await model.AskAsync(request, ct).ConfigureAwait(false);
            }
            _ready = true;
            _log.LogInformation("Model {ModelId} loaded on {Device} and {Warm} in {ElapsedMs:F0} ms; serving with {Permits} concurrent request(s) and a queue of {QueueLimit}",
                ModelId, model.Info.Device, Options.Warmup ? "warmed up" : "not warmed up", started.Elapsed.TotalMilliseconds, Permits, Options.QueueLimit);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            _failure = e.Message;
            _log.LogError(e, "Loading the model for the OpenAI endpoint failed; /ready stays unready");
        }
    }

    public void Dispose()
    {
        Queue.Dispose();
        _hardStop.Dispose();
        _meter.Dispose();
    }
}

/// <summary>Loads and warms the model in the background when the host starts, so <c>/health</c> answers at once and <c>/ready</c> once the model can serve.</summary>
internal sealed class ModelLoader(ModelHost host) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => host.LoadAsync(stoppingToken);
}
