using AutoPrune.AspNetCore;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Microsoft.AspNetCore.Builder;

/// <summary>Maps the OpenAI-compatible endpoints and the operational ones (register them first with <c>AddAutoPruneServer</c>).</summary>
public static class AutoPruneEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps <c>POST {prefix}/chat/completions</c> and <c>GET {prefix}/models</c> (and <c>{prefix}/models/{id}</c>) over the
    /// <c>IChatClient</c> registered with <c>AddAutoPruneChatClient</c>. Requests need an API key when keys are configured.
    /// </summary>
    /// <returns>The route group, for more conventions (CORS, authorization, ...).</returns>
    public static RouteGroupBuilder MapAutoPruneOpenAI(this IEndpointRouteBuilder endpoints, string prefix = "/v1")
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        if (endpoints.ServiceProvider.GetService<ModelHost>() is null)
            throw new InvalidOperationException("Call services.AddAutoPruneServer() (and AddAutoPruneChatClient) before MapAutoPruneOpenAI().");
        var group = endpoints.MapGroup(prefix);
        group.MapPost("/chat/completions", ChatCompletionsEndpoint.HandleAsync).WithName("AutoPruneChatCompletions");
        group.MapGet("/models", (HttpContext context, ModelHost host) => Guarded(context, host, () =>
            Results.Json(new ModelListDto("list", [Model(host)]), OpenAIJson.Writer.ModelListDto)));
        group.MapGet("/models/{id}", (HttpContext context, ModelHost host, string id) => Guarded(context, host, () =>
            id == host.ModelId
                ? Results.Json(Model(host), OpenAIJson.Writer.ModelDto)
                : OpenAIErrors.Result(new OpenAIException(StatusCodes.Status404NotFound, $"The model '{id}' does not exist; this server serves '{host.ModelId}'.", "model", "model_not_found"))));
        return group;
    }

    /// <summary>
    /// Maps <c>/health</c> (the process is alive), <c>/ready</c> (the model is loaded and warmed, and the server is not
    /// shutting down: 503 otherwise) and the Prometheus scraping endpoint (<see cref="AutoPruneServerOptions.MetricsPath"/>,
    /// <c>/metrics</c> by default). They need no API key: probes and scrapers call them.
    /// </summary>
    public static IEndpointRouteBuilder MapAutoPruneOperations(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var host = endpoints.ServiceProvider.GetService<ModelHost>()
            ?? throw new InvalidOperationException("Call services.AddAutoPruneServer() before MapAutoPruneOperations().");
        endpoints.MapHealthChecks("/health", new HealthCheckOptions { Predicate = _ => false });
        // /ready answers from the model's state itself, not through the health check service: that one logs every
        // unhealthy result as an error, and 503 is the normal answer while the model loads (probes poll it every few seconds).
        var readyLog = endpoints.ServiceProvider.GetService<ILoggerFactory>()?.CreateLogger("AutoPrune.AspNetCore.Ready");
        endpoints.MapGet("/ready", (HttpContext context) =>
        {
            var (healthy, why) = ModelReadyHealthCheck.State(host);
            if (!healthy) readyLog?.LogDebug("/ready: 503, {Reason}", why);
            context.Response.Headers.CacheControl = "no-store";
            return Results.Text(healthy ? "Healthy" : $"Unhealthy: {why}", "text/plain", statusCode: healthy ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
        });
        if (host.Options.MetricsPath is { Length: > 0 } metrics) endpoints.MapPrometheusScrapingEndpoint(metrics);
        return endpoints;
    }

    private static ModelDto Model(ModelHost host) => new(host.ModelId, "model", host.Created, "autoprune");

    private static IResult Guarded(HttpContext context, ModelHost host, Func<IResult> result)
    {
        if (host.Keys.Check(context, host.Options.AllowUnauthenticatedRemoteAccess) is { } denied)
        {
            if (denied.Status == StatusCodes.Status401Unauthorized) context.Response.Headers.WWWAuthenticate = "Bearer";
            context.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("AutoPrune.AspNetCore.Models")
                .LogInformation("{Path}: {Status} {Code}", context.Request.Path, denied.Status, denied.Code);
            return OpenAIErrors.Result(denied);
        }
        return result();
    }
}
