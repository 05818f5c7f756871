using AutoPrune.SemanticKernel;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
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
    /// disposed with the container); keyed by <paramref name="serviceId"/> when given.</summary>
    public static IServiceCollection AddAutoPruneChatCompletion(this IServiceCollection services, string modelDirectory,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return Register(services, serviceId, sp => AutoPruneRegistration.CreateClient(sp, null, modelDirectory, configure));
    }

    /// <summary>Adds an AutoPrune chat completion service configured from <paramref name="configuration"/> (the <c>"AutoPrune"</c> section).</summary>
    public static IServiceCollection AddAutoPruneChatCompletion(this IServiceCollection services, IConfiguration configuration,
        Action<AutoPruneChatClientOptions>? configure = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        return Register(services, serviceId, sp => AutoPruneRegistration.CreateClient(sp, configuration, null, configure));
    }

    private static IServiceCollection Register(IServiceCollection services, string? serviceId, Func<IServiceProvider, AutoPruneChatClient> create)
    {
        if (serviceId is null)
            services.AddSingleton<IChatCompletionService>(sp => new AutoPruneChatCompletionService(create(sp), ownsClient: true));
        else
            services.AddKeyedSingleton<IChatCompletionService>(serviceId, (sp, _) => new AutoPruneChatCompletionService(create(sp), ownsClient: true));
        return services;
    }
}
