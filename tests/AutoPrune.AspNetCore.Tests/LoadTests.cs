using System.Net;
using System.Text.Json.Nodes;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// 64 concurrent requests on a loopback port against a queue smaller than the load: 40 well-formed (streaming and not,
/// with and without images and pruning), 16 cancelled by the client mid-answer, 8 malformed. Bounded by count, with one
/// generous overall timeout only so that a hang fails instead of blocking the suite.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class LoadTests(LibraryFixture library)
{
    private sealed record Ask(string Question, string? Image, string? Method, double? Budget, bool Stream);

    private static readonly Ask[] Asks =
    [
        new(TestData.KnownQuestion, TestData.KnownImage, null, null, false),
        new(TestData.KnownQuestion, TestData.KnownImage, "fastv", 0.5, true),
        new("What color is the circle?", "0003.png", "autoprune", 64, false),
        new("How many objects are there?", "0005.png", "visionzip", 0.25, true),
        new("What shape has three sides?", null, null, null, false),
    ];

    [Fact]
    public async Task Sixty_four_concurrent_requests_with_cancellations_and_malformed_ones_overflow_to_429_never_5xx_and_leave_the_server_ready()
    {
        using var overall = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        // The serial answers: the library's, one request at a time.
        var serial = new Dictionary<Ask, string>();
        foreach (var ask in Asks) serial[ask] = (await library.AskAsync(ask.Question, ask.Image, ask.Method, ask.Budget)).Text;

        await using var server = await LoopbackServer.StartAsync(Api.Settings(
            ("AutoPrune:Server:MaxConcurrentRequests", "2"),
            ("AutoPrune:Server:QueueLimit", "12"),
            ("AutoPrune:Server:RetryAfterSeconds", "2")));
        using var http = server.CreateClient(TimeSpan.FromMinutes(3));
        // Warm the client's connection pool path once, and measure the baseline after the first real request.
        using (var first = await http.SendAsync(Api.Post(Api.Body(TestData.KnownQuestion, TestData.KnownImage).ToJsonString()), overall.Token))
            Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        long baseline = Memory();

        var tasks = new List<Task<(string Kind, int Status, string? Text, Ask? Ask, bool RetryAfter)>>();
        using var start = new ManualResetEventSlim();
        for (int i = 0; i < 64; i++)
        {
            int n = i;
            tasks.Add(Task.Run(async () =>
            {
                start.Wait(overall.Token);
                if (n % 8 == 7) return await Malformed(http, n, overall.Token);
                if (n % 4 == 1) return await Cancelled(http, n, overall.Token);
                return await WellFormed(http, Asks[n % Asks.Length], overall.Token);
            }, overall.Token));
        }
        start.Set();
        var results = await Task.WhenAll(tasks);

        Assert.Equal(8, results.Count(r => r.Kind == "malformed"));
        Assert.Equal(16, results.Count(r => r.Kind == "cancelled" || r.Kind == "cancelled-429" || r.Kind == "cancelled-complete"));
        Assert.All(results, r => Assert.True(r.Status < 500, $"{r.Kind}: {r.Status} {r.Text}"));
        Assert.All(results.Where(r => r.Kind == "malformed"), r => Assert.Equal(400, r.Status));
        var completed = results.Where(r => r.Kind == "answer").ToList();
        var rejected = results.Where(r => r.Status == 429).ToList();
        Assert.All(completed, r => Assert.Equal(serial[r.Ask!], r.Text));
        Assert.NotEmpty(completed);
        Assert.NotEmpty(rejected); // 56 well-formed requests against 2 running + 12 queued
        Assert.All(rejected, r => Assert.True(r.RetryAfter, "a 429 without Retry-After"));
        Assert.Equal(64 - 8, completed.Count + rejected.Count + results.Count(r => r.Kind is "cancelled" or "cancelled-complete"));

        // Every permit is back (cancelled streams freed theirs), the server is ready, and answers as before.
        await WaitAsync(() => server.Host.Queue.GetStatistics()!.CurrentAvailablePermits == server.Host.Permits, overall.Token);
        Assert.Equal(0, server.Host.Queue.GetStatistics()!.CurrentQueuedCount);
        using (var ready = await http.GetAsync("/ready", overall.Token)) Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        using (var again = await http.SendAsync(Api.Post(Api.Body(TestData.KnownQuestion, TestData.KnownImage).ToJsonString()), overall.Token))
        {
            Assert.Equal(HttpStatusCode.OK, again.StatusCode);
            Assert.Equal(serial[Asks[0]], (string?)JsonNode.Parse(await again.Content.ReadAsStringAsync(overall.Token))!["choices"]![0]!["message"]!["content"]);
        }
        long after = Memory();
        Console.WriteLine($"load: {completed.Count} answered, {rejected.Count} got 429, {results.Count(r => r.Kind == "cancelled")} cancelled mid-answer, " +
            $"{results.Count(r => r.Kind == "cancelled-complete")} finished before the cancel, 8 malformed; managed memory {baseline / 1e6:F1} MB before, {after / 1e6:F1} MB after");
        Assert.True(after < baseline + 32_000_000, $"managed memory {baseline:N0} bytes before the load, {after:N0} after");
    }

    private static long Memory()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        return GC.GetTotalMemory(forceFullCollection: true);
    }

    private static async Task WaitAsync(Func<bool> condition, CancellationToken ct)
    {
        while (!condition()) await Task.Delay(20, ct);
    }

    private static async Task<(string, int, string?, Ask?, bool)> WellFormed(HttpClient http, Ask ask, CancellationToken ct)
    {
        using var response = await http.SendAsync(Api.Post(Api.Body(ask.Question, ask.Image, ask.Stream, ask.Method, ask.Budget).ToJsonString()), ct);
        string body = await response.Content.ReadAsStringAsync(ct);
        bool retryAfter = response.Headers.RetryAfter is not null;
        if (response.StatusCode != HttpStatusCode.OK) return ("error", (int)response.StatusCode, body, ask, retryAfter);
        string? text = ask.Stream ? Api.ReadStream(body).Text : (string?)JsonNode.Parse(body)!["choices"]![0]!["message"]!["content"];
        return ("answer", 200, text, ask, retryAfter);
    }

    /// <summary>A streaming request the client abandons after its first event (or a 429 before it ever started).</summary>
    private static async Task<(string, int, string?, Ask?, bool)> Cancelled(HttpClient http, int n, CancellationToken ct)
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var body = Api.Body(TestData.KnownQuestion, TestData.KnownImage, stream: true, method: n % 3 == 0 ? "fastv" : null, maxTokens: 64);
        try
        {
            using var response = await http.SendAsync(Api.Post(body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            if (response.StatusCode == HttpStatusCode.TooManyRequests) return ("cancelled-429", 429, null, null, response.Headers.RetryAfter is not null);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using var stream = await response.Content.ReadAsStreamAsync(cancel.Token);
            using var reader = new StreamReader(stream);
            var line = await reader.ReadLineAsync(cancel.Token);
            Assert.StartsWith("data: ", line);
            cancel.Cancel();
            string rest = await reader.ReadToEndAsync(cancel.Token); // throws once the cancel lands
            return rest.Contains("[DONE]", StringComparison.Ordinal) ? ("cancelled-complete", 200, null, null, false) : ("cancelled", 0, null, null, false);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            return ("cancelled", 0, null, null, false);
        }
        catch (IOException) when (cancel.IsCancellationRequested)
        {
            return ("cancelled", 0, null, null, false);
        }
    }

    private static async Task<(string, int, string?, Ask?, bool)> Malformed(HttpClient http, int n, CancellationToken ct)
    {
        string body = (n / 8) switch
        {
            0 => "{\"messages\": [",
            1 => "{\"messages\": \"hi\"}",
            2 => "{}",
            3 => Api.Body("hi", TestData.KnownImage).ToJsonString().Replace("base64,", "base64,%%%", StringComparison.Ordinal),
            4 => Api.Body("hi", TestData.KnownImage, method: "nonsense").ToJsonString(),
            5 => Api.Body("hi", TestData.KnownImage, method: "sparsevlm", budget: 4).ToJsonString(),
            6 => Api.Body("hi").ToJsonString().Replace("\"max_tokens\":8", "\"max_tokens\":\"many\"", StringComparison.Ordinal),
            _ => "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_audio\"}]}]}",
        };
        using var response = await http.SendAsync(Api.Post(body), ct);
        return ("malformed", (int)response.StatusCode, await response.Content.ReadAsStringAsync(ct), null, false);
    }
}
