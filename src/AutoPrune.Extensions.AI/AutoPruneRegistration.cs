using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AutoPrune.Extensions.AI;

/// <summary>What every AutoPrune chat-client registration does.</summary>
internal static class AutoPruneRegistration
{
    /// <summary>
    /// Registers this registration's settings as named options validated at start, the shared model cache,
    /// <see cref="VisionLanguageModel"/> (plain, or keyed by <paramref name="key"/>; the first plain registration provides
    /// the plain one) and the <see cref="IChatClient"/>.
    /// </summary>
    public static ChatClientBuilder Register(IServiceCollection services, object? key, IConfiguration? section, string? modelDirectory,
        Action<AutoPruneChatClientOptions>? configure, ServiceLifetime lifetime)
    {
        ArgumentNullException.ThrowIfNull(services);
        string name = $"{AutoPruneChatClientOptions.SectionName}:{Guid.NewGuid():N}";
        services.TryAddSingleton<AutoPruneModelCache>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<AutoPruneChatClientOptions>, AutoPruneChatClientOptionsValidator>());
        services.AddOptions<AutoPruneChatClientOptions>(name)
            .Configure<IServiceProvider>((o, sp) => Fill(o, sp, section, modelDirectory, configure));
        StartupCheck.Add(services, name);

        Lazy<VisionLanguageModel> Model(IServiceProvider sp) => sp.GetRequiredService<AutoPruneModelCache>().Get(OptionsOf(sp, name));
        if (key is null) services.TryAddSingleton(sp => Model(sp).Value);
        else services.TryAddKeyedSingleton(key, (sp, _) => Model(sp).Value);

        IChatClient Client(IServiceProvider sp) => new AutoPruneChatClient(OptionsOf(sp, name), Model(sp));
        return key is null ? services.AddChatClient(Client, lifetime) : services.AddKeyedChatClient(key, Client, lifetime);
    }

    /// <summary>This registration's settings; an <see cref="OptionsValidationException"/> lists what is wrong with them.</summary>
    private static AutoPruneChatClientOptions OptionsOf(IServiceProvider sp, string name) =>
        sp.GetRequiredService<IOptionsMonitor<AutoPruneChatClientOptions>>().Get(name);

    /// <summary>Settings from: the given section (or the container's "AutoPrune" section), the explicit model directory, then the callback.</summary>
    private static void Fill(AutoPruneChatClientOptions options, IServiceProvider sp, IConfiguration? section, string? modelDirectory,
        Action<AutoPruneChatClientOptions>? configure)
    {
        section ??= sp.GetService<IConfiguration>()?.GetSection(AutoPruneChatClientOptions.SectionName);
        if (section is not null) ConfigurationBinding.Bind(section, options);
        if (modelDirectory is not null) options.ModelDirectory = modelDirectory;
        configure?.Invoke(options);
        if (options.ModelOptions?.LoggerFactory is null && sp.GetService<ILoggerFactory>() is { } loggers)
            options.ModelOptions = (options.ModelOptions ?? new ModelOptions()) with { LoggerFactory = loggers };
    }
}

/// <summary>
/// Validates every AutoPrune registration of a container at start, as one check: registrations on the same settings
/// (an <c>IChatClient</c> and a Semantic Kernel service, say) fail with the same problems, and each problem is reported
/// once, not once per registration.
/// </summary>
internal sealed class StartupCheck
{
    private readonly List<string> _names = [];

    public static void Add(IServiceCollection services, string name)
    {
        var check = services.FirstOrDefault(d => d.ServiceType == typeof(StartupCheck) && !d.IsKeyedService)?.ImplementationInstance as StartupCheck;
        if (check is null)
        {
            check = new StartupCheck();
            services.AddSingleton(check);
            services.AddOptions<Result>().ValidateOnStart();
            services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<Result>, Validator>());
        }
        check._names.Add(name);
    }

    /// <summary>The options type the check validates (it holds nothing).</summary>
    internal sealed class Result;

    private sealed class Validator(StartupCheck check, IOptionsMonitor<AutoPruneChatClientOptions> registrations) : IValidateOptions<Result>
    {
        public ValidateOptionsResult Validate(string? name, Result options)
        {
            var problems = new List<string>();
            foreach (var registration in check._names)
            {
                try { _ = registrations.Get(registration); }
                catch (OptionsValidationException e) { problems.AddRange(e.Failures); }
            }
            return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems.Distinct(StringComparer.Ordinal));
        }
    }
}
