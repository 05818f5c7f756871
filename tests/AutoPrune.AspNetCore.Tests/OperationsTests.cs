using System.Net;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

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

    private static string Flatten(Exception e) => e is AggregateException a ? string.Join(" ", a.Flatten().InnerExceptions.Select(x => x.Message)) : e.Message + " " + e.InnerException?.Message;

    [Fact]
    public async Task Remote_images_are_fetched_only_from_allowed_hosts_within_the_size_limit()
    {
        var png = File.ReadAllBytes(TestData.Image(TestData.KnownImage));
        await using var server = await LoopbackServer.StartAsync(Api.Settings(
            ("AutoPrune:Server:RemoteImages:AllowedHosts:0", "127.0.0.1"),
            ("AutoPrune:Server:MaxImageBytes", png.Length.ToString())),
            map: app =>
            {
                app.MapGet("/images/ok.png", () => Results.Bytes(png, "image/png"));
                app.MapGet("/images/big.png", () => Results.Bytes(new byte[png.Length + 1], "image/png"));
                app.MapGet("/images/text", () => Results.Text("not an image"));
                app.MapGet("/images/redirect", () => Results.Redirect("/images/ok.png"));
            });
        using var http = server.CreateClient();

        async Task<(HttpStatusCode, JsonNode)> Ask(string url)
        {
            var body = Api.Body(TestData.KnownQuestion, TestData.KnownImage);
            body["messages"]![0]!["content"]![0]!["image_url"]!["url"] = url;
            using var response = await http.SendAsync(Api.Post(body.ToJsonString()));
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!);
        }

        var (status, ok) = await Ask(new Uri(server.Address, "/images/ok.png").ToString());
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal((await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage)).Text, (string?)ok["choices"]![0]!["message"]!["content"]);

        foreach (var (path, code) in new[] { ("/images/big.png", "image_too_large"), ("/images/text", "unsupported_content_type"), ("/images/redirect", "image_download_failed") })
        {
            var (s, e) = await Ask(new Uri(server.Address, path).ToString());
            Assert.Equal(HttpStatusCode.BadRequest, s);
            Assert.Equal(code, (string?)e["error"]!["code"]);
        }
        var (other, denied) = await Ask($"http://localhost:{server.Address.Port}/images/ok.png");
        Assert.Equal(HttpStatusCode.BadRequest, other);
        Assert.Equal("image_host_not_allowed", (string?)denied["error"]!["code"]);
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
