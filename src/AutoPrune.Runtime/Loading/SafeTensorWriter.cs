using System.Buffers.Binary;
using System.Text.Json;

namespace AutoPrune.Loading;

/// <summary>
/// Writes safetensors files (F32, F16 or BF16 from fp32 data). Used by tests and tools to create
/// checkpoints. The JSON header is padded with spaces to a multiple of 8 bytes so that the data
/// region is 8-byte aligned, as the reference implementation does.
/// </summary>
internal static class SafeTensorWriter
{
    public static void Write(string path, IEnumerable<(string name, DType dtype, long[] shape, float[] data)> tensors)
        => Write(path, tensors, metadata: null);

    public static void Write(
        string path,
        IEnumerable<(string name, DType dtype, long[] shape, float[] data)> tensors,
        IReadOnlyDictionary<string, string>? metadata)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();

        var names = new HashSet<string>(StringComparer.Ordinal);
        using var headerStream = new MemoryStream();
        using (var w = new Utf8JsonWriter(headerStream))
        {
            w.WriteStartObject();
            if (metadata is not null)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape, data) in list)
            {
                if (!names.Add(name)) throw new ArgumentException($"Duplicate tensor name '{name}'.", nameof(tensors));
                long count = 1;
                foreach (var d in shape)
                {
                    if (d < 0) throw new ArgumentException($"Tensor '{name}' has a negative dimension.", nameof(tensors));
                    count = checked(count * d);
                }
                if (count != data.Length)
                    throw new ArgumentException($"Tensor '{name}': shape {TensorInfo.FormatShape(shape)} has {count} elements but data has {data.Length}.", nameof(tensors));
                long bytes = count * dtype.SizeInBytes();
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype.ToHeaderString());
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }

        var header = headerStream.ToArray();
        int padded = (header.Length + 7) / 8 * 8;

        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
        fs.Write(len);
        fs.Write(header);
        for (int i = header.Length; i < padded; i++) fs.WriteByte((byte)' ');

        var buffer = new byte[1 << 16];
        foreach (var (_, dtype, _, data) in list)
        {
            int size = dtype.SizeInBytes();
            int perChunk = buffer.Length / size;
            for (int start = 0; start < data.Length; start += perChunk)
            {
                int n = Math.Min(perChunk, data.Length - start);
                var span = buffer.AsSpan(0, n * size);
                for (int i = 0; i < n; i++)
                {
                    float f = data[start + i];
                    switch (dtype)
                    {
                        case DType.F32:
                            BinaryPrimitives.WriteSingleLittleEndian(span.Slice(i * 4), f);
                            break;
                        case DType.F16:
                            BinaryPrimitives.WriteHalfLittleEndian(span.Slice(i * 2), (Half)f); // IEEE round-to-nearest-even
                            break;
                        case DType.BF16:
                            BinaryPrimitives.WriteUInt16LittleEndian(span.Slice(i * 2), ToBFloat16Bits(f));
                            break;
                    }
                }
                fs.Write(span);
            }
        }
    }

    /// <summary>fp32 -> bf16 with round-to-nearest-even; NaN stays a quiet NaN with its sign.</summary>
    public static ushort ToBFloat16Bits(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f))
            return (ushort)((bits >> 16) | 0x0040);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
