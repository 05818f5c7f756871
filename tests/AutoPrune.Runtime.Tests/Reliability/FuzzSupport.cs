using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>Shared helpers for the hostile-input properties.</summary>
internal static class FuzzSupport
{
    /// <summary>
    /// Runs <paramref name="body"/> on a worker and fails (instead of hanging the suite) when it has not
    /// finished within <paramref name="limit"/>: a hang detector, set at 15-30 times what the property takes alone so
    /// that a loaded machine does not trip it.
    /// </summary>
    public static void WithinTime(TimeSpan limit, Action body)
    {
        var task = Task.Run(body);
        if (!task.Wait(limit))
            Assert.Fail($"Did not finish within {limit.TotalSeconds:0} s: a hostile input made the loader hang or crawl.");
        task.GetAwaiter().GetResult();
    }

    /// <summary>
    /// Runs one hostile-input attempt on the current thread and classifies it: null for a successful
    /// load, or the exception. Fails for an attempt that crawls (a hostile input that makes a decoder loop: 30 s by
    /// default, several hundred times what an attempt takes, so a loaded 2-core machine never trips it; a 5 s limit
    /// did, at 21 s for a 226-byte image that takes milliseconds alone) or one that allocated more than
    /// <paramref name="maxAllocatedBytes"/>.
    /// </summary>
    public static Exception? Attempt(Action load, long maxAllocatedBytes, string what, TimeSpan? slow = null)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var sw = Stopwatch.StartNew();
        Exception? caught = null;
        try { load(); }
        catch (Exception e) { caught = e; }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        var limit = slow ?? TimeSpan.FromSeconds(30);
        if (sw.Elapsed > limit)
            Assert.Fail($"{what}: one attempt took {sw.Elapsed.TotalMilliseconds:0} ms (limit {limit.TotalMilliseconds:0} ms).");
        if (allocated > maxAllocatedBytes)
            Assert.Fail($"{what}: one attempt allocated {allocated:N0} bytes (limit {maxAllocatedBytes:N0}); outcome {caught?.GetType().Name ?? "loaded"}: {caught?.Message}");
        return caught;
    }

    /// <summary>Fails unless <paramref name="e"/> is null or exactly one of the allowed (clean) exception types.</summary>
    public static void AssertClean(Exception? e, string what, params Type[] allowed)
    {
        if (e is null) return;
        if (allowed.Any(t => t.IsInstanceOfType(e)) && !string.IsNullOrWhiteSpace(e.Message)) return;
        Assert.Fail($"{what}: expected only {string.Join(" or ", allowed.Select(t => t.Name))} or a correct load, got {e.GetType().FullName}: {e}");
    }

    /// <summary>A PNG signature and IHDR chunk (with a correct CRC) declaring <paramref name="w"/>×<paramref name="h"/>, then an empty IDAT and IEND.</summary>
    public static byte[] PngHeader(uint w, uint h)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteUInt32BigEndian(ihdr, w);
        BinaryPrimitives.WriteUInt32BigEndian(ihdr.AsSpan(4), h);
        ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
        Chunk(ms, "IHDR", ihdr);
        Chunk(ms, "IDAT", [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    /// <summary>Rewrites the width and height in a PNG's IHDR and fixes its CRC, so the lie passes libpng's checks.</summary>
    public static byte[] PngWithDimensions(byte[] png, uint w, uint h)
    {
        var copy = (byte[])png.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(copy.AsSpan(16), w);
        BinaryPrimitives.WriteUInt32BigEndian(copy.AsSpan(20), h);
        uint crc = Crc32(copy.AsSpan(12, 4 + 13));
        BinaryPrimitives.WriteUInt32BigEndian(copy.AsSpan(29), crc);
        return copy;
    }

    /// <summary>The CRC-32 of PNG chunks (ISO-HDLC, reflected 0xEDB88320).</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    private static void Chunk(Stream s, string type, byte[] body)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, body.Length);
        s.Write(len);
        var tb = Encoding.ASCII.GetBytes(type);
        s.Write(tb);
        s.Write(body);
        var crcInput = tb.Concat(body).ToArray();
        BinaryPrimitives.WriteUInt32BigEndian(len, Crc32(crcInput));
        s.Write(len);
    }
}

/// <summary>A temporary folder per thread (CsCheck samples on several threads).</summary>
internal sealed class PerThreadDirs : IDisposable
{
    private readonly ThreadLocal<string> _dir;
    private readonly string _root = Path.Combine(Path.GetTempPath(), "autoprune-fuzz-" + Guid.NewGuid().ToString("N"));

    public PerThreadDirs()
    {
        Directory.CreateDirectory(_root);
        _dir = new ThreadLocal<string>(() => Directory.CreateDirectory(Path.Combine(_root, Guid.NewGuid().ToString("N"))).FullName);
    }

    public string Current => _dir.Value!;

    public void Dispose()
    {
        _dir.Dispose();
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
