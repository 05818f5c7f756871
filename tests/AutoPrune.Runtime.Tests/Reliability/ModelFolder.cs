using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mono.Unix.Native;

namespace AutoPrune.Tests.Reliability;

/// <summary>A copy of the fixture model in a temporary folder, with edits; deleted on dispose.</summary>
internal sealed class ModelFolder : IDisposable
{
    public ModelFolder()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "autoprune-model-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
        foreach (var f in Directory.GetFiles(TestData.ModelDir)) System.IO.File.Copy(f, File(System.IO.Path.GetFileName(f)));
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Edits a JSON file of the folder in place.</summary>
    public ModelFolder EditJson(string name, Action<JsonNode> edit)
    {
        var node = JsonNode.Parse(System.IO.File.ReadAllText(File(name)))!;
        edit(node);
        System.IO.File.WriteAllText(File(name), node.ToJsonString());
        return this;
    }

    /// <summary>Replaces a file of the folder with a symbolic link to <paramref name="target"/>.</summary>
    public ModelFolder LinkTo(string name, string target)
    {
        System.IO.File.Delete(File(name));
        System.IO.File.CreateSymbolicLink(File(name), target);
        return this;
    }

    /// <summary>Replaces a file of the folder with a FIFO that nobody writes to (opening it for reading would block).</summary>
    public ModelFolder MakeFifo(string name)
    {
        System.IO.File.Delete(File(name));
        SpecialFiles.Fifo(File(name));
        return this;
    }

    /// <summary>Overwrites every element of a tensor (fp16/bf16/fp32) in its shard with <paramref name="value"/>.</summary>
    public ModelFolder FillTensor(string tensor, float value)
    {
        foreach (var shard in Directory.GetFiles(Path, "*.safetensors"))
        {
            var bytes = System.IO.File.ReadAllBytes(shard);
            int headerLen = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            using var doc = JsonDocument.Parse(bytes.AsMemory(8, headerLen));
            if (!doc.RootElement.TryGetProperty(tensor, out var entry)) continue;
            string dtype = entry.GetProperty("dtype").GetString()!;
            var offsets = entry.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            int size = dtype == "F32" ? 4 : 2;
            for (long o = 8 + headerLen + offsets[0]; o < 8 + headerLen + offsets[1]; o += size)
            {
                var span = bytes.AsSpan((int)o, size);
                if (dtype == "F32") BinaryPrimitives.WriteSingleLittleEndian(span, value);
                else if (dtype == "F16") BinaryPrimitives.WriteHalfLittleEndian(span, (Half)value);
                else BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)(BitConverter.SingleToUInt32Bits(value) >> 16));
            }
            System.IO.File.WriteAllBytes(shard, bytes);
            return this;
        }
        throw new InvalidOperationException($"Tensor {tensor} is in no shard.");
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Files that are not regular files, and measuring what a call allocates.</summary>
internal static class SpecialFiles
{
    public static string Fifo(string path)
    {
        if (Syscall.mkfifo(path, FilePermissions.DEFFILEMODE) != 0) throw new IOException($"mkfifo {path}: {Stdlib.GetLastError()}");
        return path;
    }

    /// <summary>A file of <paramref name="length"/> bytes that starts with <paramref name="head"/> and is sparse after it (no disk used).</summary>
    public static string Sparse(string path, byte[] head, long length)
    {
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write);
        fs.Write(head);
        fs.SetLength(length);
        return path;
    }

    /// <summary>Managed bytes allocated by all threads while <paramref name="body"/> ran (for calls that hop threads).</summary>
    public static async Task<(long Bytes, Exception? Error)> AllocatedAsync(Func<Task> body)
    {
        long before = GC.GetTotalAllocatedBytes(precise: true);
        Exception? error = null;
        try { await body(); }
        catch (Exception e) { error = e; }
        return (GC.GetTotalAllocatedBytes(precise: true) - before, error);
    }

    /// <summary>Managed bytes allocated on this thread while <paramref name="body"/> ran.</summary>
    public static (long Bytes, Exception? Error) Allocated(Action body)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        Exception? error = null;
        try { body(); }
        catch (Exception e) { error = e; }
        return (GC.GetAllocatedBytesForCurrentThread() - before, error);
    }
}
