using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;
using AutoPrune.Compute.Quant;

namespace AutoPrune.Loading.Gguf;

/// <summary>
/// One tensor of a GGUF file. <see cref="Dimensions"/> are in ggml order (<c>ne</c>: the contiguous dimension first), so a
/// PyTorch <c>Linear</c> weight <c>[out, in]</c> is stored as <c>ne = [in, out]</c>. <see cref="Offset"/> is relative to the
/// start of the file's data section.
/// </summary>
internal sealed record GgufTensorInfo(string Name, GgmlType Type, long[] Dimensions, long Offset, long ByteSize, long ElementCount, int Index)
{
    /// <summary>Elements of one row (<c>ne0</c>).</summary>
    public long Columns => Dimensions[0];

    /// <summary>Rows: the product of every dimension after the first.</summary>
    public long Rows => ElementCount / Dimensions[0];

    /// <summary>The shape in row-major (PyTorch) order: <see cref="Dimensions"/> reversed.</summary>
    public long[] RowMajorShape => Dimensions.Reverse().ToArray();

    /// <summary><c>[ne0, ne1, ...]</c>, for messages.</summary>
    public string DimensionsText => "[" + string.Join(", ", Dimensions) + "]";
}

/// <summary>
/// A GGUF file (versions 2 and 3, little-endian) opened read-only: the header, every metadata key/value and tensor info
/// parsed and checked at <see cref="Open"/>, the tensor data memory-mapped and handed out as views (nothing is copied).
/// <para>
/// Checks, each failing with a <see cref="ModelLoadException"/> that names the file, the key or tensor, and what was
/// expected: the magic and version; every count and string length against <see cref="GgufLimits"/> and against the bytes
/// left in the file before anything is allocated; known value and tensor types; valid UTF-8; no duplicate key or tensor
/// name; <c>general.alignment</c> a power of two; 1–4 dimensions, each ≥ 1, whose product and byte size fit 64 bits and
/// whose first dimension holds whole blocks; offsets aligned, inside the file, and no two tensors sharing a byte.
/// </para>
/// Thread-safe for concurrent reads.
/// </summary>
internal sealed unsafe class GgufFile : IDisposable
{
    /// <summary>"GGUF" read as a little-endian uint32.</summary>
    public const uint Magic = 0x46554747;

    /// <summary>Alignment of the data section and of every tensor when <c>general.alignment</c> is absent.</summary>
    public const int DefaultAlignment = 32;

    public const string AlignmentKey = "general.alignment";

    private readonly Backing _backing;
    private readonly List<KeyValuePair<string, GgufValue>> _metadata;
    private readonly Dictionary<string, GgufValue> _byKey;
    private readonly List<GgufTensorInfo> _tensors;
    private readonly Dictionary<string, GgufTensorInfo> _byName;
    private int _references = 1;
    private bool _disposed;

    private GgufFile(Backing backing, uint version, int alignment, long dataOffset,
        List<KeyValuePair<string, GgufValue>> metadata, List<GgufTensorInfo> tensors)
    {
        _backing = backing;
        Version = version;
        Alignment = alignment;
        DataOffset = dataOffset;
        _metadata = metadata;
        _byKey = metadata.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        _tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>The file's full path (or the name given to <see cref="FromBytes"/>).</summary>
    public string Path => _backing.Path;

    /// <summary>File length in bytes.</summary>
    public long Length => _backing.Length;

    public uint Version { get; }

    /// <summary><c>general.alignment</c>, or 32.</summary>
    public int Alignment { get; }

    /// <summary>Absolute offset of the data section (tensor offsets are relative to it).</summary>
    public long DataOffset { get; }

    /// <summary>Metadata in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata => _metadata;

    /// <summary>Tensor infos in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    public bool TryGetValue(string key, out GgufValue value) => _byKey.TryGetValue(key, out value!);

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <summary>The tensor of that GGUF name; a <see cref="ModelLoadException"/> naming similar names when absent.</summary>
    public GgufTensorInfo GetTensor(string name)
    {
        if (_byName.TryGetValue(name, out var t)) return t;
        // Help the reader: names sharing the last two dotted components ("attn_q.weight").
        var parts = name.Split('.');
        string tail = parts.Length >= 2 ? "." + parts[^2] + "." + parts[^1] : name;
        var similar = _tensors.Where(x => x.Name.EndsWith(tail, StringComparison.Ordinal)).Take(5).Select(x => x.Name).ToArray();
        throw new ModelLoadException(
            $"GGUF file '{Path}' has no tensor '{name}' ({_tensors.Count} tensors)." + (similar.Length > 0 ? $" Similar names: {string.Join(", ", similar)}." : ""),
            Path, name);
    }

    /// <summary>The stored bytes of a tensor, a view of the mapped file.</summary>
    public ReadOnlySpan<byte> GetBytes(GgufTensorInfo info)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckOwn(info);
        return new ReadOnlySpan<byte>(_backing.Pointer + DataOffset + info.Offset, CheckedLength(info));
    }

