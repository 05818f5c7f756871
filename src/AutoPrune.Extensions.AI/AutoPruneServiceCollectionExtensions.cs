using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Registers the AutoPrune <see cref="IChatClient"/>. Every registration on the same configuration (model folder and
/// runtime options) shares one model, also with the Semantic Kernel service and with <c>VisionLanguageModel</c> resolved
/// from the container (for an ML.NET stage); models load on first use and are disposed with the container. The settings
/// are validated when the host starts (<c>ValidateOnStart</c>: model folder and config.json, method name, budget
/// feasibility on that model, device availability), or when the client is first resolved.
/// </summary>
public static class AutoPruneServiceCollectionExtensions
{
    /// <summary>
    /// Registers an <see cref="IChatClient"/> over the model in <paramref name="modelDirectory"/>. Other settings come from the
    /// container's <see cref="IConfiguration"/> section <c>"AutoPrune"</c> (if any), then <paramref name="configure"/>.
    /// Returns the <see cref="ChatClientBuilder"/>, so middleware (logging, OpenTelemetry, caching, ...) can be added.
    /// </summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return AutoPruneRegistration.Register(services, null, null, modelDirectory, configure, lifetime);
    }

    /// <summary>Registers an <see cref="IChatClient"/> configured from <paramref name="configuration"/> (the <c>"AutoPrune"</c> section:
    /// <c>ModelDirectory</c>, <c>Device</c>, <c>Method</c>, <c>Budget</c>, ...), then <paramref name="configure"/>.</summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return AutoPruneRegistration.Register(services, null, configuration, null, configure, lifetime);
    }

    /// <summary>Registers an <see cref="IChatClient"/> configured from the container's <see cref="IConfiguration"/> section
    /// <c>"AutoPrune"</c>, then <paramref name="configure"/>.</summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, Action<AutoPruneChatClientOptions>? configure = null,
        ServiceLifetime lifetime = ServiceLifetime.Singleton)
        => AutoPruneRegistration.Register(services, null, null, null, configure, lifetime);

    /// <summary>Keyed variant: the <see cref="IChatClient"/> and its <c>VisionLanguageModel</c> are registered under <paramref name="serviceKey"/>.</summary>
    public static ChatClientBuilder AddKeyedAutoPruneChatClient(this IServiceCollection services, object serviceKey, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentNullException.ThrowIfNull(serviceKey);
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return AutoPruneRegistration.Register(services, serviceKey, null, modelDirectory, configure, lifetime);
    }

    /// <summary>Keyed variant configured from <paramref name="configuration"/>.</summary>
    public static ChatClientBuilder AddKeyedAutoPruneChatClient(this IServiceCollection services, object serviceKey, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentNullException.ThrowIfNull(serviceKey);
        ArgumentNullException.ThrowIfNull(configuration);
        return AutoPruneRegistration.Register(services, serviceKey, configuration, null, configure, lifetime);
    }
}
