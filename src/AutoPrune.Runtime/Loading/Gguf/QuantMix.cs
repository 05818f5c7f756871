namespace AutoPrune.Loading.Gguf;

/// <summary>llama.cpp's file types (<c>enum llama_ftype</c>, <c>general.file_type</c>) this runtime can write.</summary>
internal enum LlamaFileType
{
    AllF32 = 0,
    MostlyF16 = 1,
    MostlyQ4_0 = 2,
    MostlyQ8_0 = 7,
    MostlyQ5_0 = 8,
    MostlyQ4_K_M = 15,
    MostlyQ6_K = 18,
    MostlyBF16 = 32,
}

/// <summary>
/// Which ggml type each tensor of a Llama text model gets for a <see cref="LlamaFileType"/>: llama.cpp's
/// <c>llama_tensor_get_type</c> rules for these file types (no importance matrix, default parameters).
/// <list type="bullet">
/// <item>Only 2-D tensors whose name ends in <c>weight</c> (and not <c>_norm.weight</c>) are quantized; the others keep F32.</item>
/// <item><c>output.weight</c> (or <c>token_embd.weight</c> when there is no output tensor): Q8_0 when its rows are not a
/// multiple of 256, else Q6_K unless the file type is Q8_0.</item>
/// <item>Q4_K_M: <c>attn_v</c> and <c>ffn_down</c> get Q6_K in the layers <c>use_more_bits</c> picks (the first and last
/// eighth, and every third layer between), Q4_K elsewhere.</item>
/// <item>A K-quant needs rows that are a multiple of 256; otherwise Q4_K falls back to Q5_0 and Q6_K to Q8_0 (and to F16
/// if even that does not divide the rows).</item>
/// </list>
/// Tensors must be presented in llama.cpp's processing order (<see cref="ProcessingOrder"/>): the per-layer counters
/// depend on it.
/// </summary>
internal static class QuantMix
{
    /// <summary>Type per tensor name; <paramref name="tensors"/> = (GGUF name, ne) in processing order; <paramref name="layers"/> = block count.</summary>
    public static Dictionary<string, GgmlType> Plan(LlamaFileType ftype, IReadOnlyList<(string Name, long[] Ne)> tensors, int layers)
    {
        var result = new Dictionary<string, GgmlType>(StringComparer.Ordinal);
        bool hasOutput = tensors.Any(t => t.Name == "output.weight");
        int nAttnV = tensors.Count(t => t.Name.Contains("attn_v.weight", StringComparison.Ordinal) || t.Name.Contains("attn_qkv.weight", StringComparison.Ordinal));
        int nFfnDown = layers;
        int iAttnV = 0, iFfnDown = 0;
        foreach (var (name, ne) in tensors)
        {
            bool quantize = name.EndsWith("weight", StringComparison.Ordinal) && ne.Length >= 2 && !name.Contains("_norm.weight", StringComparison.Ordinal);
            if (ftype == LlamaFileType.AllF32 || ne.Length < 2) { result[name] = GgmlType.F32; continue; }
            if (ftype == LlamaFileType.MostlyF16 || !quantize) { result[name] = ftype == LlamaFileType.MostlyBF16 ? GgmlType.BF16 : GgmlType.F16; continue; }
            if (ftype == LlamaFileType.MostlyBF16) { result[name] = GgmlType.BF16; continue; }

            GgmlType t = BaseType(ftype);
            if (name == "output.weight" || (!hasOutput && name == "token_embd.weight"))
            {
                if (ne[0] % 256 != 0) t = GgmlType.Q8_0;
                else if (t != GgmlType.Q8_0) t = GgmlType.Q6_K;
            }
            else if (name.Contains("attn_qkv.weight", StringComparison.Ordinal) && ftype == LlamaFileType.MostlyQ4_K_M)
                throw new NotSupportedException($"Tensor '{name}': llama.cpp gives a fused attn_qkv Q5_K in Q4_K_M, which this quantizer cannot write.");
            else if (name.Contains("attn_v.weight", StringComparison.Ordinal))
            {
                if (ftype == LlamaFileType.MostlyQ4_K_M && UseMoreBits(iAttnV, nAttnV)) t = GgmlType.Q6_K;
                iAttnV++;
            }
            else if (name.Contains("ffn_down", StringComparison.Ordinal))
            {
                if (ftype == LlamaFileType.MostlyQ4_K_M && UseMoreBits(iFfnDown, nFfnDown)) t = GgmlType.Q6_K;
                iFfnDown++;
            }

            if (ne[0] % t.BlockElements() != 0)
            {
                t = t switch
                {
                    GgmlType.Q4_K => GgmlType.Q5_0,
                    GgmlType.Q6_K => GgmlType.Q8_0,
                    _ => throw new NotSupportedException($"Tensor '{name}' has rows of {ne[0]} elements, not a multiple of {t}'s block of {t.BlockElements()}; llama.cpp cannot quantize it either."),
                };
                if (ne[0] % t.BlockElements() != 0) t = GgmlType.F16;
            }
            result[name] = t;
        }
        return result;
    }