    /// <summary>
    /// The stored bytes of a tensor as memory over the mapped file (nothing is copied). It stays valid while this file
    /// is open or retained (<see cref="Retain"/>).
    /// </summary>
    public ReadOnlyMemory<byte> GetMemory(GgufTensorInfo info)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckOwn(info);
        return new NativeMemory<byte>(_backing.Pointer + DataOffset + info.Offset, CheckedLength(info)).Memory;
    }

    /// <summary>A tensor's elements as typed memory over the mapped file (F32 as float, F16 as Half, BF16 as ushort bits).</summary>
    internal ReadOnlyMemory<T> GetMemory<T>(GgufTensorInfo info) where T : unmanaged
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckOwn(info);
        int length = CheckedLength(info);
        if (length % sizeof(T) != 0) throw new ArgumentException($"Tensor '{info.Name}' is not a whole number of {typeof(T).Name} values.", nameof(info));
        return new NativeMemory<T>((T*)(_backing.Pointer + DataOffset + info.Offset), length / sizeof(T)).Memory;
    }

    /// <summary>The tensor as a matrix of <see cref="GgufTensorInfo.Rows"/> × <see cref="GgufTensorInfo.Columns"/> in its stored format (a view, no copy).</summary>
    public QuantizedMatrix GetMatrix(GgufTensorInfo info)
    {
        var format = FormatOf(info);
        if (info.Rows > int.MaxValue || info.Columns > int.MaxValue)
            throw new ModelLoadException($"GGUF file '{Path}', tensor '{info.Name}': {info.Rows} rows of {info.Columns} is more than a matrix of int dimensions holds.", Path, info.Name);
        return new QuantizedMatrix(format, (int)info.Rows, (int)info.Columns, GetMemory(info));
    }

    /// <summary>Every element of the tensor widened or dequantized to fp32 (bit-exact with ggml's <c>to_float</c>), in row-major order.</summary>
    public float[] ReadFloat32(GgufTensorInfo info)
    {
        var format = FormatOf(info);
        if (info.ElementCount > Array.MaxLength)
            throw new ModelLoadException($"GGUF file '{Path}', tensor '{info.Name}' has {info.ElementCount} elements, more than one .NET array holds.", Path, info.Name);
        var result = GC.AllocateUninitializedArray<float>((int)info.ElementCount);
        BlockCodec.Dequantize(format, GetBytes(info), result);
        return result;
    }

    private QuantFormat FormatOf(GgufTensorInfo info) => info.Type.ToQuantFormat()
        ?? throw new ModelLoadException(
            $"GGUF file '{Path}', tensor '{info.Name}' has type {info.Type}, which this runtime cannot compute with (supported: {GgmlTypes.SupportedList}).",
            Path, info.Name);

    private void CheckOwn(GgufTensorInfo info)
    {
        if (!_byName.TryGetValue(info.Name, out var own) || !ReferenceEquals(own, info))
            throw new ArgumentException($"Tensor info '{info.Name}' does not belong to GGUF file '{Path}'.", nameof(info));
    }

    private int CheckedLength(GgufTensorInfo info)
    {
        if (info.ByteSize > int.MaxValue)
            throw new ModelLoadException($"GGUF file '{Path}', tensor '{info.Name}' is {info.ByteSize:N0} bytes, more than one span covers (2 GiB); read it in parts.", Path, info.Name);
        return (int)info.ByteSize;
    }

    // ------------------------------------------------------------------ typed metadata access

    /// <summary>A string value, or null when the key is absent; a <see cref="ModelLoadException"/> when it has another type.</summary>
    public string? GetString(string key)
    {
        if (!_byKey.TryGetValue(key, out var v)) return null;
        if (!v.TryGetString(out var s)) throw WrongType(key, v, "string");
        return s;
    }

    /// <summary>An integer value of any integer type, or null when absent; checked to lie in [min, max].</summary>
    public long? GetInteger(string key, long min = long.MinValue, long max = long.MaxValue)
    {
        if (!_byKey.TryGetValue(key, out var v)) return null;
        if (!v.TryGetInteger(out long x)) throw WrongType(key, v, "an integer");
        if (x < min || x > max)
            throw new ModelLoadException($"GGUF file '{Path}': metadata '{key}' = {x} is out of range; expected a value in [{min}, {max}].", Path, key);
        return x;
    }

    /// <summary>A float32/float64 value as a double, or null when absent.</summary>
    public double? GetReal(string key)
    {
        if (!_byKey.TryGetValue(key, out var v)) return null;
        if (v.TryGetReal(out double d)) return d;
        if (v.TryGetInteger(out long l)) return l;
        throw WrongType(key, v, "a number");
    }

    public bool? GetBool(string key)
    {
        if (!_byKey.TryGetValue(key, out var v)) return null;
        if (!v.TryGetBool(out bool b)) throw WrongType(key, v, "bool");
        return b;
    }

    /// <summary>A required value: a <see cref="ModelLoadException"/> naming the key when absent.</summary>
    public T Require<T>(string key, T? value) where T : struct
        => value ?? throw new ModelLoadException($"GGUF file '{Path}' has no metadata '{key}', which is required here.", Path, key);

    public string Require(string key, string? value)
        => value ?? throw new ModelLoadException($"GGUF file '{Path}' has no metadata '{key}', which is required here.", Path, key);

    internal ModelLoadException WrongType(string key, GgufValue v, string expected)
        => new($"GGUF file '{Path}': metadata '{key}' is {v.TypeName} ({v}); expected {expected}.", Path, key);

    // ------------------------------------------------------------------ lifetime

    /// <summary>Keeps the file mapped until the returned lease is disposed, even after this object is disposed.</summary>
    public IDisposable Retain()
    {
        lock (_byName)
        {
            ObjectDisposedException.ThrowIf(_references == 0, this);
            _references++;
        }
        return new Lease(this);
    }

    private sealed class Lease(GgufFile file) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) file.Release();
        }
    }

    private void Release()
    {
        lock (_byName)
        {
            if (--_references > 0) return;
        }
        _backing.Dispose();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Release();
    }

    // ------------------------------------------------------------------ opening

    /// <summary>Maps and parses a GGUF file; see the class summary for what is checked.</summary>
    public static GgufFile Open(string path, GgufLimits? limits = null)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new ModelLoadException("The GGUF file path is empty.", path);
        string full;
        try { full = System.IO.Path.GetFullPath(path); }
        catch (Exception ex) when (ex is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new ModelLoadException($"The GGUF path '{path}' is not a valid path: {ex.Message}", path, null, ex);
        }
        if (!File.Exists(full))
            throw new ModelLoadException(Directory.Exists(full) ? $"'{full}' is a folder; expected a .gguf file." : $"GGUF file '{full}' does not exist.", full);
        var backing = Backing.Map(full);
        return Parse(backing, limits);
    }

    /// <summary>Parses a GGUF image held in memory (tests, files being written); the bytes are copied into pinned memory.</summary>
    internal static GgufFile FromBytes(ReadOnlySpan<byte> bytes, string name = "(memory)", GgufLimits? limits = null)
        => Parse(Backing.Copy(bytes, name), limits);

    private static GgufFile Parse(Backing backing, GgufLimits? limits)
    {
        try
        {
            limits ??= new GgufLimits();
            limits.Validate();
            return new Parser(backing, limits).Run();
        }
        catch
        {
            backing.Dispose();
            throw;
        }
    }

    private sealed class Parser(Backing backing, GgufLimits limits)
    {
        private readonly byte* _p = backing.Pointer;
        private readonly long _len = backing.Length;
        private readonly string _path = backing.Path;
        private long _pos;

        private ModelLoadException Fail(string what, string? name = null) => new($"GGUF file '{_path}': {what}", _path, name);

        public GgufFile Run()
        {
            if (_len < 4 || ReadU32At(0) != Magic)
            {
                string seen = _len < 4 ? $"only {_len} bytes" : $"bytes {Convert.ToHexString(new ReadOnlySpan<byte>(_p, 4))}";
                throw Fail($"not a GGUF file: it should start with the magic 'GGUF' (47 47 55 46) but has {seen}.");
            }
            _pos = 4;
            uint version = U32("the version");
            if (version is not (2 or 3))
            {
                if (BinaryPrimitives.ReverseEndianness(version) is 2 or 3)
                    throw Fail($"it is a big-endian GGUF file (version {BinaryPrimitives.ReverseEndianness(version)}); only little-endian files are supported.");
                if (version == 1)
                    throw Fail("it is GGUF version 1 (32-bit counts), which llama.cpp dropped in 2023; re-convert the model with a current converter.");
                throw Fail($"GGUF version {version} is not supported; expected 2 or 3.");
            }
            ulong nTensors = U64("the tensor count");
            ulong nKv = U64("the metadata count");
            if (nTensors > (ulong)limits.MaxTensors)
                throw Fail($"the header declares {nTensors} tensors, above the limit of {limits.MaxTensors} (GgufLimits.MaxTensors).");
            if (nKv > (ulong)limits.MaxMetadataEntries)
                throw Fail($"the header declares {nKv} metadata entries, above the limit of {limits.MaxMetadataEntries} (GgufLimits.MaxMetadataEntries).");
            // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes, each tensor info 8 + 4 + 8 + 4 + 8.
            if (nKv > (ulong)(Remaining / 13))
                throw Fail($"the header declares {nKv} metadata entries but only {Remaining} bytes follow, room for at most {Remaining / 13}; the file is truncated or corrupt.");

            var metadata = new List<KeyValuePair<string, GgufValue>>((int)nKv);
            var keys = new HashSet<string>(StringComparer.Ordinal);
            for (ulong i = 0; i < nKv; i++)
            {
                long at = _pos;
                string key = String(limits.MaxKeyBytes, $"the key of metadata entry {i}", "GgufLimits.MaxKeyBytes");
                if (key.Length == 0) throw Fail($"metadata entry {i} (at byte {at}) has an empty key.");
                if (!keys.Add(key)) throw Fail($"metadata key '{key}' appears twice (the second time at byte {at}).", key);
                uint type = U32($"the type of metadata '{key}'");
                if (!GgufValue.IsKnownType(type))
                    throw Fail($"metadata '{key}' has value type {type}, which is not a GGUF type (0-12).", key);
                var value = Value((GgufValueType)type, key, 0);
                metadata.Add(new(key, value));
            }

            int alignment = DefaultAlignment;
            var alignEntry = metadata.FirstOrDefault(kv => kv.Key == AlignmentKey);
            if (alignEntry.Value is { } av)
            {
                if (av.Type != GgufValueType.UInt32)
                    throw Fail($"'{AlignmentKey}' is {av.TypeName}; expected uint32.", AlignmentKey);
                uint a = (uint)av.Raw;
                if (a == 0 || (a & (a - 1)) != 0 || a > limits.MaxAlignment)
                    throw Fail($"'{AlignmentKey}' = {a}; expected a power of two between 1 and {limits.MaxAlignment}.", AlignmentKey);
                alignment = (int)a;
            }

            if (nTensors > (ulong)(Remaining / 33))
                throw Fail($"the header declares {nTensors} tensors but only {Remaining} bytes follow the metadata, room for at most {Remaining / 33} tensor infos; the file is truncated or corrupt.");
            var tensors = new List<GgufTensorInfo>((int)nTensors);
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (ulong i = 0; i < nTensors; i++)
                tensors.Add(TensorInfo((int)i, alignment, names));

            long dataOffset = AlignUp(_pos, alignment);
            if (tensors.Count > 0 && dataOffset > _len)
                throw Fail($"the data section should start at byte {dataOffset} (after the tensor infos, aligned to {alignment}) but the file is {_len} bytes long; it is truncated.");
            long dataLength = Math.Max(0, _len - dataOffset);
            foreach (var t in tensors)
            {
                if (t.Offset > dataLength || t.ByteSize > dataLength - t.Offset)
                    throw Fail($"tensor '{t.Name}' ({t.Type} {t.DimensionsText}, {t.ByteSize} bytes at data offset {t.Offset}) ends at byte {dataOffset + t.Offset + t.ByteSize} of the file, which is {_len} bytes long; the file is truncated or the offset is wrong.", t.Name);
            }
            var ordered = tensors.OrderBy(t => t.Offset).ThenBy(t => t.Index).ToList();
            for (int i = 1; i < ordered.Count; i++)
            {
                var a = ordered[i - 1];
                var b = ordered[i];
                if (b.Offset < a.Offset + a.ByteSize)
                    throw Fail($"tensor '{b.Name}' (data offset {b.Offset}, {b.ByteSize} bytes) overlaps tensor '{a.Name}' (data offset {a.Offset}, {a.ByteSize} bytes).", b.Name);
            }
            return new GgufFile(backing, version, alignment, dataOffset, metadata, tensors);
        }

        private GgufTensorInfo TensorInfo(int index, int alignment, HashSet<string> names)
        {
            long at = _pos;
            string name = String(limits.MaxTensorNameBytes, $"the name of tensor info {index}", "GgufLimits.MaxTensorNameBytes");
            if (name.Length == 0) throw Fail($"tensor info {index} (at byte {at}) has an empty name.");
            if (!names.Add(name)) throw Fail($"tensor '{name}' appears twice (tensor infos {index} and an earlier one).", name);
            uint nDims = U32($"the dimension count of tensor '{name}'");
            if (nDims is < 1 or > 4)
                throw Fail($"tensor '{name}' has {nDims} dimensions; expected 1 to 4 (ggml's GGML_MAX_DIMS).", name);
            var dims = new long[nDims];
            long count = 1;
            for (int d = 0; d < nDims; d++)
            {
                ulong v = U64($"dimension {d} of tensor '{name}'");
                if (v == 0 || v > long.MaxValue)
                    throw Fail($"tensor '{name}' has dimension {d} = {v}; expected a value between 1 and {long.MaxValue}.", name);
                dims[d] = (long)v;
                try { count = checked(count * (long)v); }
                catch (OverflowException) { throw Fail($"tensor '{name}' has dimensions [{string.Join(", ", dims.Take(d + 1))}...] whose product does not fit 64 bits.", name); }
            }
            uint type = U32($"the type of tensor '{name}'");
            if (!GgmlTypes.IsKnown(type))
                throw Fail($"tensor '{name}' has ggml type {type}, which is not a known type (or one ggml retired).", name);
            var gt = (GgmlType)type;
            int be = gt.BlockElements();
            if (dims[0] % be != 0)
                throw Fail($"tensor '{name}' is {gt} with rows of {dims[0]} elements, but {gt} stores whole blocks of {be}: ne0 must be a multiple of {be}.", name);
            long bytes;
            try { bytes = checked(count / be * gt.BlockBytes()); }
            catch (OverflowException) { throw Fail($"tensor '{name}' ({gt}, {count} elements) needs more bytes than fit 64 bits.", name); }
            ulong off = U64($"the offset of tensor '{name}'");
            if (off > long.MaxValue)
                throw Fail($"tensor '{name}' has data offset {off}, beyond any file.", name);
            if ((long)off % alignment != 0)
                throw Fail($"tensor '{name}' has data offset {off}, which is not a multiple of the alignment {alignment}.", name);
            return new GgufTensorInfo(name, gt, dims, (long)off, bytes, count, index);
        }

        private GgufValue Value(GgufValueType type, string key, int depth)
        {
            switch (type)
            {
                case GgufValueType.UInt8: Need(1, key); return GgufValue.Of(_p[_pos++]);
                case GgufValueType.Int8: Need(1, key); return GgufValue.Of((sbyte)_p[_pos++]);
                case GgufValueType.UInt16: Need(2, key); { var v = BinaryPrimitives.ReadUInt16LittleEndian(Span(2)); _pos += 2; return GgufValue.Of(v); }
                case GgufValueType.Int16: Need(2, key); { var v = BinaryPrimitives.ReadInt16LittleEndian(Span(2)); _pos += 2; return GgufValue.Of(v); }
                case GgufValueType.UInt32: return GgufValue.Of(U32($"metadata '{key}'"));
                case GgufValueType.Int32: Need(4, key); { var v = BinaryPrimitives.ReadInt32LittleEndian(Span(4)); _pos += 4; return GgufValue.Of(v); }
                case GgufValueType.Float32: Need(4, key); { var v = BinaryPrimitives.ReadSingleLittleEndian(Span(4)); _pos += 4; return GgufValue.Of(v); }
                case GgufValueType.Bool:
                    {
                        Need(1, key);
                        byte b = _p[_pos];
                        if (b > 1) throw Fail($"metadata '{key}' is a bool stored as {b} at byte {_pos}; expected 0 or 1.", key);
                        _pos++;
                        return GgufValue.Of(b == 1);
                    }
                case GgufValueType.String: return GgufValue.Of(String(limits.MaxStringBytes, $"metadata '{key}'", "GgufLimits.MaxStringBytes"));
                case GgufValueType.UInt64: return GgufValue.Of(U64($"metadata '{key}'"));
                case GgufValueType.Int64: Need(8, key); { var v = BinaryPrimitives.ReadInt64LittleEndian(Span(8)); _pos += 8; return GgufValue.Of(v); }
                case GgufValueType.Float64: Need(8, key); { var v = BinaryPrimitives.ReadDoubleLittleEndian(Span(8)); _pos += 8; return GgufValue.Of(v); }
                case GgufValueType.Array: return Array(key, depth);
                default: throw Fail($"metadata '{key}' has value type {(uint)type}, which is not a GGUF type (0-12).", key);
            }
        }

        private GgufValue Array(string key, int depth)
        {
            if (depth >= limits.MaxArrayDepth)
                throw Fail($"metadata '{key}' nests arrays more than {limits.MaxArrayDepth} deep (GgufLimits.MaxArrayDepth).", key);
            uint et = U32($"the element type of array '{key}'");
            if (!GgufValue.IsKnownType(et))
                throw Fail($"array '{key}' has element type {et}, which is not a GGUF type (0-12).", key);
            var type = (GgufValueType)et;
            ulong n = U64($"the length of array '{key}'");
            if (n > (ulong)limits.MaxArrayElements)
                throw Fail($"array '{key}' declares {n} elements, above the limit of {limits.MaxArrayElements} (GgufLimits.MaxArrayElements).", key);
            int size = GgufValue.ScalarBytes(type);
            int min = size > 0 ? size : type == GgufValueType.String ? 8 : 12;
            if (n > (ulong)(Remaining / min))
                throw Fail($"array '{key}' declares {n} {GgufValue.TypeNameOf(type)} elements (at least {min} bytes each) but only {Remaining} bytes are left in the file.", key);
            int count = (int)n;
            switch (type)
            {
                case GgufValueType.UInt8: return GgufValue.Array(Block<byte>(count));
                case GgufValueType.Int8: return GgufValue.Array(Block<sbyte>(count));
                case GgufValueType.UInt16: return GgufValue.Array(Block<ushort>(count));
                case GgufValueType.Int16: return GgufValue.Array(Block<short>(count));
                case GgufValueType.UInt32: return GgufValue.Array(Block<uint>(count));
                case GgufValueType.Int32: return GgufValue.Array(Block<int>(count));
                case GgufValueType.Float32: return GgufValue.Array(Block<float>(count));
                case GgufValueType.UInt64: return GgufValue.Array(Block<ulong>(count));
                case GgufValueType.Int64: return GgufValue.Array(Block<long>(count));
                case GgufValueType.Float64: return GgufValue.Array(Block<double>(count));
                case GgufValueType.Bool:
                    {
                        var raw = new ReadOnlySpan<byte>(_p + _pos, count);
                        int bad = raw.IndexOfAnyExcept((byte)0, (byte)1);
                        if (bad >= 0) throw Fail($"array '{key}' element {bad} is a bool stored as {raw[bad]}; expected 0 or 1.", key);
                        var items = new bool[count];
                        for (int i = 0; i < count; i++) items[i] = raw[i] == 1;
                        _pos += count;
                        return GgufValue.Array(items);
                    }
                case GgufValueType.String:
                    {
                        var items = new string[count];
                        for (int i = 0; i < count; i++)
                            items[i] = String(limits.MaxStringBytes, $"element {i} of array '{key}'", "GgufLimits.MaxStringBytes");
                        return GgufValue.Array(items);
                    }
                default:
                    {
                        var items = new GgufValue[count];
                        for (int i = 0; i < count; i++)
                        {
                            items[i] = Array($"{key}[{i}]", depth + 1);
                        }
                        return GgufValue.Array(items);
                    }
            }
        }

        /// <summary>n little-endian elements copied out of the file (the count was checked against the bytes left).</summary>
        private T[] Block<T>(int n) where T : unmanaged
        {
            var result = new T[n];
            var src = new ReadOnlySpan<byte>(_p + _pos, n * sizeof(T));
            if (BitConverter.IsLittleEndian) src.CopyTo(MemoryMarshal.AsBytes(result.AsSpan()));
            else throw new PlatformNotSupportedException("GGUF files are read on little-endian machines only.");
            _pos += (long)n * sizeof(T);
            return result;
        }

        private string String(long maxBytes, string what, string limitName)
        {
            long at = _pos;
            ulong n = U64($"the length of {what}");
            if (n > (ulong)maxBytes)
                throw Fail($"{what} is a string of {n} bytes (at byte {at}), above the limit of {maxBytes} ({limitName}).");
            if (n > (ulong)Remaining)
                throw Fail($"{what} is a string of {n} bytes (at byte {at}) but only {Remaining} bytes are left in the file; it is truncated or corrupt.");
            var bytes = new ReadOnlySpan<byte>(_p + _pos, (int)n);
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw Fail($"{what} (at byte {at}) is not valid UTF-8.");
            _pos += (long)n;
            return Encoding.UTF8.GetString(bytes);
        }

        private long Remaining => _len - _pos;

        private void Need(long n, string key)
        {
            if (Remaining < n) throw Fail($"the file ends inside the value of metadata '{key}' (byte {_pos}, {n} bytes needed); it is truncated.", key);
        }

        private ReadOnlySpan<byte> Span(int n) => new(_p + _pos, n);

        private uint ReadU32At(long at) => BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(_p + at, 4));

        private uint U32(string what)
        {
            if (Remaining < 4) throw Fail($"the file ends where {what} should be (byte {_pos}); it is truncated.");
            uint v = ReadU32At(_pos);
            _pos += 4;
            return v;
        }

        private ulong U64(string what)
        {
            if (Remaining < 8) throw Fail($"the file ends where {what} should be (byte {_pos}); it is truncated.");
            ulong v = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(_p + _pos, 8));
            _pos += 8;
            return v;
        }
    }

    internal static long AlignUp(long x, long alignment) => (x + alignment - 1) / alignment * alignment;

    // ------------------------------------------------------------------ backing memory

    private sealed class Backing : IDisposable
    {
        private MemoryMappedFile? _mmf;
        private MemoryMappedViewAccessor? _view;
        private bool _pointerAcquired;
        private void* _native;

        public string Path { get; private init; } = "";
        public long Length { get; private set; }
        public byte* Pointer { get; private set; }

        public static Backing Map(string path)
        {
            var b = new Backing { Path = path };
            try
            {
                var fs = ModelFiles.OpenRegular(path); // a FIFO or a device is refused without blocking
                b.Length = fs.Length;
                if (b.Length == 0)
                {
                    fs.Dispose();
                    throw new ModelLoadException($"GGUF file '{path}' is empty; a GGUF file starts with the magic 'GGUF'.", path);
                }
                b._mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
                b._view = b._mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                byte* ptr = null;
                b._view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
                b._pointerAcquired = true;
                b.Pointer = ptr + b._view.PointerOffset;
                return b;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                b.Dispose();
                throw new ModelLoadException($"Cannot open GGUF file '{path}': {ex.Message}", path, null, ex);
            }
            catch
            {
                b.Dispose();
                throw;
            }
        }

        public static Backing Copy(ReadOnlySpan<byte> bytes, string name)
        {
            var b = new Backing { Path = name, Length = bytes.Length };
            b._native = NativeMemory.Alloc((nuint)Math.Max(1, bytes.Length));
            b.Pointer = (byte*)b._native;
            bytes.CopyTo(new Span<byte>(b._native, bytes.Length));
            return b;
        }

        public void Dispose()
        {
            if (_pointerAcquired && _view is not null)
            {
                _view.SafeMemoryMappedViewHandle.ReleasePointer();
                _pointerAcquired = false;
            }
            _view?.Dispose();
            _mmf?.Dispose();
            _view = null;
            _mmf = null;
            if (_native != null)
            {
                NativeMemory.Free(_native);
                _native = null;
            }
            Pointer = null;
        }
    }
}
