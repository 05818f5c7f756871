using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.HttpLogging;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AutoPrune.AspNetCore;

/// <summary>
/// The standalone server (<c>autoprune serve</c>): an ASP.NET Core app whose every setting comes from configuration
/// (appsettings.json, environment variables, command-line options): the model from the <c>"AutoPrune"</c> section,
/// the server from <c>"AutoPrune:Server"</c>, the addresses from <c>urls</c> (default <see cref="DefaultUrl"/>).
/// </summary>
public static class AutoPruneServer
{
    /// <summary>Where the server listens when no address is configured: loopback only.</summary>
    public const string DefaultUrl = "http://127.0.0.1:8080";

    /// <summary>A builder with the usual ASP.NET Core configuration sources over <paramref name="args"/>, the model and the server registered.</summary>
    /// <param name="args">Command-line configuration, e.g. <c>--urls http://0.0.0.0:8080 --AutoPrune:ModelDirectory /models/llava</c>.</param>
    /// <param name="configure">Configuration applied last (wins over every source), e.g. from a command's own options.</param>
    public static WebApplicationBuilder CreateBuilder(string[] args, IEnumerable<KeyValuePair<string, string?>>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        if (configure is not null) builder.Configuration.AddInMemoryCollection(configure);
        AddServices(builder.Services, builder.Configuration);
        if (!HasAddresses(builder.Configuration)) builder.WebHost.UseUrls(DefaultUrl);
        return builder;
    }

    /// <summary>Registers the model (<c>AddAutoPruneChatClient</c> from the <c>"AutoPrune"</c> section), the server and request logging.</summary>
    public static void AddServices(IServiceCollection services, IConfiguration configuration)
    {
        services.AddAutoPruneChatClient(configuration.GetSection(Extensions.AI.AutoPruneChatClientOptions.SectionName));
        services.AddAutoPruneServer(configuration);
        services.AddHttpLogging(o =>
        {
            // One line per request; never headers (Authorization) or bodies (images).
            o.LoggingFields = HttpLoggingFields.RequestMethod | HttpLoggingFields.RequestPath | HttpLoggingFields.ResponseStatusCode | HttpLoggingFields.Duration;
            o.CombineLogs = true;
        });
    }

    /// <summary>The request pipeline and endpoints of the standalone server.</summary>
    public static void Configure(IApplicationBuilder app)
    {
        app.UseExceptionHandler(error => error.Run(context =>
            OpenAIErrors.WriteAsync(context, new OpenAIException(StatusCodes.Status500InternalServerError, "The server failed to answer this request.", code: "server_error"))));
        app.UseHttpLogging();
        app.UseRouting();
        app.UseEndpoints(endpoints =>
        {
            endpoints.MapAutoPruneOpenAI();
            endpoints.MapAutoPruneOperations();
        });
    }

    /// <summary>Builds the app of <see cref="CreateBuilder"/> with its pipeline and endpoints.</summary>
    public static WebApplication Build(WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var app = builder.Build();
        Configure(app);
        return app;
    }

    /// <summary>
    /// What the server runs with, one line per aspect, for a start-up banner (what <c>autoprune serve</c> prints): the
    /// model folder, the device, the pruning that requests naming no method get, the limits, and whether an API key is
    /// required. Read from the settings as they are; call it once the app has started (the addresses are known then).
    /// </summary>
    public static IReadOnlyList<string> Describe(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        var host = app.Services.GetRequiredService<ModelHost>();
        var o = host.Options;
        var client = host.Client.Options;
        var model = client.ModelOptions ?? new ModelOptions();
        // The default exactly as a request without knobs would get it (the same translator the endpoint uses).
        var probe = host.Client.CreateRequest([new ChatMessage(ChatRole.User, "?")]);
        var pruning = probe.Pruning ?? probe.DefaultPruning ?? model.DefaultPruning ?? new Pruning.PruningOptions();
        string method = Pruning.PruningMethods.Name(pruning.Method);
        string accounting = pruning.Accounting.ToString().ToLowerInvariant();
        string defaults = pruning.Method == Pruning.PruningMethod.None
            ? "none: requests that name no method are not pruned"
            : $"{method}, budget {pruning.Budget.ToString(CultureInfo.InvariantCulture)}{(pruning.Budget is > 0 and < 1 ? " of the" : "")} visual tokens ({accounting}): the default for requests that name no method";
        var addresses = app.Services.GetService<IServer>()?.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        static string MiB(long bytes) => bytes % (1024 * 1024) == 0 ? $"{bytes / (1024 * 1024):N0} MiB" : $"{bytes:N0} bytes";
        string Seconds(double? s) => s is double v and > 0 ? $"{v.ToString("0.###", CultureInfo.InvariantCulture)} s" : "none";
        return
        [
            $"model:     {host.ModelId} ({(client.ModelDirectory is { } dir ? Path.GetFullPath(dir) : "(none)")})",
            $"device:    {client.Device}{(host.IsReady ? $" -> {host.Client.Model.Info.Device}" : " (the model loads in the background; /ready says when it can serve)")}",
            $"pruning:   {defaults} (per request: \"autoprune\": {{\"method\": ..., \"budget\": ...}})",
            $"limits:    body {MiB(o.MaxRequestBodyBytes)} ({MiB(o.ConcurrentBodyBytes)} of bodies at once), {o.MaxImagesPerRequest} image(s) of {MiB(o.MaxImageBytes)} and {model.MaxImagePixels:N0} pixels, {o.MaxMessages:N0} messages, max_tokens up to {model.MaxNewTokensLimit:N0} (larger values are clamped to it and to the context)",
            $"queue:     {host.Permits} running + {o.QueueLimit} waiting (429 with Retry-After {o.RetryAfterSeconds} s beyond)",
            $"timeouts:  request {Seconds(o.RequestTimeoutSeconds)}, body {Seconds(o.RequestBodyTimeoutSeconds)}, shutdown {Seconds(o.ShutdownTimeoutSeconds)}",
            host.Keys.Required
                ? $"API key:   required ({host.Keys.Count} key(s); 'Authorization: Bearer KEY')"
                : o.AllowUnauthenticatedRemoteAccess ? "API key:   not required, and remote clients are allowed (AllowUnauthenticatedRemoteAccess)" : "API key:   not required (no key configured): loopback clients only",
            $"listening: {(addresses.Count == 0 ? "(no address)" : string.Join(", ", addresses))}",
        ];
    }

    private static bool HasAddresses(IConfiguration c) =>
        !string.IsNullOrWhiteSpace(c["urls"]) || !string.IsNullOrWhiteSpace(c["http_ports"]) || !string.IsNullOrWhiteSpace(c["https_ports"]) ||
        c.GetSection("Kestrel:Endpoints").GetChildren().Any();
}
