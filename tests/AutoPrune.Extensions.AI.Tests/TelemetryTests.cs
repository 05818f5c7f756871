using System.Diagnostics;
using AutoPrune.Diagnostics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>An OpenTelemetry pipeline in a host sees the documented spans, tags and metrics.</summary>
public sealed class TelemetryTests : IDisposable
{
    // A copy of the fixture under a name of its own, so this test's spans and measurements are told apart from those of
    // tests running at the same time (the model name is on every span and measurement).
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "autoprune-otel-" + Guid.NewGuid().ToString("N")[..8]);

    public TelemetryTests()
    {
        Directory.CreateDirectory(_dir);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(_dir, Path.GetFileName(f)));
    }

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private string ModelName => Path.GetFileName(_dir);

    [Fact]
    public async Task Spans_and_metrics_have_the_documented_names_and_tags()
    {
        var spans = new List<Activity>();
        var metrics = new List<Metric>();
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddOpenTelemetry()
            .WithTracing(t => t.AddSource(AutoPruneTelemetry.SourceName, "meai").AddInMemoryExporter(spans))
            .WithMetrics(m => m.AddMeter(AutoPruneTelemetry.MeterName).AddInMemoryExporter(metrics));
        builder.Services.AddAutoPruneChatClient(_dir, o => { o.Device = "cpu"; o.Method = "fastv"; o.MaxOutputTokens = 4; })
            .UseOpenTelemetry(sourceName: "meai");
        using var host = builder.Build();
        await host.StartAsync();
        var chat = host.Services.GetRequiredService<IChatClient>();
        var image = await File.ReadAllBytesAsync(TestData.Image(TestData.KnownImage));

        var answered = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(image, "image/png"), new TextContent(TestData.KnownQuestion)])]);
        await chat.GetResponseAsync("What shape has three sides?");
        await Assert.ThrowsAnyAsync<Exception>(() => chat.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent("not a png"u8.ToArray(), "image/png"), new TextContent("q")])]));
        await foreach (var _ in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(image, "image/png"), new TextContent("Describe it.")])],
            new ChatOptions { Temperature = 5f, Seed = 3, MaxOutputTokens = 30 }))
            break; // a reader that stops early cancels the request

        host.Services.GetRequiredService<TracerProvider>().ForceFlush();
        host.Services.GetRequiredService<MeterProvider>().ForceFlush();
        await host.StopAsync();

        // One "chat {model}" span per request, with GenAI and AutoPrune tags.
        var requests = spans.Where(s => s.Source.Name == AutoPruneTelemetry.SourceName && s.DisplayName == $"chat {ModelName}").ToList();
        Assert.Equal(4, requests.Count);
        var first = requests.Single(s => s.GetTagItem(AutoPruneTelemetry.Tags.Images) is 1 && s.Status == ActivityStatusCode.Unset);
        Assert.Equal("chat", first.GetTagItem(AutoPruneTelemetry.Tags.OperationName));
        Assert.Equal("autoprune", first.GetTagItem(AutoPruneTelemetry.Tags.ProviderName));
        Assert.Equal(ModelName, first.GetTagItem(AutoPruneTelemetry.Tags.RequestModel));
        Assert.Equal("fastv", first.GetTagItem(AutoPruneTelemetry.Tags.PruningMethod));
        Assert.Equal(128.0, first.GetTagItem(AutoPruneTelemetry.Tags.PruningBudget));
        Assert.Equal(576, first.GetTagItem(AutoPruneTelemetry.Tags.VisualTokens));
        var report = answered.GetPruningReport()!;
        Assert.Equal(report.AvgVisualTokensProcessed, first.GetTagItem(AutoPruneTelemetry.Tags.VisualTokensKept));
        Assert.Equal(report.FlopsRatio, first.GetTagItem(AutoPruneTelemetry.Tags.FlopsRatio));
        Assert.Equal("cpu", first.GetTagItem(AutoPruneTelemetry.Tags.Device));
        Assert.Equal(answered.Usage!.InputTokenCount, (long)(int)first.GetTagItem(AutoPruneTelemetry.Tags.InputTokens)!);
        Assert.Equal(answered.Usage.OutputTokenCount, (long)(int)first.GetTagItem(AutoPruneTelemetry.Tags.OutputTokens)!);
        Assert.Equal(new[] { "stop" }, first.GetTagItem(AutoPruneTelemetry.Tags.ResponseFinishReasons));

        // Its stages are children of it, in order.
        var children = spans.Where(s => s.ParentSpanId == first.SpanId && s.TraceId == first.TraceId).OrderBy(s => s.StartTimeUtc).Select(s => s.DisplayName).ToList();
        Assert.Equal([AutoPruneTelemetry.Spans.Preprocess, AutoPruneTelemetry.Spans.Vision, AutoPruneTelemetry.Spans.Prefill, AutoPruneTelemetry.Spans.Decode], children);

        // The text-only request fell back from the configured fastv to none; the failure and the cancellation are marked.
        var textOnly = requests.Single(s => s.GetTagItem(AutoPruneTelemetry.Tags.Images) is 0);
        Assert.Equal("none", textOnly.GetTagItem(AutoPruneTelemetry.Tags.PruningMethod));
        var failed = requests.Where(s => s.Status == ActivityStatusCode.Error).ToList();
        Assert.Equal(2, failed.Count);
        Assert.Contains(failed, s => (s.GetTagItem(AutoPruneTelemetry.Tags.ErrorType) as string)!.EndsWith("ImageDecodeException", StringComparison.Ordinal));

        // The request span sits under Microsoft.Extensions.AI's own span, which has no server.port (no provider URI).
        var outer = spans.Single(s => s.Source.Name == "meai" && s.SpanId == first.ParentSpanId);
        Assert.Null(outer.GetTagItem("server.port"));
        Assert.Null(outer.GetTagItem("server.address"));

        // Metrics, filtered to this test's model.
        long Sum(string name, Func<MetricPoint, bool>? where = null) => Points(metrics, name).Where(p => where?.Invoke(p) ?? true)
            .Sum(p => p.GetSumLong());
        long Count(string name) => Points(metrics, name).Sum(p => p.GetHistogramCount());
        Assert.Equal(4, Sum(AutoPruneTelemetry.Instruments.Requests));
        Assert.Equal(1, Sum(AutoPruneTelemetry.Instruments.Errors));
        Assert.Equal(1, Sum(AutoPruneTelemetry.Instruments.Cancellations));
        Assert.Equal(2, Count(AutoPruneTelemetry.Instruments.PrefillDuration));
        Assert.Equal(2, Count(AutoPruneTelemetry.Instruments.VisualTokensPerLayer));
        Assert.Equal(2, Count(AutoPruneTelemetry.Instruments.FlopsRatio));
        Assert.InRange(Count(AutoPruneTelemetry.Instruments.TimeToFirstToken), 2, 3); // the cancelled stream may have produced its first token
        Assert.NotEmpty(metrics.Where(m => m.Name == AutoPruneTelemetry.Instruments.TimePerOutputToken).Select(m => m.Unit));
        Assert.Equal("s", metrics.First(m => m.Name == AutoPruneTelemetry.Instruments.PrefillDuration).Unit);
        var methods = Points(metrics, AutoPruneTelemetry.Instruments.FlopsRatio).Select(p => Tag(p, AutoPruneTelemetry.Tags.PruningMethod)).Order().ToList();
        Assert.Equal(["fastv", "none"], methods);
    }

    private IEnumerable<MetricPoint> Points(List<Metric> metrics, string name)
    {
        foreach (var metric in metrics.Where(m => m.Name == name))
            foreach (ref readonly var point in metric.GetMetricPoints())
                if (Tag(point, AutoPruneTelemetry.Tags.RequestModel) == ModelName)
                    yield return point;
    }

    private static string? Tag(MetricPoint point, string key)
    {
        foreach (var tag in point.Tags)
            if (tag.Key == key) return tag.Value?.ToString();
        return null;
    }
}
