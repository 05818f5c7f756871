namespace AutoPrune.Compute.Quant;

/// <summary>
/// Weight formats the quantized kernels compute with. The numeric values are ggml's type ids (<c>enum ggml_type</c>),
/// so a GGUF tensor's type converts with a cast once it is known to be one of these.
/// </summary>
internal enum QuantFormat
{
    F32 = 0,
    F16 = 1,
    /// <summary>Blocks of 32: an fp16 scale d and 32 4-bit values q, w = d·(q − 8). 18 bytes.</summary>
    Q4_0 = 2,
    /// <summary>Blocks of 32: fp16 d, 32 5-bit values (4 low bits in nibbles, the 5th bits in a u32), w = d·(q − 16). 22 bytes.</summary>
    Q5_0 = 6,
    /// <summary>Blocks of 32: fp16 d and 32 int8 q, w = d·q. 34 bytes.</summary>
    Q8_0 = 8,
    /// <summary>Super-blocks of 256: fp16 d and dmin, 8 sub-blocks of 32 with 6-bit scale and min, 4-bit q: w = d·sc·q − dmin·m. 144 bytes.</summary>
    Q4_K = 12,
    /// <summary>Super-blocks of 256: 16 sub-blocks of 16 with int8 scales, 6-bit q, fp16 d: w = d·sc·(q − 32). 210 bytes.</summary>
    Q6_K = 14,
    BF16 = 30,
}

/// <summary>Block geometry of each <see cref="QuantFormat"/>.</summary>
internal static class QuantFormats
{
    /// <summary>Every format, in ggml id order.</summary>
    public static readonly QuantFormat[] All =
        [QuantFormat.F32, QuantFormat.F16, QuantFormat.Q4_0, QuantFormat.Q5_0, QuantFormat.Q8_0, QuantFormat.Q4_K, QuantFormat.Q6_K, QuantFormat.BF16];

    /// <summary>Elements per block (1 for the plain float formats).</summary>
    public static int BlockElements(this QuantFormat f) => f switch
    {
        QuantFormat.F32 or QuantFormat.F16 or QuantFormat.BF16 => 1,
        QuantFormat.Q4_0 or QuantFormat.Q5_0 or QuantFormat.Q8_0 => 32,
        QuantFormat.Q4_K or QuantFormat.Q6_K => 256,
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, null),
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(this QuantFormat f) => f switch
    {
        QuantFormat.F32 => 4,
        QuantFormat.F16 or QuantFormat.BF16 => 2,
        QuantFormat.Q4_0 => 18,
        QuantFormat.Q5_0 => 22,
        QuantFormat.Q8_0 => 34,
        QuantFormat.Q4_K => 144,
        QuantFormat.Q6_K => 210,
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, null),
    };

    /// <summary>True for the block-quantized formats (not F32, F16, BF16).</summary>
    public static bool IsBlockQuantized(this QuantFormat f) => f.BlockElements() > 1;

    /// <summary>ggml's name of the type (<c>"Q4_K"</c>, <c>"F16"</c>, ...).</summary>
    public static string Name(this QuantFormat f) => f.ToString();

    /// <summary>Bytes of one row of <paramref name="cols"/> elements; <paramref name="cols"/> must be a multiple of the block size.</summary>
    public static long RowBytes(this QuantFormat f, long cols)
    {
        int be = f.BlockElements();
        if (cols < 0 || cols % be != 0)
            throw new ArgumentException($"A {f} row holds whole blocks of {be} elements; {cols} columns is not a multiple of {be}.", nameof(cols));
        return cols / be * f.BlockBytes();
    }

    /// <summary>Parses ggml's type name (case-insensitive): <c>q8_0</c>, <c>Q4_K</c>, <c>f16</c>, ...</summary>
    public static bool TryParse(string? name, out QuantFormat format)
    {
        foreach (var f in All)
            if (string.Equals(f.ToString(), name, StringComparison.OrdinalIgnoreCase)) { format = f; return true; }
        format = default;
        return false;
    }
}
