using System.Net;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>/health, /ready, /metrics, the loopback rule without a key, remote images on an allow-list, graceful shutdown.</summary>
[Collection(ServerCollection.Name)]
public sealed class OperationsTests(LibraryFixture library)
{
    [Fact]
    public async Task Health_ready_and_Prometheus_metrics_from_the_AutoPrune_meter()
    {
        await using var server = new InProcessServer();
        using var client = server.CreateClient();
        using (var health = await client.GetAsync("/health")) Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        await InProcessServer.WaitReadyAsync(client);
        using (var answer = await client.SendAsync(Api.Post(Api.Body(TestData.KnownQuestion, TestData.KnownImage, method: "fastv", budget: 0.5).ToJsonString())))
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        using var metrics = await client.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
        string text = await metrics.Content.ReadAsStringAsync();
        // The runtime's instruments (requests, visual tokens kept, FLOPs ratio) and the server's queue gauges, in Prometheus' text format.
        foreach (var name in new[] { "autoprune_requests", "autoprune_visual_tokens_per_layer", "autoprune_flops_ratio", "gen_ai_server_time_to_first_token", "autoprune_server_queued", "autoprune_server_running", "http_server_request_duration" })
            Assert.Contains(name, text);
        Assert.Contains("gen_ai_request_model=\"shapes-llava-tiny\"", text);
    }

    [Fact]
    public async Task Without_a_key_a_non_loopback_address_stops_the_start_unless_explicitly_allowed_and_with_a_key_it_starts()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:Warmup", "false")), "http://0.0.0.0:0", waitReady: false));
        Assert.Contains("No API key is configured", Flatten(error));
        Assert.Contains("0.0.0.0", Flatten(error));

