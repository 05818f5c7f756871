using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AutoPrune.Extensions.AI;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>Requests and settings shared by the server tests.</summary>
internal static class Api
{
    public const int MaxTokens = 8;
    public const string ModelId = "shapes-llava-tiny";
    public const string Key = "test-key-0123456789";

    /// <summary>The settings every test server starts from (the real fixture model on the CPU), as configuration keys.</summary>
    public static Dictionary<string, string?> Settings(params (string Key, string? Value)[] extra)
    {
        var d = new Dictionary<string, string?>
        {
            ["AutoPrune:ModelDirectory"] = TestData.ModelDir,
            ["AutoPrune:Device"] = "cpu",
            ["AutoPrune:MaxOutputTokens"] = MaxTokens.ToString(),
        };
        foreach (var (k, v) in extra) d[k] = v;
        return d;
    }

    public static string DataUrl(string image) => "data:image/png;base64," + Convert.ToBase64String(File.ReadAllBytes(TestData.Image(image)));

    /// <summary>A chat completion body with one user message: an image (optional) and a question.</summary>
    public static JsonObject Body(string question, string? image = null, bool stream = false, string? method = null, double? budget = null, int maxTokens = MaxTokens)
    {
        var content = new JsonArray();
        if (image is not null) content.Add(new JsonObject { ["type"] = "image_url", ["image_url"] = new JsonObject { ["url"] = DataUrl(image) } });
        content.Add(new JsonObject { ["type"] = "text", ["text"] = question });
        var body = new JsonObject
        {
            ["model"] = ModelId,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = content }),
            ["max_tokens"] = maxTokens,
        };
        if (stream) body["stream"] = true;
        if (method is not null || budget is not null)
        {
            var knobs = new JsonObject();
            if (method is not null) knobs["method"] = method;
            if (budget is not null) knobs["budget"] = budget;
            body["autoprune"] = knobs;
        }
        return body;
    }

    public static HttpRequestMessage Post(string json, string? key = null, string contentType = "application/json")
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(json, Encoding.UTF8) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return request;
    }

    /// <summary>The text of a streamed answer: every delta's content, in order, up to [DONE] (which must come).</summary>
    public static (string Text, List<JsonNode> Events) ReadStream(string sse)
    {
        var events = new List<JsonNode>();
        var text = new StringBuilder();
        bool done = false;
        foreach (var line in sse.Split('\n'))
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            var data = line["data: ".Length..];
            Assert.False(done, "an event after [DONE]");
            if (data == "[DONE]") { done = true; continue; }
            var node = JsonNode.Parse(data)!;
            events.Add(node);
            foreach (var choice in node["choices"]!.AsArray())
                text.Append((string?)choice!["delta"]?["content"]);
        }
        Assert.True(done, "the stream did not end with [DONE]:\n" + sse);
        return (text.ToString(), events);
    }

    public static JsonNode Error(string body)
    {
        var error = JsonNode.Parse(body)!["error"]!;
        Assert.NotNull((string?)error["message"]);
        Assert.NotNull((string?)error["type"]);
        return error;
    }
}

/// <summary>
/// The library's own answers (an <see cref="AutoPruneChatClient"/> over its own copy of the model, same settings as the
/// servers), to compare the servers' answers with.
/// </summary>
public sealed class LibraryFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu" });

    public AutoPruneChatClient Client(Action<AutoPruneChatClientOptions>? configure = null)
    {
        var o = new AutoPruneChatClientOptions { MaxOutputTokens = Api.MaxTokens };
        configure?.Invoke(o);
        return new AutoPruneChatClient(Model, o);
    }

    /// <summary>The library's answer to a question about an image (or none) with these knobs.</summary>
    public async Task<Microsoft.Extensions.AI.ChatResponse> AskAsync(string question, string? image = null, string? method = null, double? budget = null, int maxTokens = Api.MaxTokens)
    {
        using var client = Client();
        var contents = new List<Microsoft.Extensions.AI.AIContent>();
        if (image is not null) contents.Add(new Microsoft.Extensions.AI.DataContent(File.ReadAllBytes(TestData.Image(image)), "image/png"));
        contents.Add(new Microsoft.Extensions.AI.TextContent(question));
        var options = new Microsoft.Extensions.AI.ChatOptions { MaxOutputTokens = maxTokens, AdditionalProperties = [] };
        if (method is not null) options.AdditionalProperties["method"] = method;
        if (budget is not null) options.AdditionalProperties["budget"] = budget;
        return await client.GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, contents)], options);
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>The server in-process (<see cref="WebApplicationFactory{TEntryPoint}"/> over a TestServer), configured as <c>autoprune serve</c> is.</summary>
public class InProcessServer : WebApplicationFactory<InProcessServer>
{
    private readonly Dictionary<string, string?> _settings;

