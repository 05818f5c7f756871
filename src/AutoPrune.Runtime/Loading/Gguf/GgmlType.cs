using AutoPrune.Compute.Quant;

namespace AutoPrune.Loading.Gguf;

/// <summary>
/// ggml tensor types as GGUF files store them (<c>enum ggml_type</c>). A file may hold any of these; which ones the runtime
/// can compute with is <see cref="GgmlTypes.ToQuantFormat"/>. Ids 4 and 5 (Q4_2, Q4_3), 31–33 and 36–38 (the removed
/// repacked Q4_0_4_4 / IQ4_NL_4_4 variants) were retired by ggml and are refused like unknown ids.
/// </summary>
internal enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
}

/// <summary>Block geometry of every ggml type (from ggml's type traits), so any GGUF tensor's byte size can be checked.</summary>
internal static class GgmlTypes
{
    private static readonly Dictionary<uint, (int BlockElements, int BlockBytes)> Traits = new()
    {
        [(uint)GgmlType.F32] = (1, 4), [(uint)GgmlType.F16] = (1, 2), [(uint)GgmlType.Q4_0] = (32, 18), [(uint)GgmlType.Q4_1] = (32, 20),
        [(uint)GgmlType.Q5_0] = (32, 22), [(uint)GgmlType.Q5_1] = (32, 24), [(uint)GgmlType.Q8_0] = (32, 34), [(uint)GgmlType.Q8_1] = (32, 36),
        [(uint)GgmlType.Q2_K] = (256, 84), [(uint)GgmlType.Q3_K] = (256, 110), [(uint)GgmlType.Q4_K] = (256, 144), [(uint)GgmlType.Q5_K] = (256, 176),
        [(uint)GgmlType.Q6_K] = (256, 210), [(uint)GgmlType.Q8_K] = (256, 292), [(uint)GgmlType.IQ2_XXS] = (256, 66), [(uint)GgmlType.IQ2_XS] = (256, 74),
        [(uint)GgmlType.IQ3_XXS] = (256, 98), [(uint)GgmlType.IQ1_S] = (256, 50), [(uint)GgmlType.IQ4_NL] = (32, 18), [(uint)GgmlType.IQ3_S] = (256, 110),
        [(uint)GgmlType.IQ2_S] = (256, 82), [(uint)GgmlType.IQ4_XS] = (256, 136), [(uint)GgmlType.I8] = (1, 1), [(uint)GgmlType.I16] = (1, 2),
        [(uint)GgmlType.I32] = (1, 4), [(uint)GgmlType.I64] = (1, 8), [(uint)GgmlType.F64] = (1, 8), [(uint)GgmlType.IQ1_M] = (256, 56),
        [(uint)GgmlType.BF16] = (1, 2), [(uint)GgmlType.TQ1_0] = (256, 54), [(uint)GgmlType.TQ2_0] = (256, 66), [(uint)GgmlType.MXFP4] = (32, 17),
    };

    /// <summary>True when <paramref name="id"/> is a ggml type a current GGUF file may contain.</summary>
    public static bool IsKnown(uint id) => Traits.ContainsKey(id);

    public static int BlockElements(this GgmlType t) => Traits[(uint)t].BlockElements;

    public static int BlockBytes(this GgmlType t) => Traits[(uint)t].BlockBytes;

    /// <summary>The format the kernels use for this type, or null when the runtime cannot compute with it.</summary>
    public static QuantFormat? ToQuantFormat(this GgmlType t) => t switch
    {
        GgmlType.F32 => QuantFormat.F32,
        GgmlType.F16 => QuantFormat.F16,
        GgmlType.BF16 => QuantFormat.BF16,
        GgmlType.Q4_0 => QuantFormat.Q4_0,
        GgmlType.Q5_0 => QuantFormat.Q5_0,
        GgmlType.Q8_0 => QuantFormat.Q8_0,
        GgmlType.Q4_K => QuantFormat.Q4_K,
        GgmlType.Q6_K => QuantFormat.Q6_K,
        _ => null,
    };

    public static GgmlType ToGgmlType(this QuantFormat f) => (GgmlType)(uint)f;

    /// <summary>The types <see cref="ToQuantFormat"/> accepts, for error messages.</summary>
    public const string SupportedList = "F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K";
}
