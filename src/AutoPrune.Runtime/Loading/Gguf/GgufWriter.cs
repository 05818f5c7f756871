using System.Buffers.Binary;
using System.Text;

namespace AutoPrune.Loading.Gguf;

/// <summary>
/// Writes a GGUF file (version 3, little-endian): header, metadata in the order added, tensor infos, the data section
/// aligned to <c>general.alignment</c> (32 unless that key says otherwise), every tensor's data padded with zeros to the
/// alignment. This is the layout llama.cpp's <c>gguf.cpp</c> and gguf-py write, so equal content gives equal bytes.
/// Tensor data comes from memory or from a callback that streams it when the file is written (bounded memory for big
/// models); either way its length is checked against the tensor's type and dimensions.
/// </summary>
internal sealed class GgufWriter
{
    /// <summary>llama.cpp's <c>GGML_MAX_NAME</c> is 64 including the terminating zero.</summary>
    public const int MaxTensorNameBytes = 63;

    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly List<Tensor> _tensors = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    private sealed record Tensor(string Name, GgmlType Type, long[] Dimensions, long ByteSize, ReadOnlyMemory<byte> Data, Action<Stream>? Writer);

    /// <summary>Metadata in the order it will be written.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata => _metadata;

    /// <summary>Appends a key; a key may appear once.</summary>
    public GgufWriter Add(string key, GgufValue value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        if (_metadata.Any(kv => kv.Key == key)) throw new ArgumentException($"GGUF metadata key '{key}' is already set.", nameof(key));
        if (key == GgufFile.AlignmentKey)
        {
            if (value.Type != GgufValueType.UInt32 || (uint)value.Raw is var a && (a == 0 || (a & (a - 1)) != 0))
                throw new ArgumentException($"'{GgufFile.AlignmentKey}' must be a uint32 power of two.", nameof(value));
        }
        _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>
    /// Sets a key the way llama.cpp's <c>gguf_set_val_*</c> does: an existing entry is removed and the new one appended
    /// (so a quantizer's <c>general.file_type</c> ends up last); with <paramref name="inPlace"/> an existing entry keeps
    /// its position.
    /// </summary>
    public GgufWriter Set(string key, GgufValue value, bool inPlace = false)
    {
        int at = _metadata.FindIndex(kv => kv.Key == key);
        if (inPlace && at >= 0)
        {
            Remove(key);
            Add(key, value);
            var entry = _metadata[^1];
            _metadata.RemoveAt(_metadata.Count - 1);
            _metadata.Insert(at, entry);
            return this;
        }
        Remove(key);
        return Add(key, value);
    }

    public bool Remove(string key) => _metadata.RemoveAll(kv => kv.Key == key) > 0;

    /// <summary>The alignment the data section will use.</summary>
    public int Alignment
    {
        get
        {
            var e = _metadata.FirstOrDefault(kv => kv.Key == GgufFile.AlignmentKey);
            return e.Value is null ? GgufFile.DefaultAlignment : (int)(uint)e.Value.Raw;
        }
    }

    /// <summary>Adds a tensor whose bytes are in memory. <paramref name="dimensions"/> are ggml's <c>ne</c> (contiguous first).</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dimensions, ReadOnlyMemory<byte> data)
    {
        long size = Check(name, type, dimensions);
        if (data.Length != size)
            throw new ArgumentException($"Tensor '{name}' ({type} [{string.Join(", ", dimensions)}]) is {size} bytes, but {data.Length} were given.", nameof(data));
        _tensors.Add(new Tensor(name, type, (long[])dimensions.Clone(), size, data, null));
        _names.Add(name);
        return this;
    }

    /// <summary>Adds a tensor whose bytes <paramref name="writer"/> writes when the file is written (exactly its size, checked).</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dimensions, Action<Stream> writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        long size = Check(name, type, dimensions);
        _tensors.Add(new Tensor(name, type, (long[])dimensions.Clone(), size, default, writer));
        _names.Add(name);
        return this;
    }

