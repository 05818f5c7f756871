using AutoPrune.Extensions.AI;
using AutoPrune.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.SemanticKernel.ChatCompletion;

namespace Microsoft.SemanticKernel;

/// <summary>Registers the AutoPrune <see cref="IChatCompletionService"/> with a kernel builder or a service collection.</summary>
public static class AutoPruneKernelBuilderExtensions
{
    /// <summary>Adds an AutoPrune chat completion service over the model in <paramref name="modelDirectory"/> (loaded on first use).</summary>
    public static IKernelBuilder AddAutoPruneChatCompletion(this IKernelBuilder builder, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddAutoPruneChatCompletion(modelDirectory, configure, serviceId);
        return builder;
    }

    /// <summary>Adds an AutoPrune chat completion service configured from <paramref name="configuration"/> (the <c>"AutoPrune"</c> section).</summary>
    public static IKernelBuilder AddAutoPruneChatCompletion(this IKernelBuilder builder, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddAutoPruneChatCompletion(configuration, configure, serviceId);
        return builder;
    }

    /// <summary>Adds an AutoPrune chat completion service over the model in <paramref name="modelDirectory"/> (loaded on first use,
    /// shared with every other AutoPrune registration on the same configuration, disposed with the container; settings
    /// validated at start); keyed by <paramref name="serviceId"/> when given.</summary>
    public static IServiceCollection AddAutoPruneChatCompletion(this IServiceCollection services, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return Register(services, serviceId, (s, key) => s.AddKeyedAutoPruneChatClient(key, modelDirectory, configure));
    }

    /// <summary>Adds an AutoPrune chat completion service configured from <paramref name="configuration"/> (the <c>"AutoPrune"</c> section).</summary>
    public static IServiceCollection AddAutoPruneChatCompletion(this IServiceCollection services, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        return Register(services, serviceId, (s, key) => s.AddKeyedAutoPruneChatClient(key, configuration, configure));
    }

    /// <summary>
    /// Registers the chat client the service runs on under a key of its own (sharing the model of any other registration on
    /// the same configuration), then the service: plain (and, if none is registered yet, <see cref="AutoPrune.VisionLanguageModel"/>)
    /// or keyed by <paramref name="serviceId"/>.
    /// </summary>
    private static IServiceCollection Register(IServiceCollection services, string? serviceId, Action<IServiceCollection, object> addClient)
    {
        var key = new ClientKey(serviceId);
        addClient(services, key);
        AutoPruneChatCompletionService Create(IServiceProvider sp) => new(sp.GetRequiredKeyedService<IChatClient>(key));
        if (serviceId is null)
        {
            services.AddSingleton<IChatCompletionService>(Create);
            services.TryAddSingleton(sp => sp.GetRequiredKeyedService<AutoPrune.VisionLanguageModel>(key));
        }
        else
            services.AddKeyedSingleton<IChatCompletionService>(serviceId, (sp, _) => Create(sp));
        return services;
    }

    /// <summary>The key of the chat client behind one service registration.</summary>
    private sealed record ClientKey(string? ServiceId)
    {
        private readonly Guid _id = Guid.NewGuid();
    }
}
