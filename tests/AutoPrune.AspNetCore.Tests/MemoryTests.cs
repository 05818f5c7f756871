using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// What the server's memory does under large bodies and large images, measured on a real loopback server in this
/// process: the working set (everything resident), the GC heap and the rest (native: SkiaSharp, the runtime). The
/// bounds asserted are the documented ones (README, SECURITY.md) with a margin; the figures measured are printed.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class MemoryTests(LibraryFixture library)
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(5); // only so that a hang fails instead of blocking the suite

    /// <summary>The documented bound on what 32 concurrent maximal bodies add to the working set (README, SECURITY.md).</summary>
    private const long ConcurrentBodiesBound = 400_000_000;

    [Fact]
    public async Task Thirty_two_concurrent_maximal_bodies_keep_the_working_set_under_the_documented_bound()
    {
        using var cancel = new CancellationTokenSource(Patience);
        // A 16 MiB PNG (the known image, padded with a private chunk the decoder skips) and a 31 MB body around it.
        var image = Padded(File.ReadAllBytes(TestData.Image(TestData.KnownImage)), 16 << 20);
        var json = Api.Body(TestData.KnownQuestion, TestData.KnownImage);
        json["messages"]![0]!["content"]![0]!["image_url"]!["url"] = "data:image/png;base64," + Convert.ToBase64String(image);
        json["user"] = new string('u', 31_000_000 - json.ToJsonString().Length); // an ignored field fills the body to 31 MB
        var body = Encoding.UTF8.GetBytes(json.ToJsonString());
        json = null;
        Assert.InRange(body.Length, 30_900_000, 31_100_000);
        string expected = (await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage)).Text;

        await using var server = await LoopbackServer.StartAsync(Api.Settings());
        using var http = server.CreateClient(Patience);
        // One maximal request first: code paths warm, pools and caches filled, then the baseline.
        Assert.Equal(expected, await AskAsync(http, body, cancel.Token) is (200, var first) ? first : null);
        var before = Measure.Now(collect: true);

        using var sampler = new Sampler();
        using var start = new ManualResetEventSlim();
        var tasks = Enumerable.Range(0, 32).Select(_ => Task.Run(async () =>
        {
            start.Wait(cancel.Token);
            return await AskAsync(http, body, cancel.Token);
        }, cancel.Token)).ToList();
        start.Set();
        var results = await Task.WhenAll(tasks);
        var peak = sampler.Stop();
        var after = Measure.Now(collect: true);

        var statuses = results.GroupBy(r => r.Status).ToDictionary(g => g.Key, g => g.Count());
        Console.WriteLine($"32 concurrent 31 MB bodies: {string.Join(", ", statuses.Select(kv => $"{kv.Value} x {kv.Key}"))}; " +
            $"budget {server.Host.Bodies.Limit / 1048576.0:F0} MiB, peak reserved {server.Host.Bodies.Peak / 1048576.0:F1} MiB");
        Console.WriteLine($"working set {before.WorkingSet / 1e6:F0} MB before, peak {peak.WorkingSet / 1e6:F0} MB (+{(peak.WorkingSet - before.WorkingSet) / 1e6:F0}), {after.WorkingSet / 1e6:F0} MB after a collection; " +
            $"GC heap {before.Heap / 1e6:F0} MB before, peak {peak.Heap / 1e6:F0} MB, {after.Heap / 1e6:F0} MB after; native (working set - GC committed) peak {peak.Native / 1e6:F0} MB");

        Assert.All(results, r => Assert.True(r.Status is 200 or 429, $"{r.Status} {r.Text}"));
        Assert.All(results.Where(r => r.Status == 200), r => Assert.Equal(expected, r.Text));
        Assert.Contains(results, r => r.Status == 200);
        Assert.True(server.Host.Bodies.Peak <= server.Host.Bodies.Limit, "the budget was overdrawn");
        Assert.Equal(0, server.Host.Bodies.InUse);
        Assert.True(peak.WorkingSet - before.WorkingSet < ConcurrentBodiesBound,
            $"32 concurrent 31 MB bodies grew the working set by {(peak.WorkingSet - before.WorkingSet) / 1e6:F0} MB; the documented bound is {ConcurrentBodiesBound / 1e6:F0} MB");
    }

    [Fact]
    public async Task Undecodable_images_get_400_even_when_the_queue_is_full()
    {
        using var cancel = new CancellationTokenSource(Patience);
        await using var server = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:QueueLimit", "0")));
        using var http = server.CreateClient(Patience);
        // Every permit taken, no queue: a well-formed request gets 429.
        using var held = await server.Host.Queue.AcquireAsync(server.Host.Permits, cancel.Token);
        Assert.True(held.IsAcquired);
        using (var busy = await http.SendAsync(Api.Post(Api.Body(TestData.KnownQuestion, TestData.KnownImage).ToJsonString()), cancel.Token))
            Assert.Equal(HttpStatusCode.TooManyRequests, busy.StatusCode);

        var png = File.ReadAllBytes(TestData.Image(TestData.KnownImage));
        var broken = new (string What, byte[] Bytes)[]
        {
            ("text", Encoding.ASCII.GetBytes("hello world, not an image")),
            ("a PNG signature and nothing else", png[..8]),
            ("a PNG cut inside its header", png[..20]),
            ("a PNG with a corrupt header", [.. png[..16], .. new byte[] { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF }, .. png[24..]]),
            ("zero bytes", []),
        };
        foreach (var (what, bytes) in broken)
        {
            var body = Api.Body(TestData.KnownQuestion, TestData.KnownImage);
            body["messages"]![0]!["content"]![0]!["image_url"]!["url"] = "data:image/png;base64," + Convert.ToBase64String(bytes);
            using var response = await http.SendAsync(Api.Post(body.ToJsonString()), cancel.Token);
            string text = await response.Content.ReadAsStringAsync(cancel.Token);
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{what}: {(int)response.StatusCode} {text}");
            Assert.Equal("messages[0].content[0].image_url.url", (string?)Api.Error(text)["param"]);
        }
    }

    /// <summary>The documented bound on what three 7071 x 7071 images leave in the working set once answered (README, SECURITY.md).</summary>
    private const long LargeImagesBound = 150_000_000;

    [Fact]
    public async Task Three_images_of_50_megapixels_leave_the_working_set_near_its_baseline()
    {
        using var cancel = new CancellationTokenSource(Patience);
        // 7071 x 7071 = 49,999,041 pixels, just under the default MaxImagePixels; a flat colour, so the PNG is small.
        byte[] png;
        using (var bitmap = new SkiaSharp.SKBitmap(7071, 7071, SkiaSharp.SKColorType.Rgba8888, SkiaSharp.SKAlphaType.Opaque))
        {
            bitmap.Erase(new SkiaSharp.SKColor(40, 90, 200));
            using var data = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
            png = data.ToArray();
        }
        var json = Api.Body("What color is the picture?", TestData.KnownImage);
        json["messages"]![0]!["content"]![0]!["image_url"]!["url"] = "data:image/png;base64," + Convert.ToBase64String(png);
        var body = Encoding.UTF8.GetBytes(json.ToJsonString());

        await using var server = await LoopbackServer.StartAsync(Api.Settings());
        using var http = server.CreateClient(Patience);
        Assert.Equal(200, (await AskAsync(http, Encoding.UTF8.GetBytes(Api.Body(TestData.KnownQuestion, TestData.KnownImage).ToJsonString()), cancel.Token)).Status);
        var before = Measure.Now(collect: true);

        using var sampler = new Sampler();
        var answers = new List<string?>();
        for (int i = 0; i < 3; i++)
        {
            var (status, text) = await AskAsync(http, body, cancel.Token);
            Assert.True(status == 200, $"{status} {text}");
            answers.Add(text);
        }
        var peak = sampler.Stop();
        await Task.Delay(TimeSpan.FromSeconds(2), cancel.Token); // idle, as a server between requests: no collection is forced
        var idle = Measure.Now();
        var collected = Measure.Now(collect: true);

        Console.WriteLine($"three {png.Length / 1024} KB PNGs of 7071 x 7071: working set {before.WorkingSet / 1e6:F0} MB before, peak {peak.WorkingSet / 1e6:F0} MB, " +
            $"{idle.WorkingSet / 1e6:F0} MB 2 s after (+{(idle.WorkingSet - before.WorkingSet) / 1e6:F0}), {collected.WorkingSet / 1e6:F0} MB after a forced collection; " +
            $"GC heap {before.Heap / 1e6:F0} / peak {peak.Heap / 1e6:F0} / {idle.Heap / 1e6:F0} MB; GC committed {before.Committed / 1e6:F0} / {idle.Committed / 1e6:F0} MB; native peak {peak.Native / 1e6:F0} MB");
        Assert.All(answers, a => Assert.Equal(answers[0], a));
        Assert.True(idle.WorkingSet - before.WorkingSet < LargeImagesBound,
            $"three 50-megapixel images left {(idle.WorkingSet - before.WorkingSet) / 1e6:F0} MB in the working set; the documented bound is {LargeImagesBound / 1e6:F0} MB");
    }

    private static async Task<(int Status, string? Text)> AskAsync(HttpClient http, byte[] body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        using var response = await http.SendAsync(request, ct);
        string text = await response.Content.ReadAsStringAsync(ct);
        if (response.StatusCode != HttpStatusCode.OK) return ((int)response.StatusCode, text);
        return (200, (string?)JsonNode.Parse(text)!["choices"]![0]!["message"]!["content"]);
    }

    /// <summary>A PNG padded to <paramref name="size"/> bytes with a private ancillary chunk after IHDR (decoders skip it: same pixels).</summary>
    internal static byte[] Padded(byte[] png, int size)
    {
        const int ihdrEnd = 8 + 4 + 4 + 13 + 4; // signature, IHDR length, type, data, CRC
        int data = size - png.Length - 12;
        var chunk = new byte[12 + data];
        BinaryPrimitives.WriteInt32BigEndian(chunk, data);
        "apXz"u8.CopyTo(chunk.AsSpan(4)); // ancillary, private, reserved bit clear, safe to copy
        BinaryPrimitives.WriteUInt32BigEndian(chunk.AsSpan(8 + data), Crc32(chunk.AsSpan(4, 4 + data)));
        return [.. png[..ihdrEnd], .. chunk, .. png[ihdrEnd..]];
    }

    private static uint Crc32(ReadOnlySpan<byte> bytes)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in bytes)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        return ~crc;
    }
}

