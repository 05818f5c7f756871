using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
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

    private static bool HasAddresses(IConfiguration c) =>
        !string.IsNullOrWhiteSpace(c["urls"]) || !string.IsNullOrWhiteSpace(c["http_ports"]) || !string.IsNullOrWhiteSpace(c["https_ports"]) ||
        c.GetSection("Kestrel:Endpoints").GetChildren().Any();
}
