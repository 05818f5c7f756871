using System.Buffers.Binary;
using System.Text;

namespace AutoPrune.Tests.Loading;

internal static class LoadingPaths
{
    public static string RepoRoot => TestData.RepoRoot;
    public static string FixtureModel => TestData.ModelDir;
}

/// <summary>A fresh temporary folder, deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "autoprune-loading-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Writes deliberately broken safetensors files.</summary>
internal static class RawSafeTensors
{
    /// <summary>8-byte length (the real one unless <paramref name="declaredHeaderLength"/>), header text, then <paramref name="dataBytes"/> zero bytes.</summary>
    public static void Write(string path, string header, long dataBytes, ulong? declaredHeaderLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = System.IO.File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, declaredHeaderLength ?? (ulong)h.Length);
        fs.Write(len);
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
    }
}