    /// <summary>llama.cpp's <c>use_more_bits</c>: the first and last eighth of the layers, and every third layer in between.</summary>
    public static bool UseMoreBits(int i, int n) => i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;

    private static GgmlType BaseType(LlamaFileType ftype) => ftype switch
    {
        LlamaFileType.MostlyQ4_0 => GgmlType.Q4_0,
        LlamaFileType.MostlyQ5_0 => GgmlType.Q5_0,
        LlamaFileType.MostlyQ8_0 => GgmlType.Q8_0,
        LlamaFileType.MostlyQ4_K_M => GgmlType.Q4_K,
        LlamaFileType.MostlyQ6_K => GgmlType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(ftype), ftype, null),
    };

    /// <summary>
    /// llama.cpp's tensor order when it writes a quantized file (its <c>weight_name_comparer</c>): tensors outside the
    /// blocks first, then block by block, by name within each.
    /// </summary>
    public static int Compare(string a, string b)
    {
        int la = LayerOf(a), lb = LayerOf(b);
        return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a, b);
    }

    public static List<T> ProcessingOrder<T>(IEnumerable<T> items, Func<T, string> name)
    {
        var list = items.ToList();
        // A stable sort: names are unique, so order among equals never matters.
        return list.OrderBy(name, Comparer<string>.Create(Compare)).ToList();
    }

    private static int LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int end = 4;
        while (end < name.Length && char.IsAsciiDigit(name[end])) end++;
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int l) ? l : -1;
    }

    /// <summary>Parses the names users type: f16, bf16, f32, q8_0, q4_0, q5_0, q4_k_m, q6_k (case-insensitive).</summary>
    public static bool TryParse(string? s, out LlamaFileType ftype)
    {
        ftype = (s ?? "").ToLowerInvariant() switch
        {
            "f32" => LlamaFileType.AllF32,
            "f16" => LlamaFileType.MostlyF16,
            "bf16" => LlamaFileType.MostlyBF16,
            "q8_0" => LlamaFileType.MostlyQ8_0,
            "q4_0" => LlamaFileType.MostlyQ4_0,
            "q5_0" => LlamaFileType.MostlyQ5_0,
            "q4_k_m" => LlamaFileType.MostlyQ4_K_M,
            "q6_k" => LlamaFileType.MostlyQ6_K,
            _ => (LlamaFileType)(-1),
        };
        return (int)ftype >= 0;
    }

    /// <summary>The suffix llama.cpp's tools use in file names: <c>f16</c>, <c>Q8_0</c>, <c>Q4_K_M</c>, ...</summary>
    public static string FileSuffix(LlamaFileType ftype) => ftype switch
    {
        LlamaFileType.AllF32 => "f32",
        LlamaFileType.MostlyF16 => "f16",
        LlamaFileType.MostlyBF16 => "bf16",
        LlamaFileType.MostlyQ8_0 => "Q8_0",
        LlamaFileType.MostlyQ4_0 => "Q4_0",
        LlamaFileType.MostlyQ5_0 => "Q5_0",
        LlamaFileType.MostlyQ4_K_M => "Q4_K_M",
        LlamaFileType.MostlyQ6_K => "Q6_K",
        _ => throw new ArgumentOutOfRangeException(nameof(ftype), ftype, null),
    };
}
