using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

using AutoPrune.Models.Llava;

namespace AutoPrune.Loading;

/// <summary>
/// Read-only, memory-mapped view of the tensors of a Hugging Face checkpoint folder: either a single
/// <c>model.safetensors</c> or a <c>model.safetensors.index.json</c> with its shards. Everything is
/// validated at <see cref="Open"/>; tensors are widened to fp32 on read. Names are canonical (see
/// the model family's name map). Thread-safe for concurrent reads.
/// </summary>
internal sealed unsafe class SafeTensorStore : ITensorSource, IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>Largest accepted safetensors JSON header (the Rust reference implementation uses the same limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const int ConvertChunkElements = 1 << 20;

    private readonly string _folder;
    private readonly List<Shard> _shards;
    private readonly Dictionary<string, (Shard Shard, Entry Entry)> _tensors;
    private readonly string[] _names;
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);
    private readonly Func<string, string> _canonical;
    private bool _disposed;

    private SafeTensorStore(string folder, List<Shard> shards, Dictionary<string, (Shard, Entry)> tensors, Func<string, string> canonical)
    {
        _folder = folder;
        _canonical = canonical;
        _shards = shards;
        _tensors = tensors;
        _names = tensors.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray();
    }

    /// <summary>The folder this store was opened from (full path).</summary>
    public string Folder => _folder;

    /// <summary>Canonical names of all tensors, sorted ordinally.</summary>
    public IReadOnlyCollection<string> Names => _names;

    /// <summary>The safetensors files backing this store (full paths).</summary>
    public IReadOnlyList<string> Files => _shards.Select(s => s.Path).ToArray();

    public bool Contains(string name) => _tensors.ContainsKey(_canonical(name));

    public TensorInfo GetInfo(string name)
    {
        var (shard, entry) = Find(name);
        return new TensorInfo(entry.Name, entry.DType, (long[])entry.Shape.Clone(), shard.Path);
    }

    /// <summary>
    /// Reads a tensor as fp32 (widening F16/BF16). When <paramref name="expectedShape"/> is given
    /// (non-empty), the tensor's shape must equal it exactly.
    /// </summary>
    public float[] ReadFloat32(string name, params long[] expectedShape)
    {
        var (shard, entry, count) = FindForArray(name, expectedShape);
        var result = GC.AllocateUninitializedArray<float>(count);
        Convert(shard, entry, result);
        MarkRead(entry.Name);
        return result;
    }

    /// <summary>
    /// Reads a tensor as fp16 for the GPU backend: F16 is copied bit for bit, BF16 and F32 are rounded to nearest
    /// even (values beyond ±65504 become ±inf, as in PyTorch's <c>.half()</c>).
    /// </summary>
    public Half[] ReadFloat16(string name, params long[] expectedShape)
    {
        var (shard, entry, count) = FindForArray(name, expectedShape);
        var result = GC.AllocateUninitializedArray<Half>(count);
        if (entry.DType == DType.F16)
            new ReadOnlySpan<Half>(shard.DataStart + entry.Begin, (int)count).CopyTo(result);
        else
        {
            var tmp = new float[Math.Min(count, ConvertChunkElements)];
            for (long done = 0; done < count; done += ConvertChunkElements)
            {
                int n = (int)Math.Min(ConvertChunkElements, count - done);
                var t = tmp.AsSpan(0, n);
                ConvertRange(shard, entry, done, t);
                TensorPrimitives.ConvertToHalf(t, result.AsSpan((int)done, n));
            }
        }
        MarkRead(entry.Name);
        return result;
    }

    /// <summary>
    /// The tensor in its stored type as a view of the memory-mapped file: nothing is copied. The mapping lives while
    /// the store is open or retained (<see cref="Retain"/>): a model that keeps such weights retains the store.
    /// </summary>
    public WeightData ReadWeight(string name, params long[] expectedShape)
    {
        var (shard, entry, count) = FindForArray(name, expectedShape);
        ObjectDisposedException.ThrowIf(_disposed, this);
        byte* p = shard.DataStart + entry.Begin;
        MarkRead(entry.Name);
        return entry.DType switch
        {
            DType.F16 => WeightData.Of(new NativeMemory<Half>((Half*)p, count).Memory),
            DType.BF16 => WeightData.OfBFloat16(new NativeMemory<ushort>((ushort*)p, count).Memory),
            _ => WeightData.Of(new NativeMemory<float>((float*)p, count).Memory),
        };
    }

    private int _references = 1;

    /// <summary>Keeps the files mapped until the returned lease is disposed, even after this store is disposed.</summary>
    public IDisposable Retain()
    {
        lock (_read)
        {
            ObjectDisposedException.ThrowIf(_references == 0, this);
            _references++;
        }
        return new Lease(this);
    }

    private sealed class Lease(SafeTensorStore store) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) store.ReleaseReference();
        }
    }

    private void ReleaseReference()
    {
        lock (_read)
        {
            if (--_references > 0) return;
        }
        foreach (var sh in _shards) sh.Dispose();
    }

    /// <summary>The tensor, checked against <paramref name="expectedShape"/>, and its element count, which must fit one .NET array.</summary>
    private (Shard Shard, Entry Entry, int Count) FindForArray(string name, long[] expectedShape)
    {
        var (shard, entry) = Find(name);
        CheckShape(shard, entry, expectedShape);
        long count = entry.ElementCount;
        if (count > Array.MaxLength)
        {
            throw new ModelLoadException(
                $"Tensor '{entry.Name}' in file '{shard.Path}' has {count} elements, more than one .NET array can hold ({Array.MaxLength}); read it in parts instead.",
                shard.Path, entry.Name);
        }
        return (shard, entry, (int)count);
    }

    /// <summary>Like <see cref="ReadFloat32"/> but into a caller-provided buffer of exactly the tensor's element count.</summary>
    public void ReadFloat32Into(string name, Span<float> dest, params long[] expectedShape)
    {
        var (shard, entry) = Find(name);
        CheckShape(shard, entry, expectedShape);
        if (dest.Length != entry.ElementCount)
        {
            throw new ModelLoadException(
                $"Tensor '{entry.Name}' in file '{shard.Path}' has {entry.ElementCount} elements (shape {TensorInfo.FormatShape(entry.Shape)}) but the destination holds {dest.Length}.",
                shard.Path, entry.Name);
        }
        Convert(shard, entry, dest);
        MarkRead(entry.Name);
    }

    /// <summary>Canonical names of the tensors never read so far (sorted), so a model can report unexpected tensors.</summary>
    public IReadOnlyList<string> UnusedTensors()
    {
        lock (_read)
            return _names.Where(n => !_read.Contains(n)).ToArray();
    }

    /// <summary>Closes the store; the files stay mapped while a model retains them (<see cref="Retain"/>).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ReleaseReference();
    }

    // ------------------------------------------------------------------ opening

    /// <param name="canonicalName">Maps a checkpoint key to the name the store uses (and that callers ask for): the model
    /// family's tensor-name map (LLaVA's <c>TensorNames.ToCanonical</c>, Qwen2.5-VL's own).</param>
    public static SafeTensorStore Open(string folder, InputFileLimits? limits, Func<string, string> canonicalName)
    {
        ArgumentNullException.ThrowIfNull(canonicalName);
        if (string.IsNullOrWhiteSpace(folder))
            throw new ModelLoadException("The checkpoint folder path is empty.", folder);
        string full;
        try { full = Path.GetFullPath(folder); }
        catch (Exception ex) when (ex is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new ModelLoadException($"The checkpoint folder path '{folder}' is not a valid path: {ex.Message}", folder, null, ex);
        }
        if (!Directory.Exists(full))
        {
            throw new ModelLoadException(
                File.Exists(full)
                    ? $"'{full}' is a file; expected a checkpoint folder containing '{SingleFileName}' or '{IndexFileName}'."
                    : $"Checkpoint folder '{full}' does not exist.",
                full);
        }

        string indexPath = Path.Combine(full, IndexFileName);
        string singlePath = Path.Combine(full, SingleFileName);
        if (File.Exists(indexPath))
            return OpenSharded(full, indexPath, (limits ?? new()).IndexBytes, canonicalName);
        if (File.Exists(singlePath))
            return OpenSingle(full, singlePath, canonicalName);

        throw new ModelLoadException(
            $"Checkpoint folder '{full}' contains neither '{SingleFileName}' nor '{IndexFileName}'. Files present: {ListFolder(full)}.",
            full);
    }

    private static SafeTensorStore OpenSingle(string folder, string path, Func<string, string> canonical)
    {
        var shard = Shard.Open(path, canonical);
        try
        {
            var tensors = new Dictionary<string, (Shard, Entry)>(StringComparer.Ordinal);
            foreach (var entry in shard.Entries.Values)
                AddCanonical(tensors, shard, entry, path);
            return new SafeTensorStore(folder, new List<Shard> { shard }, tensors, canonical);
        }
        catch
        {
            shard.Dispose();
            throw;
        }
    }

    private static SafeTensorStore OpenSharded(string folder, string indexPath, long maxIndexBytes, Func<string, string> canonical)
    {
        var weightMap = ReadIndex(indexPath, maxIndexBytes);
        var shards = new List<Shard>();
        var shardByRel = new Dictionary<string, Shard>(StringComparer.Ordinal);
        try
        {
            var tensors = new Dictionary<string, (Shard, Entry)>(StringComparer.Ordinal);
            foreach (var (rawName, shardRel) in weightMap)
            {
                if (!shardByRel.TryGetValue(shardRel, out var shard))
                {
                    string shardPath = ResolveShardPath(folder, indexPath, rawName, shardRel);
                    if (!File.Exists(shardPath))
                    {
                        throw new ModelLoadException(
                            $"Index '{indexPath}' maps tensor '{rawName}' to shard '{shardRel}', but file '{shardPath}' does not exist. Files present: {ListFolder(folder)}.",
                            shardPath, rawName);
                    }
                    shard = Shard.Open(shardPath, canonical);
                    shards.Add(shard);
                    shardByRel.Add(shardRel, shard);
                }
                if (!shard.Entries.TryGetValue(rawName, out var entry))
                {
                    throw new ModelLoadException(
                        $"Index '{indexPath}' maps tensor '{rawName}' to shard '{shardRel}', but file '{shard.Path}' has no tensor of that name ({shard.Entries.Count} tensors in it).",
                        shard.Path, rawName);
                }
                AddCanonical(tensors, shard, entry, indexPath);
            }
            RefuseUnlisted(indexPath, weightMap, shardByRel);
            return new SafeTensorStore(folder, shards, tensors, canonical);
        }
        catch
        {
            foreach (var s in shards) s.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Every tensor a shard's header holds must be listed by the index for that shard: a tensor only in a header would be
    /// silently ignored, and one in two shards would be loaded from whichever the index happens to name.
    /// </summary>
    private static void RefuseUnlisted(string indexPath, List<(string RawName, string Shard)> weightMap, Dictionary<string, Shard> shardByRel)
    {
        var listedIn = weightMap.ToDictionary(w => w.RawName, w => w.Shard, StringComparer.Ordinal);
        foreach (var (rel, shard) in shardByRel)
            foreach (var raw in shard.Entries.Keys.Order(StringComparer.Ordinal))
            {
                if (!listedIn.TryGetValue(raw, out var listed))
                    throw new ModelLoadException(
                        $"Shard '{shard.Path}' holds tensor '{raw}', which index '{indexPath}' does not list; the index and the shards disagree.", shard.Path, raw);
                if (listed != rel)
                    throw new ModelLoadException(
                        $"Tensor '{raw}' is in two shards: '{rel}' and '{listed}' (where index '{indexPath}' puts it); a checkpoint holds each tensor once.", shard.Path, raw);
            }
    }

    private static void AddCanonical(Dictionary<string, (Shard, Entry)> tensors, Shard shard, Entry entry, string sourcePath)
    {
        if (tensors.TryGetValue(entry.Name, out var existing))
        {
            throw new ModelLoadException(
                $"Tensor '{entry.Name}' appears twice in the checkpoint: as '{existing.Item2.RawName}' in '{existing.Item1.Path}' and as '{entry.RawName}' in '{shard.Path}' (listed by '{sourcePath}').",
                shard.Path, entry.Name);
        }
        tensors.Add(entry.Name, (shard, entry));
    }

    private static List<(string RawName, string Shard)> ReadIndex(string indexPath, long maxIndexBytes)
    {
        byte[] bytes = ModelFiles.ReadBytes(indexPath, maxIndexBytes, "ModelOptions.FileLimits.IndexBytes");

        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new ModelLoadException($"Index '{indexPath}' is not valid UTF-8 text.", indexPath);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow });
        }
        catch (JsonException ex)
        {
            throw new ModelLoadException(
                $"Index '{indexPath}' is not valid JSON (line {ex.LineNumber + 1}, byte {ex.BytePositionInLine + 1}): {ex.Message}",
                indexPath, null, ex);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ModelLoadException($"Index '{indexPath}' must be a JSON object but is {root.ValueKind}.", indexPath);
            EnsureStringsDecode(root, $"Index '{indexPath}'", indexPath);
            if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new ModelLoadException($"Index '{indexPath}' has no 'weight_map' object (expected \"weight_map\": {{ \"tensor name\": \"shard file\", ... }}).", indexPath);

            var result = new List<(string, string)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                {
                    throw new ModelLoadException(
                        $"Index '{indexPath}': weight_map entry for tensor '{p.Name}' must be a shard file name (string) but is {p.Value.ValueKind}.",
                        indexPath, p.Name);
                }
                if (!seen.Add(p.Name))
                    throw new ModelLoadException($"Index '{indexPath}' lists tensor '{p.Name}' twice in weight_map.", indexPath, p.Name);
                result.Add((p.Name, p.Value.GetString()!));
            }
            if (result.Count == 0)
                throw new ModelLoadException($"Index '{indexPath}' has an empty weight_map; expected at least one tensor.", indexPath);
            return result;
        }
    }

    /// <summary>
    /// JsonDocument decodes strings lazily and throws InvalidOperationException for escapes that are not
    /// text (a lone surrogate such as "\ud800"); check every name and string once, up front.
    /// </summary>
    private static void EnsureStringsDecode(JsonElement root, string what, string path)
    {
        try { Visit(root); }
        catch (InvalidOperationException ex)
        {
            throw new ModelLoadException($"{what} with a string that is not valid text: {ex.Message}", path, null, ex);
        }

        static void Visit(JsonElement e)
        {
            switch (e.ValueKind)
            {
                case JsonValueKind.Object:
                    foreach (var p in e.EnumerateObject()) { _ = p.Name; Visit(p.Value); }
                    break;
                case JsonValueKind.Array:
                    foreach (var x in e.EnumerateArray()) Visit(x);
                    break;
                case JsonValueKind.String:
                    _ = e.GetString();
                    break;
            }
        }
    }

    /// <summary>Shard paths must be plain relative paths that stay inside the checkpoint folder.</summary>
    private static string ResolveShardPath(string folder, string indexPath, string tensor, string shardRel)
    {
        string Fail(string why) => throw new ModelLoadException(
            $"Index '{indexPath}' maps tensor '{tensor}' to shard path '{shardRel}', which {why}; shard paths must be file names relative to '{folder}'.",
            indexPath, tensor);

        if (string.IsNullOrWhiteSpace(shardRel)) Fail("is empty");
        if (shardRel.IndexOf('\0') >= 0) Fail("contains a NUL character");
        if (Path.IsPathRooted(shardRel) || shardRel.StartsWith('/') || shardRel.StartsWith('\\') || (shardRel.Length >= 2 && shardRel[1] == ':'))
            Fail("is absolute");
        var segments = shardRel.Split('/', '\\');
        if (segments.Any(s => s == ".."))
            Fail("contains '..'");

        string full = Path.GetFullPath(Path.Combine(folder, shardRel));
        string root = Path.TrimEndingDirectorySeparator(folder) + Path.DirectorySeparatorChar;
        if (!full.StartsWith(root, StringComparison.Ordinal))
            Fail("resolves outside the checkpoint folder");
        return full;
    }

    internal static string ListFolder(string folder)
    {
        try
        {
            var names = Directory.EnumerateFileSystemEntries(folder).Select(Path.GetFileName).OrderBy(n => n, StringComparer.Ordinal).ToList();
            if (names.Count == 0) return "(none)";
            const int max = 30;
            var shown = string.Join(", ", names.Take(max));
            return names.Count > max ? $"{shown}, ... ({names.Count} in all)" : shown;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return $"(cannot list: {ex.Message})";
        }
    }

    // ------------------------------------------------------------------ reading

    private (Shard Shard, Entry Entry) Find(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(name);
        string canonical = _canonical(name);
        if (_tensors.TryGetValue(canonical, out var found))
            return found;

        // Help the reader: show names sharing the last two dotted components, if any.
        var parts = canonical.Split('.');
        string tail = parts.Length >= 2 ? "." + parts[^2] + "." + parts[^1] : canonical;
        var similar = _names.Where(n => n.EndsWith(tail, StringComparison.Ordinal)).Take(5).ToArray();
        string hint = similar.Length > 0 ? $" Similar names: {string.Join(", ", similar)}." : "";
        throw new ModelLoadException(
            $"Tensor '{canonical}'" + (canonical != name ? $" (requested as '{name}')" : "") +
            $" is not in the checkpoint at '{_folder}' ({_names.Length} tensors in {string.Join(", ", _shards.Select(s => Path.GetFileName(s.Path)))}).{hint} Files in the folder: {ListFolder(_folder)}.",
            _folder, canonical);
    }

    private static void CheckShape(Shard shard, Entry entry, long[]? expected)
    {
        if (expected is null || expected.Length == 0) return;
        if (!expected.AsSpan().SequenceEqual(entry.Shape))
        {
            throw new ModelLoadException(
                $"Tensor '{entry.Name}' in file '{shard.Path}' has shape {TensorInfo.FormatShape(entry.Shape)} but {TensorInfo.FormatShape(expected)} was expected.",
                shard.Path, entry.Name);
        }
    }

    private void MarkRead(string name)
    {
        lock (_read) _read.Add(name);
    }

    private static void Convert(Shard shard, Entry entry, Span<float> dest)
    {
        long total = dest.Length;
        for (long done = 0; done < total; done += ConvertChunkElements)
        {
            int n = (int)Math.Min(ConvertChunkElements, total - done);
            ConvertRange(shard, entry, done, dest.Slice((int)done, n));
        }
    }

    /// <summary>Widens elements [first, first + dest.Length) of a tensor to fp32.</summary>
    private static void ConvertRange(Shard shard, Entry entry, long first, Span<float> d)
    {
        int size = entry.DType.SizeInBytes();
        int n = d.Length;
        byte* p = shard.DataStart + entry.Begin + first * size;
        switch (entry.DType)
        {
            case DType.F32:
                new ReadOnlySpan<float>(p, n).CopyTo(d);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(p, n), d);
                break;
            case DType.BF16:
                WidenBFloat16(new ReadOnlySpan<ushort>(p, n), d);
                break;
            default:
                throw new ModelLoadException($"Tensor '{entry.Name}' in file '{shard.Path}' has unsupported dtype {entry.DType}.", shard.Path, entry.Name);
        }
    }

    /// <summary>bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits.</summary>
    internal static void WidenBFloat16(ReadOnlySpan<ushort> src, Span<float> dest)
    {
        var d = MemoryMarshal.Cast<float, uint>(dest);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int step = Vector<ushort>.Count;
            for (; i <= src.Length - step; i += step)
            {
                var v = new Vector<ushort>(src.Slice(i));
                Vector.Widen(v, out Vector<uint> lo, out Vector<uint> hi);
                (lo << 16).CopyTo(d.Slice(i));
                (hi << 16).CopyTo(d.Slice(i + Vector<uint>.Count));
            }
        }
        for (; i < src.Length; i++)
            d[i] = (uint)src[i] << 16;
    }

    // ------------------------------------------------------------------ files

    private sealed class Entry
    {
        public required string RawName { get; init; }
        public required string Name { get; init; }
        public required DType DType { get; init; }
        public required long[] Shape { get; init; }
        public required long ElementCount { get; init; }
        /// <summary>Offsets relative to the start of the data region.</summary>
        public required long Begin { get; init; }
        public required long End { get; init; }
    }

    private sealed class Shard : IDisposable
    {
        private MemoryMappedFile? _mmf;
        private MemoryMappedViewAccessor? _view;
        private bool _pointerAcquired;

        public string Path { get; private init; } = "";
        private Func<string, string> Canonical { get; init; } = TensorNames.ToCanonical;
        public long FileLength { get; private set; }
        public byte* Base { get; private set; }
        public byte* DataStart { get; private set; }
        public Dictionary<string, Entry> Entries { get; } = new(StringComparer.Ordinal);

        public static Shard Open(string path, Func<string, string> canonical)
        {
            var shard = new Shard { Path = path, Canonical = canonical };
            try
            {
                shard.Map();
                shard.ParseHeader();
                return shard;
            }
            catch
            {
                shard.Dispose();
                throw;
            }
        }

        private void Map()
        {
            try
            {
                var fs = ModelFiles.OpenRegular(Path); // a FIFO or a device is refused without blocking
                FileLength = fs.Length;
                if (FileLength < 8)
                {
                    fs.Dispose();
                    throw new ModelLoadException(
                        $"File '{Path}' is {FileLength} bytes long; a safetensors file starts with an 8-byte header length.", Path);
                }
                _mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
                _view = _mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                byte* ptr = null;
                _view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
                _pointerAcquired = true;
                Base = ptr + _view.PointerOffset;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new ModelLoadException($"Cannot open '{Path}': {ex.Message}", Path, null, ex);
            }
        }

        private void ParseHeader()
        {
            ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(Base, 8));
            if (headerLen > MaxHeaderBytes)
            {
                throw new ModelLoadException(
                    $"File '{Path}' declares a {headerLen}-byte JSON header, above the {MaxHeaderBytes}-byte limit; the file is corrupt or not a safetensors file.", Path);
            }
            if (headerLen > (ulong)(FileLength - 8))
            {
                throw new ModelLoadException(
                    $"File '{Path}' declares a {headerLen}-byte JSON header but only {FileLength - 8} bytes follow the length prefix; the file is truncated or not a safetensors file.", Path);
            }
            if (headerLen < 2)
                throw new ModelLoadException($"File '{Path}' declares a {headerLen}-byte JSON header; expected at least '{{}}'.", Path);

            int n = (int)headerLen;
            DataStart = Base + 8 + n;
            long dataLength = FileLength - 8 - n;

            // Copy is bounded by the real file size (checked above), never by a claim in the file.
            var headerBytes = new ReadOnlySpan<byte>(Base + 8, n).ToArray();
            // JsonDocument checks UTF-8 only when a string is read (throwing InvalidOperationException), so check it here.
            if (!System.Text.Unicode.Utf8.IsValid(headerBytes))
                throw new ModelLoadException($"File '{Path}' has a JSON header that is not valid UTF-8; the file is corrupt or not a safetensors file.", Path);
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(headerBytes);
            }
            catch (JsonException ex)
            {
                throw new ModelLoadException(
                    $"File '{Path}' has a malformed JSON header (line {ex.LineNumber + 1}, byte {ex.BytePositionInLine + 1}): {ex.Message}", Path, null, ex);
            }

            using (doc)
            {
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                    throw new ModelLoadException($"File '{Path}' has a JSON header that is a {root.ValueKind}; expected an object of tensor entries.", Path);
                EnsureStringsDecode(root, $"File '{Path}' has a JSON header", Path);

                foreach (var prop in root.EnumerateObject())
                {
                    if (prop.Name == "__metadata__")
                    {
                        if (prop.Value.ValueKind is not (JsonValueKind.Object or JsonValueKind.Null))
                            throw new ModelLoadException($"File '{Path}': '__metadata__' must be an object of strings but is {prop.Value.ValueKind}.", Path, "__metadata__");
                        continue;
                    }
                    var entry = ParseEntry(prop.Name, prop.Value, dataLength);
                    if (Entries.ContainsKey(entry.RawName))
                        throw new ModelLoadException($"File '{Path}' lists tensor '{entry.RawName}' twice in its header.", Path, entry.RawName);
                    Entries.Add(entry.RawName, entry);
                }
            }

            // No two tensors may share bytes.
            var ordered = Entries.Values.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ToList();
            for (int i = 1; i < ordered.Count; i++)
            {
                var a = ordered[i - 1];
                var b = ordered[i];
                if (b.Begin < a.End)
                {
                    throw new ModelLoadException(
                        $"File '{Path}': tensor '{b.RawName}' (data_offsets [{b.Begin}, {b.End}]) overlaps tensor '{a.RawName}' (data_offsets [{a.Begin}, {a.End}]).",
                        Path, b.RawName);
                }
            }
        }

        private Entry ParseEntry(string rawName, JsonElement value, long dataLength)
        {
            ModelLoadException Bad(string what) => new($"File '{Path}', tensor '{rawName}': {what}", Path, rawName);

            if (value.ValueKind != JsonValueKind.Object)
                throw Bad($"expected an object with dtype, shape and data_offsets but found {value.ValueKind}.");

            if (!value.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
                throw Bad("missing or non-string 'dtype'.");
            string dtypeStr = dtypeEl.GetString()!;
            if (!DTypeExtensions.TryParseHeaderString(dtypeStr, out var dtype))
                throw Bad($"dtype '{dtypeStr}' is not supported; expected one of F32, F16, BF16.");

            if (!value.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
                throw Bad("missing or non-array 'shape'.");
            int rank = shapeEl.GetArrayLength();
            if (rank > 16)
                throw Bad($"shape has rank {rank}; at most 16 dimensions are accepted.");
            var shape = new long[rank];
            long count = 1;
            int k = 0;
            foreach (var d in shapeEl.EnumerateArray())
            {
                if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                    throw Bad($"shape entry {k} ('{d.GetRawText()}') is not a non-negative integer.");
                shape[k++] = dim;
                try { count = checked(count * dim); }
                catch (OverflowException) { throw Bad($"shape {shapeEl.GetRawText()} has more elements than fit in 64 bits."); }
            }

            if (!value.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
                throw Bad("missing 'data_offsets' or it is not an array [begin, end].");
            var offs = new long[2];
            k = 0;
            foreach (var o in offEl.EnumerateArray())
            {
                if (o.ValueKind != JsonValueKind.Number || !o.TryGetInt64(out long v) || v < 0)
                    throw Bad($"data_offsets entry {k} ('{o.GetRawText()}') is not a non-negative 64-bit integer.");
                offs[k++] = v;
            }
            long begin = offs[0], end = offs[1];
            if (end < begin)
                throw Bad($"data_offsets [{begin}, {end}] end before they begin.");
            if (end > dataLength)
                throw Bad($"data_offsets [{begin}, {end}] lie outside the data region, which is {dataLength} bytes long.");

            long expectedBytes;
            try { expectedBytes = checked(count * dtype.SizeInBytes()); }
            catch (OverflowException) { throw Bad($"shape {shapeEl.GetRawText()} with dtype {dtypeStr} has more bytes than fit in 64 bits."); }
            if (expectedBytes != end - begin)
            {
                throw Bad($"shape {TensorInfo.FormatShape(shape)} with dtype {dtypeStr} needs {expectedBytes} bytes but data_offsets [{begin}, {end}] span {end - begin}.");
            }

            return new Entry
            {
                RawName = rawName,
                Name = Canonical(rawName),
                DType = dtype,
                Shape = shape,
                ElementCount = count,
                Begin = begin,
                End = end,
            };
        }

        public void Dispose()
        {
            if (_pointerAcquired && _view is not null)
            {
                _view.SafeMemoryMappedViewHandle.ReleasePointer();
                _pointerAcquired = false;
            }
            Base = null;
            DataStart = null;
            _view?.Dispose();
            _mmf?.Dispose();
            _view = null;
            _mmf = null;
        }
    }
}