    private long Check(string name, GgmlType type, long[] ne)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(ne);
        if (Encoding.UTF8.GetByteCount(name) > MaxTensorNameBytes)
            throw new ArgumentException($"Tensor name '{name}' is longer than {MaxTensorNameBytes} bytes, which llama.cpp cannot load.", nameof(name));
        if (_names.Contains(name)) throw new ArgumentException($"Tensor '{name}' is already added.", nameof(name));
        if (!GgmlTypes.IsKnown((uint)type)) throw new ArgumentOutOfRangeException(nameof(type), type, "not a ggml type");
        if (ne.Length is < 1 or > 4) throw new ArgumentException($"Tensor '{name}' has {ne.Length} dimensions; GGUF allows 1 to 4.", nameof(ne));
        long count = 1;
        foreach (long d in ne)
        {
            if (d < 1) throw new ArgumentException($"Tensor '{name}' has a dimension {d}; every dimension must be at least 1.", nameof(ne));
            count = checked(count * d);
        }
        int be = type.BlockElements();
        if (ne[0] % be != 0) throw new ArgumentException($"Tensor '{name}': {type} rows hold whole blocks of {be}; ne0 = {ne[0]} is not a multiple.", nameof(ne));
        return checked(count / be * type.BlockBytes());
    }

    /// <summary>Writes the file atomically: to a temporary file beside <paramref name="path"/>, renamed when complete.</summary>
    public void WriteTo(string path)
    {
        string full = Path.GetFullPath(path);
        string tmp = full + ".partial-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                WriteTo(fs);
                fs.Flush(flushToDisk: false);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Writes the whole file to <paramref name="output"/>.</summary>
    public void WriteTo(Stream output)
    {
        int align = Alignment;
        var w = new Output(output);
        w.U32(GgufFile.Magic);
        w.U32(3);
        w.U64((ulong)_tensors.Count);
        w.U64((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            w.Str(key);
            w.U32((uint)value.Type);
            WriteValue(w, value);
        }
        long offset = 0;
        foreach (var t in _tensors)
        {
            w.Str(t.Name);
            w.U32((uint)t.Dimensions.Length);
            foreach (long d in t.Dimensions) w.U64((ulong)d);
            w.U32((uint)t.Type);
            w.U64((ulong)offset);
            offset += GgufFile.AlignUp(t.ByteSize, align);
        }
        w.Pad(align);
        foreach (var t in _tensors)
        {
            long before = w.Position;
            if (t.Writer is null) w.Bytes(t.Data.Span);
            else t.Writer(w.Stream);
            long written = w.Position - before;
            if (written != t.ByteSize)
                throw new InvalidOperationException($"The data writer of tensor '{t.Name}' wrote {written} bytes; its type and dimensions need {t.ByteSize}.");
            w.Pad(align);
        }
    }

    private static void WriteValue(Output w, GgufValue v)
    {
        switch (v.Raw)
        {
            case byte x when !v.IsArray: w.Byte(x); break;
            case sbyte x when !v.IsArray: w.Byte((byte)x); break;
            case ushort x when !v.IsArray: w.U16(x); break;
            case short x when !v.IsArray: w.U16((ushort)x); break;
            case uint x when !v.IsArray: w.U32(x); break;
            case int x when !v.IsArray: w.U32((uint)x); break;
            case float x when !v.IsArray: w.U32(BitConverter.SingleToUInt32Bits(x)); break;
            case bool x when !v.IsArray: w.Byte(x ? (byte)1 : (byte)0); break;
            case string x when !v.IsArray: w.Str(x); break;
            case ulong x when !v.IsArray: w.U64(x); break;
            case long x when !v.IsArray: w.U64((ulong)x); break;
            case double x when !v.IsArray: w.U64(BitConverter.DoubleToUInt64Bits(x)); break;
            case Array a:
                w.U32((uint)v.ElementType);
                w.U64((ulong)a.Length);
                switch (a)
                {
                    case string[] s: foreach (var x in s) w.Str(x); break;
                    case bool[] b: foreach (var x in b) w.Byte(x ? (byte)1 : (byte)0); break;
                    case GgufValue[] nested: foreach (var x in nested) WriteValue(w, x); break;
                    case byte[] b: w.Bytes(b); break;
                    case sbyte[] b: foreach (var x in b) w.Byte((byte)x); break;
                    case ushort[] b: foreach (var x in b) w.U16(x); break;
                    case short[] b: foreach (var x in b) w.U16((ushort)x); break;
                    case uint[] b: foreach (var x in b) w.U32(x); break;
                    case int[] b: foreach (var x in b) w.U32((uint)x); break;
                    case float[] b: foreach (var x in b) w.U32(BitConverter.SingleToUInt32Bits(x)); break;
                    case ulong[] b: foreach (var x in b) w.U64(x); break;
                    case long[] b: foreach (var x in b) w.U64((ulong)x); break;
                    case double[] b: foreach (var x in b) w.U64(BitConverter.DoubleToUInt64Bits(x)); break;
                    default: throw new InvalidOperationException($"{a.GetType().Name} is not a GGUF array type.");
                }
                break;
            default:
                throw new InvalidOperationException($"{v.Raw.GetType().Name} is not a GGUF value type.");
        }
    }

    /// <summary>Little-endian primitive writes that count the bytes written.</summary>
    private sealed class Output(Stream s)
    {
        private readonly byte[] _b = new byte[8];
        private readonly Counting _stream = new(s);

        public long Position => _stream.Count;

        /// <summary>The output as a stream for tensor data writers (what they write is counted).</summary>
        public Stream Stream => _stream;

        public void Byte(byte v) { _b[0] = v; Bytes(_b.AsSpan(0, 1)); }
        public void U16(ushort v) { BinaryPrimitives.WriteUInt16LittleEndian(_b, v); Bytes(_b.AsSpan(0, 2)); }
        public void U32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(_b, v); Bytes(_b.AsSpan(0, 4)); }
        public void U64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(_b, v); Bytes(_b.AsSpan(0, 8)); }

        public void Str(string v)
        {
            var bytes = Encoding.UTF8.GetBytes(v);
            U64((ulong)bytes.Length);
            Bytes(bytes);
        }

        public void Bytes(ReadOnlySpan<byte> data) => _stream.Write(data);

        public void Pad(int align)
        {
            long pad = GgufFile.AlignUp(Position, align) - Position;
            Span<byte> zeros = stackalloc byte[64];
            zeros.Clear();
            while (pad > 0) { int n = (int)Math.Min(pad, 64); Bytes(zeros[..n]); pad -= n; }
        }
    }

    /// <summary>A write-only stream that counts what passes through to <paramref name="inner"/>.</summary>
    private sealed class Counting(Stream inner) : Stream
    {
        public long Count { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => Count;
        public override long Position { get => Count; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Count += buffer.Length;
        }
    }
}
