using AutoPrune.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the AutoPrune <see cref="IChatClient"/> (one lazily loaded model per registration, disposed with the container).</summary>
public static class AutoPruneServiceCollectionExtensions
{
    /// <summary>
    /// Registers an <see cref="IChatClient"/> over the model in <paramref name="modelDirectory"/>. Other settings come from the
    /// container's <see cref="IConfiguration"/> section <c>"AutoPrune"</c> (if any), then <paramref name="configure"/>.
    /// Returns the <see cref="ChatClientBuilder"/>, so middleware (logging, OpenTelemetry, ...) can be added.
    /// </summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return services.AddChatClient(sp => AutoPruneRegistration.CreateClient(sp, null, modelDirectory, configure), lifetime);
    }

    /// <summary>Registers an <see cref="IChatClient"/> configured from <paramref name="configuration"/> (the <c>"AutoPrune"</c> section:
    /// <c>ModelDirectory</c>, <c>Device</c>, <c>Method</c>, <c>Budget</c>, ...), then <paramref name="configure"/>.</summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddChatClient(sp => AutoPruneRegistration.CreateClient(sp, configuration, null, configure), lifetime);
    }

    /// <summary>Registers an <see cref="IChatClient"/> configured from the container's <see cref="IConfiguration"/> section
    /// <c>"AutoPrune"</c>, then <paramref name="configure"/>.</summary>
    public static ChatClientBuilder AddAutoPruneChatClient(this IServiceCollection services, Action<AutoPruneChatClientOptions>? configure = null,
        ServiceLifetime lifetime = ServiceLifetime.Singleton)
        => services.AddChatClient(sp => AutoPruneRegistration.CreateClient(sp, null, null, configure), lifetime);

    /// <summary>Keyed variant of <see cref="AddAutoPruneChatClient(IServiceCollection, string, Action{AutoPruneChatClientOptions}?, ServiceLifetime)"/>.</summary>
    public static ChatClientBuilder AddKeyedAutoPruneChatClient(this IServiceCollection services, object? serviceKey, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, ServiceLifetime lifetime = ServiceLifetime.Singleton)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return services.AddKeyedChatClient(serviceKey, sp => AutoPruneRegistration.CreateClient(sp, null, modelDirectory, configure), lifetime);
    }
}
