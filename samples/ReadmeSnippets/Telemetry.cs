using AutoPrune.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace ReadmeSnippets;

internal static class Telemetry
{
    public static void Run(string[] args)
    {
        var builder = Host.CreateApplicationBuilder(args);
        builder.Services.AddOpenTelemetry()
            .WithTracing(t => t.AddSource(AutoPruneTelemetry.SourceName))    // "AutoPrune": a span per request, child spans per stage
            .WithMetrics(m => m.AddMeter(AutoPruneTelemetry.MeterName));     // "AutoPrune": latency, visual tokens, FLOPs ratio, counters
        // ... then your exporter: .UseOtlpExporter(), AddConsoleExporter(), ...
        builder.Services.AddAutoPruneChatClient(builder.Configuration.GetSection("AutoPrune"));
    }
}