    public InProcessServer() : this(Api.Settings()) { }

    internal InProcessServer(Dictionary<string, string?> settings) => _settings = settings;

    protected override IHostBuilder CreateHostBuilder() =>
        Host.CreateDefaultBuilder()
            .ConfigureAppConfiguration(c => c.AddInMemoryCollection(_settings))
            .ConfigureWebHostDefaults(web => web
                .ConfigureServices((context, services) => AutoPruneServer.AddServices(services, context.Configuration))
                .Configure(AutoPruneServer.Configure));

    protected override void ConfigureWebHost(IWebHostBuilder builder) => builder.UseContentRoot(AppContext.BaseDirectory);

    /// <summary>Waits until /ready answers 200 (the model is loaded and warmed).</summary>
    public async Task<HttpClient> ReadyClientAsync()
    {
        var client = CreateClient();
        await WaitReadyAsync(client);
        return client;
    }

    internal static async Task WaitReadyAsync(HttpClient client)
    {
        for (int i = 0; i < 600; i++)
        {
            using var r = await client.GetAsync("/ready");
            if (r.IsSuccessStatusCode) return;
            await Task.Delay(100);
        }
        Assert.Fail("/ready never answered 200");
    }
}

/// <summary>The standalone server (what <c>autoprune serve</c> builds) on a real loopback port.</summary>
public sealed class LoopbackServer : IAsyncDisposable
{
    private LoopbackServer(WebApplication app, Uri address)
    {
        App = app;
        Address = address;
    }

    public WebApplication App { get; }
    public Uri Address { get; }

    internal ModelHost Host => App.Services.GetRequiredService<ModelHost>();

    /// <summary>Starts a server from command-line style settings (as <c>autoprune serve</c> passes them), waits until it is ready.</summary>
    internal static async Task<LoopbackServer> StartAsync(Dictionary<string, string?> settings, string urls = "http://127.0.0.1:0", Action<WebApplication>? map = null, bool waitReady = true,
        LogCapture? logs = null)
    {
        var args = settings.Select(kv => $"--{kv.Key}={kv.Value}").Append($"--urls={urls}").ToArray();
        var builder = AutoPruneServer.CreateBuilder(args);
        if (logs is not null)
        {
            builder.Logging.SetMinimumLevel(LogLevel.Debug);
            builder.Logging.AddProvider(logs);
        }
        var app = AutoPruneServer.Build(builder);
        map?.Invoke(app);
        await app.StartAsync();
        var server = new LoopbackServer(app, new Uri(app.Urls.First()));
        if (waitReady)
        {
            using var client = server.CreateClient();
            await InProcessServer.WaitReadyAsync(client);
        }
        return server;
    }

    public HttpClient CreateClient(TimeSpan? timeout = null) => new() { BaseAddress = Address, Timeout = timeout ?? TimeSpan.FromMinutes(2) };

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
    }
}

/// <summary>One library fixture for all server test classes.</summary>
[CollectionDefinition(Name)]
public sealed class ServerCollection : ICollectionFixture<LibraryFixture>
{
    public const string Name = "server";
}

/// <summary>Every log entry of a server, to check what it logs (and at which level) under bad traffic.</summary>
public sealed class LogCapture : ILoggerProvider
{
    private readonly System.Collections.Concurrent.ConcurrentQueue<Entry> _entries = new();

