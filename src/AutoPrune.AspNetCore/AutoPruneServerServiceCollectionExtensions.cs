using AutoPrune.AspNetCore;
using AutoPrune.Diagnostics;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers what the OpenAI-compatible endpoint needs, over the model of <c>AddAutoPruneChatClient</c>.</summary>
public static class AutoPruneServerServiceCollectionExtensions
{
    /// <summary>
    /// Registers the server's settings (the <c>"AutoPrune:Server"</c> section of <paramref name="configuration"/>, or of the
    /// container's configuration, then <paramref name="configure"/>; validated at start), the model loader and warm-up
    /// behind <c>/ready</c>, the bounded queue, health checks, the remote-image HTTP client, the loopback guard (no API key
    /// ⇒ loopback addresses only, unless <see cref="AutoPruneServerOptions.AllowUnauthenticatedRemoteAccess"/>), the
    /// host's shutdown timeout, and OpenTelemetry metrics (the <c>AutoPrune</c> meter, the server's and ASP.NET Core's)
    /// with a Prometheus exporter. Register the model with <c>AddAutoPruneChatClient</c> as well, then map the endpoints
    /// with <c>MapAutoPruneOpenAI()</c> and <c>MapAutoPruneOperations()</c>.
    /// </summary>
    public static IServiceCollection AddAutoPruneServer(this IServiceCollection services, IConfiguration? configuration = null,
        Action<AutoPruneServerOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<AutoPruneServerOptions>();
        if (configuration is not null) options.Bind(configuration.GetSection(AutoPruneServerOptions.SectionName));
        else options.BindConfiguration(AutoPruneServerOptions.SectionName);
        if (configure is not null) options.Configure(configure);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<AutoPruneServerOptions>, AutoPruneServerOptionsValidator>());
        options.ValidateOnStart();
        services.AddOptions<HostOptions>().Configure<IOptions<AutoPruneServerOptions>>((host, server) =>
            host.ShutdownTimeout = TimeSpan.FromSeconds(server.Value.ShutdownTimeoutSeconds));

        services.TryAddSingleton<ModelHost>();
        services.AddHostedService<ModelLoader>();
        services.AddHostedService<LoopbackGuard>();
        services.AddHttpClient(ImageSource.HttpClientName)
            .ConfigurePrimaryHttpMessageHandler(() =>
            {
                var handler = new SocketsHttpHandler();
                ImageSource.ConfigureHandler(handler);
                return handler;
            })
            .ConfigureHttpClient(ImageSource.ConfigureClient);
        services.AddHealthChecks().AddCheck<ModelReadyHealthCheck>("autoprune-model", tags: [ModelReadyHealthCheck.Tag]);
        services.AddOpenTelemetry().WithMetrics(m => m
            .AddMeter(AutoPruneTelemetry.MeterName, ModelHost.MeterName, "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel")
            .AddPrometheusExporter());
        return services;
    }
}

/// <summary>Runs <see cref="AutoPruneServerOptions.Validate"/> for the options pattern.</summary>
internal sealed class AutoPruneServerOptionsValidator : IValidateOptions<AutoPruneServerOptions>
{
    public ValidateOptionsResult Validate(string? name, AutoPruneServerOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

/// <summary>
/// Readiness: healthy once the model is loaded and warmed, and until shutdown begins. <c>/ready</c> answers from
/// <see cref="State"/> directly; the check is registered (tag "ready") for apps that map their own health endpoints.
/// </summary>
internal sealed class ModelReadyHealthCheck(ModelHost host) : IHealthCheck
{
    public const string Tag = "ready";

    public static (bool Healthy, string Description) State(ModelHost host) =>
        host.IsStopping ? (false, "The server is shutting down.") :
        host.IsReady ? (true, $"Model {host.ModelId} is loaded and warmed.") :
        host.Failure is { } failure ? (false, $"The model could not be loaded: {failure}") :
        (false, "The model is loading.");

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var (healthy, description) = State(host);
        return Task.FromResult(healthy ? HealthCheckResult.Healthy(description) : HealthCheckResult.Unhealthy(description));
    }
}
