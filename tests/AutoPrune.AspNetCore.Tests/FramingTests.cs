using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// Broken HTTP framing against a real Kestrel on a loopback port, over raw sockets (TestServer does not frame bodies):
/// a body shorter than its Content-Length, a bad chunk size, bodies that stall or trickle, a 2 GiB Content-Length. Each
/// gets 400, 408 or 413 with an OpenAI error, never a 500, and nothing is logged at error level.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class FramingTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60); // only so that a hang fails instead of blocking the suite

    private static async Task<(LoopbackServer Server, LogCapture Logs)> StartAsync(params (string, string?)[] settings)
    {
        var logs = new LogCapture();
        var server = await LoopbackServer.StartAsync(Api.Settings([("AutoPrune:Server:Warmup", "false"), .. settings]), logs: logs);
        return (server, logs);
    }

    private static void NoErrorLogged(LogCapture logs)
    {
        var errors = logs.AtLeast(LogLevel.Error);
        Assert.True(errors.Count == 0, "logged at error level:\n" + string.Join("\n", errors));
    }

    private static string Json => Api.Body("How many blue objects are there?").ToJsonString();

    [Fact]
    public async Task A_body_shorter_than_its_Content_Length_is_a_400_when_the_client_closes_and_a_408_when_it_stalls()
    {
        var (server, logs) = await StartAsync(("AutoPrune:Server:RequestBodyTimeoutSeconds", "1"));
        await using var _ = server;
        using var cancel = new CancellationTokenSource(Patience);
        var body = Encoding.UTF8.GetBytes(Json);

        // The client sends 500 bytes fewer than it declared and closes its side: Kestrel resets such a connection (it has
        // no half-close), so no answer can arrive; the server logs the 400 it meant, at information level.
        using (var socket = await RawHttp.ConnectAsync(server.Address))
        {
            await socket.SendAsync(RawHttp.Head($"Content-Length: {body.Length + 500}"));
            await socket.SendAsync(body);
            socket.Shutdown(SocketShutdown.Send);
            try
            {
                var (status, head, text) = await RawHttp.ReadResponseAsync(socket, cancel.Token);
                Assert.True(status is 0 or 400, $"{status}\n{head}{text}");
            }
            catch (SocketException) { } // the reset
        }
        static bool Completion(LogCapture.Entry e) => e.Category == "AutoPrune.AspNetCore.ChatCompletions" && e.Message.StartsWith("Chat completion", StringComparison.Ordinal);
        await WaitForAsync(() => logs.Entries.Any(Completion), cancel.Token);
        var logged = logs.Entries.Single(Completion);
        Console.WriteLine("short body, client closed: " + logged.Message);
        Assert.Equal(LogLevel.Information, logged.Level);
        // Which comes first, the end of the body or the reset, is Kestrel's race: either is an information line.
        Assert.True((logged.Message.Contains("400 invalid_request_body", StringComparison.Ordinal) && logged.Message.Contains("Unexpected end of request content", StringComparison.Ordinal)) ||
            logged.Message.Contains("cancelled by the client", StringComparison.Ordinal), logged.Message);

        // The client sends fewer bytes than it declared and waits: the body timeout answers 408 and closes.
        using (var socket = await RawHttp.ConnectAsync(server.Address))
        {
            await socket.SendAsync(RawHttp.Head($"Content-Length: {body.Length + 500}"));
            await socket.SendAsync(body);
            var watch = Stopwatch.StartNew();
            var (status, head, text) = await RawHttp.ReadResponseAsync(socket, cancel.Token);
            Console.WriteLine($"short body, client waiting: {status} after {watch.ElapsedMilliseconds} ms (RequestBodyTimeoutSeconds 1)");
            Assert.True(status == 408, $"{status}\n{head}{text}");
            Assert.Equal("request_timeout", (string?)Api.Error(text)["code"]);
            Assert.Contains("Connection: close", head, StringComparison.OrdinalIgnoreCase);
        }
        NoErrorLogged(logs);
    }

    private static string Flatten(Exception e) => e is AggregateException a ? string.Join(" ", a.Flatten().InnerExceptions.Select(x => x.Message)) : e.Message + " " + e.InnerException?.Message;

    private static async Task WaitForAsync(Func<bool> condition, CancellationToken ct)
    {
        while (!condition()) await Task.Delay(20, ct);
    }

    [Fact]
    public async Task A_bad_chunk_size_gets_400()
    {
        var (server, logs) = await StartAsync();
        await using var _ = server;
        using var cancel = new CancellationTokenSource(Patience);
        foreach (var chunks in new[] { "zz\r\n{}\r\n0\r\n\r\n", "2\r\n{}XX0\r\n\r\n", "ffffffffffffffffff\r\n{}\r\n" })
        {
            using var socket = await RawHttp.ConnectAsync(server.Address);
            await socket.SendAsync(RawHttp.Head("Transfer-Encoding: chunked"));
            await socket.SendAsync(Encoding.ASCII.GetBytes(chunks));
            var (status, head, text) = await RawHttp.ReadResponseAsync(socket, cancel.Token);
            Assert.True(status == 400, $"{chunks.ReplaceLineEndings("\\n")}: {status}\n{head}{text}");
            Assert.Equal("invalid_request_body", (string?)Api.Error(text)["code"]);
        }
        NoErrorLogged(logs);
    }

    [Fact]
    public async Task A_hundred_stalled_or_trickling_bodies_get_408_and_the_server_still_answers()
    {
        var (server, logs) = await StartAsync(("AutoPrune:Server:RequestBodyTimeoutSeconds", "2"));
        await using var _ = server;
        using var cancel = new CancellationTokenSource(Patience);
        var body = Encoding.UTF8.GetBytes(Json);
        var watch = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, 100).Select(async i =>
        {
            using var socket = await RawHttp.ConnectAsync(server.Address);
            await socket.SendAsync(RawHttp.Head(i % 2 == 0 ? $"Content-Length: {body.Length}" : "Transfer-Encoding: chunked"));
            var read = RawHttp.ReadResponseAsync(socket, cancel.Token);
            // Half stall after a few bytes; half trickle a byte every 100 ms (fast enough for Kestrel's minimum data rate
            // in its first seconds, far too slow to finish), until the server answers.
            var prefix = i % 2 == 0 ? body.AsMemory(0, 10) : Encoding.ASCII.GetBytes("400\r\n{").AsMemory();
            await socket.SendAsync(prefix);
            int sent = 0;
            while (!read.IsCompleted && i % 4 == 1 && sent < 300)
            {
                try { await socket.SendAsync(Encoding.ASCII.GetBytes(" ")); } catch (SocketException) { break; }
                sent++;
                await Task.WhenAny(read, Task.Delay(100));
            }
            return await read;
        }));
        Console.WriteLine($"100 slow bodies: {string.Join(", ", results.GroupBy(r => r.Status).Select(g => $"{g.Count()} x {g.Key}"))} in {watch.ElapsedMilliseconds} ms");
        Assert.All(results, r => Assert.True(r.Status == 408, $"{r.Status}\n{r.Head}{r.Body}"));
        Assert.All(results, r => Assert.Equal("request_timeout", (string?)Api.Error(r.Body)["code"]));
        NoErrorLogged(logs);

        // The server is not worse for it.
        using var http = server.CreateClient();
        using var ok = await http.SendAsync(Api.Post(Json), cancel.Token);
        Assert.Equal(System.Net.HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task A_body_limit_over_2_GiB_is_refused_at_start_and_a_2_GiB_Content_Length_gets_413_even_with_the_largest_limit()
    {
        // Over 2 GiB the old server took the limit and then cast a Content-Length to int (a 500).
        var refused = await Assert.ThrowsAnyAsync<Exception>(() => StartAsync(("AutoPrune:Server:MaxRequestBodyBytes", (3L << 30).ToString())));
        Assert.Contains("'AutoPrune:Server:MaxRequestBodyBytes' must be between 1,024 and 2,147,483,647", Flatten(refused));

        foreach (var limit in new long?[] { null, int.MaxValue }) // the default, and the largest limit allowed (AutoPruneServerOptions.MaxRequestBodyLimit)
        {
            var (server, logs) = await StartAsync(limit is long l ? [("AutoPrune:Server:MaxRequestBodyBytes", l.ToString())] : []);
            await using var _ = server;
            using var cancel = new CancellationTokenSource(Patience);
            foreach (long length in new[] { 2L << 30, (2L << 30) + 1, 4L << 30 })
            {
                using var socket = await RawHttp.ConnectAsync(server.Address);
                await socket.SendAsync(RawHttp.Head($"Content-Length: {length}"));
                await socket.SendAsync(Encoding.UTF8.GetBytes(Json)); // the start of a body that never ends
                var (status, head, text) = await RawHttp.ReadResponseAsync(socket, cancel.Token);
                Assert.True(status == 413, $"limit {limit}, Content-Length {length}: {status}\n{head}{text}");
                Assert.Equal("request_too_large", (string?)Api.Error(text)["code"]);
            }
            NoErrorLogged(logs);
        }
    }
}