    public sealed record Entry(LogLevel Level, string Category, string Message, Exception? Exception);

    public IReadOnlyList<Entry> Entries => _entries.ToArray();

    /// <summary>Entries at <paramref name="level"/> or above, one line each, for assertion messages.</summary>
    public List<string> AtLeast(LogLevel level) =>
        Entries.Where(e => e.Level >= level).Select(e => $"{e.Level} {e.Category}: {e.Message}{(e.Exception is null ? "" : " [" + e.Exception.GetType().Name + "]")}").ToList();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() { }

    private sealed class Logger(LogCapture owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner._entries.Enqueue(new Entry(logLevel, category, formatter(state, exception), exception));
    }
}

/// <summary>HTTP/1.1 over a raw socket: requests that no HTTP client would send (broken framing, stalled bodies).</summary>
internal static class RawHttp
{
    /// <summary>The head of a POST to the chat completions endpoint; <paramref name="framing"/> is the Content-Length or Transfer-Encoding line(s).</summary>
    public static byte[] Head(string framing, string extra = "") =>
        Encoding.ASCII.GetBytes($"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}{framing}\r\n\r\n");

    public static async Task<System.Net.Sockets.Socket> ConnectAsync(Uri address)
    {
        var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(System.Net.IPAddress.Loopback, address.Port);
        return socket;
    }

    /// <summary>Reads one response (head and a Content-Length body, or up to the close); the status, the head and the body.</summary>
    public static async Task<(int Status, string Head, string Body)> ReadResponseAsync(System.Net.Sockets.Socket socket, CancellationToken ct)
    {
        var data = new List<byte>();
        var buffer = new byte[8192];
        int headEnd = -1;
        long? length = null;
        bool chunked = false;
        while (true)
        {
            if (headEnd >= 0 && length is long l && data.Count >= headEnd + l) break;
            if (chunked && Encoding.ASCII.GetString(data.ToArray(), headEnd, data.Count - headEnd).Contains("\r\n0\r\n\r\n", StringComparison.Ordinal)) break;
            int n;
            try { n = await socket.ReceiveAsync(buffer, System.Net.Sockets.SocketFlags.None, ct); }
            catch (System.Net.Sockets.SocketException) when (headEnd >= 0) { break; }
            if (n == 0) break;
            data.AddRange(buffer.AsSpan(0, n).ToArray());
            if (headEnd < 0)
            {
                int at = System.Text.Encoding.ASCII.GetString(data.ToArray()).IndexOf("\r\n\r\n", StringComparison.Ordinal);
                if (at >= 0)
                {
                    headEnd = at + 4;
                    var head = Encoding.ASCII.GetString(data.ToArray(), 0, headEnd);
                    var m = System.Text.RegularExpressions.Regex.Match(head, @"(?im)^content-length:\s*(\d+)");
                    if (m.Success) length = long.Parse(m.Groups[1].Value);
                    chunked = System.Text.RegularExpressions.Regex.IsMatch(head, @"(?im)^transfer-encoding:\s*chunked");
                }
            }
        }
        var all = data.ToArray();
        if (headEnd < 0) return (0, Encoding.ASCII.GetString(all), "");
        var headText = Encoding.ASCII.GetString(all, 0, headEnd);
        int status = int.Parse(headText.Split(' ', 3)[1]);
        var body = Encoding.UTF8.GetString(all, headEnd, all.Length - headEnd);
        if (chunked)
        {
            // size CRLF data CRLF ... 0 CRLF CRLF
            var decoded = new StringBuilder();
            int at = 0;
            while (at < body.Length)
            {
                int eol = body.IndexOf("\r\n", at, StringComparison.Ordinal);
                if (eol < 0) break;
                int size = Convert.ToInt32(body[at..eol].Split(';')[0], 16);
                if (size == 0) break;
                decoded.Append(body, eol + 2, size);
                at = eol + 2 + size + 2;
            }
            body = decoded.ToString();
        }
        return (status, headText, body);
    }
}
