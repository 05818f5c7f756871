using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AutoPrune.SemanticKernel;

internal static class AutoPruneRegistration
{
    /// <summary>Options from: the given section (or the container's "AutoPrune" section), the explicit model directory, then the callback.</summary>
    public static AutoPruneChatClientOptions ResolveOptions(IServiceProvider sp, IConfiguration? section, string? modelDirectory,
        Action<AutoPruneChatClientOptions>? configure)
    {
        var options = new AutoPruneChatClientOptions();
        section ??= sp.GetService<IConfiguration>()?.GetSection(AutoPruneChatClientOptions.SectionName);
        section?.Bind(options);
        if (modelDirectory is not null) options.ModelDirectory = modelDirectory;
        configure?.Invoke(options);
        if (options.ModelOptions?.LoggerFactory is null && sp.GetService<ILoggerFactory>() is { } loggers)
            options.ModelOptions = (options.ModelOptions ?? new AutoPrune.ModelOptions()) with { LoggerFactory = loggers };
        if (string.IsNullOrWhiteSpace(options.ModelDirectory))
            throw new InvalidOperationException(
                $"No model directory for the AutoPrune chat client: set '{AutoPruneChatClientOptions.SectionName}:ModelDirectory' in configuration or pass it to the registration.");
        return options;
    }

    public static AutoPruneChatClient CreateClient(IServiceProvider sp, IConfiguration? section, string? modelDirectory,
        Action<AutoPruneChatClientOptions>? configure) => new(ResolveOptions(sp, section, modelDirectory, configure));
}
