namespace AutoPrune.Loading;

/// <summary>Element types the loader can read from a safetensors file.</summary>
internal enum DType
{
    F32,
    F16,
    BF16,
}

internal static class DTypeExtensions
{
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.F16 => 2,
        DType.BF16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>The spelling used in safetensors headers.</summary>
    public static string ToHeaderString(this DType dtype) => dtype switch
    {
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    public static bool TryParseHeaderString(string? s, out DType dtype)
    {
        switch (s)
        {
            case "F32": dtype = DType.F32; return true;
            case "F16": dtype = DType.F16; return true;
            case "BF16": dtype = DType.BF16; return true;
            default: dtype = default; return false;
        }
    }
}

/// <summary>Description of one tensor in a checkpoint (canonical name).</summary>
internal sealed record TensorInfo(string Name, DType DType, long[] Shape, string FilePath)
{
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d;
            return n;
        }
    }

    public static string FormatShape(ReadOnlySpan<long> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";
}