        await using (var keyed = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:ApiKeys:0", Api.Key), ("AutoPrune:Server:Warmup", "false")), "http://0.0.0.0:0", waitReady: false))
            Assert.StartsWith("http://0.0.0.0:", keyed.Address.ToString());
        await using (var open = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:AllowUnauthenticatedRemoteAccess", "true"), ("AutoPrune:Server:Warmup", "false")), "http://0.0.0.0:0", waitReady: false))
            Assert.StartsWith("http://0.0.0.0:", open.Address.ToString());

        Assert.True(LoopbackGuard.IsLoopback("http://127.0.0.1:8080"));
        Assert.True(LoopbackGuard.IsLoopback("http://[::1]:8080"));
        Assert.True(LoopbackGuard.IsLoopback("http://localhost:5000"));
        Assert.False(LoopbackGuard.IsLoopback("http://*:8080"));
        Assert.False(LoopbackGuard.IsLoopback("http://+:8080"));
        Assert.False(LoopbackGuard.IsLoopback("http://[::]:8080"));
        Assert.False(LoopbackGuard.IsLoopback("http://10.1.2.3:8080"));
    }

    [Fact]
    public async Task Ready_polls_while_the_model_loads_or_after_it_failed_log_nothing_at_error_level()
    {
        // A model whose weights cannot load (a shard cut short): start-up validation passes, loading fails once, and
        // /ready stays 503; every poll must not log an error of its own.
        var dir = Directory.CreateTempSubdirectory("autoprune-broken-model-").FullName;
        try
        {
            foreach (var file in Directory.GetFiles(TestData.ModelDir)) File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
            var shard = Directory.GetFiles(dir, "*.safetensors").OrderBy(f => f, StringComparer.Ordinal).Last();
            using (var stream = new FileStream(shard, FileMode.Open)) stream.SetLength(stream.Length / 2);
            foreach (var (model, broken) in new[] { (TestData.ModelDir, false), (dir, true) })
            {
                var logs = new LogCapture();
                await using var server = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:ModelDirectory", model)), waitReady: false, logs: logs);
                using var http = server.CreateClient();
                int unready = 0;
                for (int i = 0; i < 600; i++)
                {
                    using var ready = await http.GetAsync("/ready");
                    if (ready.IsSuccessStatusCode) break;
                    Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
                    unready++;
                    if (broken && server.Host.Failure is not null && unready >= 10)
                    {
                        Assert.Contains("could not be loaded", await ready.Content.ReadAsStringAsync());
                        break;
                    }
                    await Task.Delay(broken ? 20 : 5);
                }
                var errors = logs.AtLeast(Microsoft.Extensions.Logging.LogLevel.Warning);
                Console.WriteLine($"{(broken ? "broken" : "good")} model: {unready} polls answered 503; warnings and errors logged: {errors.Count}");
                if (broken)
                {
                    Assert.True(unready >= 10);
                    // The failed load itself, once; nothing per poll.
                    Assert.True(errors.Count == 1, string.Join("\n", errors));
                    Assert.Contains("Loading the model for the OpenAI endpoint failed", errors[0]);
                }
                else
                {
                    Assert.True(errors.Count == 0, string.Join("\n", errors));
                }
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task The_API_key_file_is_read_like_every_input_file_a_fifo_or_a_device_is_refused_at_start_without_blocking()
    {
        var dir = Directory.CreateTempSubdirectory("autoprune-keys-").FullName;
        try
        {
            string fifo = Path.Combine(dir, "keys.fifo");
            Assert.Equal(0, Mono.Unix.Native.Syscall.mkfifo(fifo, Mono.Unix.Native.FilePermissions.DEFFILEMODE));
            string big = Path.Combine(dir, "big.txt");
            File.WriteAllText(big, string.Concat(Enumerable.Repeat("k-0123456789abcdef\n", 60_000))); // 1.1 MB
            string binary = Path.Combine(dir, "binary.bin");
            File.WriteAllBytes(binary, [0x6B, 0x00, 0xFF, 0xFE, 0x0A]);
            string comments = Path.Combine(dir, "comments.txt");
            File.WriteAllText(comments, "# no key here\n\n");
            foreach (var (file, words) in new[]
                     {
                         (fifo, "is a FIFO"), // was: the start blocked on open, forever
                         ("/dev/zero", "not a regular file"), // was: read without end (2.96 GB in 3 s)
                         (dir, "is a directory"),
                         (big, "above the 1,048,576-byte limit (AutoPrune:Server:ApiKeyFile)"),
                         (binary, "is not UTF-8 text"),
                         (comments, "holds no key"),
                         (Path.Combine(dir, "missing.txt"), "does not exist"),
                     })
            {
                var problems = new AutoPruneServerOptions { ApiKeyFile = file }.Validate();
                Assert.Contains(problems, p => p.Contains("'AutoPrune:Server:ApiKeyFile'") && p.Contains(file) && p.Contains(words));
                var start = LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:ApiKeyFile", file), ("AutoPrune:Server:Warmup", "false")), waitReady: false);
                var error = await Assert.ThrowsAnyAsync<Exception>(() => start.WaitAsync(TimeSpan.FromSeconds(30)));
                Assert.IsNotType<TimeoutException>(error);
                Assert.Contains(words, Flatten(error));
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string Flatten(Exception e) => e is AggregateException a ? string.Join(" ", a.Flatten().InnerExceptions.Select(x => x.Message)) : e.Message + " " + e.InnerException?.Message;

    [Fact]
    public async Task Remote_images_are_fetched_only_from_allowed_hosts_and_ports_within_the_size_limit_and_errors_echo_nothing_found()
    {
        var png = File.ReadAllBytes(TestData.Image(TestData.KnownImage));
        // The image host: its own loopback port, so the allow-list entry names it.
        var images = WebApplication.CreateBuilder();
        images.WebHost.UseUrls("http://127.0.0.1:0");
        images.Logging.ClearProviders();
        await using var imageHost = images.Build();
        imageHost.MapGet("/images/ok.png", () => Results.Bytes(png, "image/png"));
        imageHost.MapGet("/images/big.png", () => Results.Bytes(new byte[png.Length + 1], "image/png"));
        imageHost.MapGet("/images/text", () => Results.Text("not an image"));
        imageHost.MapGet("/images/redirect", () => Results.Redirect("/images/ok.png"));
        imageHost.MapGet("/images/broken", () => Results.Problem("internal details", statusCode: 500));
        await imageHost.StartAsync();
        int port = new Uri(imageHost.Urls.First()).Port;
        int closed = ClosedPort();

        await using var server = await LoopbackServer.StartAsync(Api.Settings(
            ("AutoPrune:Server:RemoteImages:AllowedHosts:0", $"127.0.0.1:{port}"),
            ("AutoPrune:Server:RemoteImages:AllowedHosts:1", $"127.0.0.1:{closed}"),
            ("AutoPrune:Server:RemoteImages:AllowedHosts:2", "localhost"),
            ("AutoPrune:Server:MaxImageBytes", png.Length.ToString())));
        using var http = server.CreateClient();

        async Task<(HttpStatusCode, JsonNode)> Ask(string url)
        {
            var body = Api.Body(TestData.KnownQuestion, TestData.KnownImage);
            body["messages"]![0]!["content"]![0]!["image_url"]!["url"] = url;
            using var response = await http.SendAsync(Api.Post(body.ToJsonString()));
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!);
        }

        var (status, ok) = await Ask($"http://127.0.0.1:{port}/images/ok.png");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal((await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage)).Text, (string?)ok["choices"]![0]!["message"]!["content"]);

        var messages = new Dictionary<string, string>();
        foreach (var (url, code) in new[]
                 {
                     ($"http://127.0.0.1:{port}/images/big.png", "image_too_large"),
                     ($"http://127.0.0.1:{port}/images/text", "unsupported_content_type"),
                     ($"http://127.0.0.1:{port}/images/redirect", "image_download_failed"),
                     ($"http://127.0.0.1:{port}/images/broken", "image_download_failed"),
                     ($"http://127.0.0.1:{closed}/images/ok.png", "image_download_failed"), // allowed, but nothing listens
                 })
        {
            var (s, e) = await Ask(url);
            Assert.Equal(HttpStatusCode.BadRequest, s);
            Assert.Equal(code, (string?)e["error"]!["code"]);
            string message = (string)e["error"]!["message"]!;
            Assert.Contains("'127.0.0.1'", message);
            // Nothing the fetch found: no status line, reason, content type, length, body or socket error.
            foreach (var found in new[] { "302", "Found", "500", "Internal", "text/plain", "refused", "internal details", (png.Length + 1).ToString("N0") })
                Assert.DoesNotContain(found, message, StringComparison.OrdinalIgnoreCase);
            messages[url] = message;
        }
        // A closed port and a server error read the same: the allowed host is no port probe.
        Assert.Equal(messages[$"http://127.0.0.1:{port}/images/broken"], messages[$"http://127.0.0.1:{closed}/images/ok.png"]);

        // The host with a port that is not listed, and a host listed without a port (its scheme's default, 80, only).
        foreach (var (url, words) in new[]
                 {
                     ($"http://127.0.0.1:{ClosedPort()}/images/ok.png", "is not in this server's allow-list"),
                     ($"http://localhost:{port}/images/ok.png", "an entry without a port allows http's default port 80 only"),
                     ($"http://127.0.0.2:{port}/images/ok.png", "the host '127.0.0.2' is not in this server's allow-list"),
                 })
        {
            var (s, e) = await Ask(url);
            Assert.Equal(HttpStatusCode.BadRequest, s);
            Assert.Equal("image_host_not_allowed", (string?)e["error"]!["code"]);
            Assert.Contains(words, (string)e["error"]!["message"]!);
        }
    }

    /// <summary>A loopback port nothing listens on (bound, then released).</summary>
    private static int ClosedPort()
    {
        var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    [Fact]
    public async Task Shutdown_lets_an_in_flight_stream_finish_and_then_refuses_new_work()
    {
        var server = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:ShutdownTimeoutSeconds", "60")));
        using var http = server.CreateClient();
        var body = Api.Body(TestData.KnownQuestion, TestData.KnownImage, stream: true, maxTokens: 32);
        using var response = await http.SendAsync(Api.Post(body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: ", await reader.ReadLineAsync()); // the answer has started

        var stopping = server.App.StopAsync();
        Assert.False(server.Host.IsReady); // /ready turns 503 at once, so a Service stops routing here
        var (text, _) = Api.ReadStream(await reader.ReadToEndAsync()); // every delta after the first (role) event, and [DONE]
        await stopping;
        await server.App.DisposeAsync();
        Assert.Equal((await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage, maxTokens: 32)).Text, text);
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync("/health"));
    }
}