/// <summary>This process's memory: resident (working set), the GC heap, and the rest (native allocations and code).</summary>
internal readonly record struct Measure(long WorkingSet, long Heap, long Committed)
{
    public long Native => WorkingSet - Committed;

    public static Measure Now(bool collect = false)
    {
        if (collect)
        {
            for (int i = 0; i < 2; i++)
            {
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
                GC.WaitForPendingFinalizers();
            }
        }
        using var self = Process.GetCurrentProcess();
        var info = GC.GetGCMemoryInfo();
        return new Measure(self.WorkingSet64, GC.GetTotalMemory(false), info.TotalCommittedBytes);
    }
}

/// <summary>Samples <see cref="Measure"/> every 10 ms on its own thread and keeps each figure's peak.</summary>
internal sealed class Sampler : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _ws, _heap, _committed, _native;

    public Sampler()
    {
        _thread = new Thread(() =>
        {
            while (!_stop)
            {
                var m = Measure.Now();
                _ws = Math.Max(_ws, m.WorkingSet);
                _heap = Math.Max(_heap, m.Heap);
                _committed = Math.Max(_committed, m.Committed);
                _native = Math.Max(_native, m.Native);
                Thread.Sleep(10);
            }
        }) { IsBackground = true, Name = "memory sampler" };
        _thread.Start();
    }

    /// <summary>Each figure's peak (the native one is the peak of working set minus GC committed, not a difference of peaks).</summary>
    public (long WorkingSet, long Heap, long Committed, long Native) Stop()
    {
        _stop = true;
        _thread.Join();
        return (_ws, _heap, _committed, _native);
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join();
    }
}
