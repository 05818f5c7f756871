namespace AutoPrune.Loading.Gguf;

/// <summary>
/// llama.cpp's tensor names for LLaVA-1.5 (a <c>llama</c> text GGUF and a <c>clip</c> mmproj GGUF) against this runtime's
/// canonical names (<see cref="Models.Llava.TensorNames"/>), both ways, plus the q/k row permutation llama.cpp's converter applies.
/// <para>
/// The CLIP MLP: HF's <c>fc1</c> (hidden → intermediate) and <c>fc2</c> (intermediate → hidden). llama.cpp's LLaVA-1.5
/// converter (<c>convert_image_encoder_to_gguf.py</c>) names them <c>ffn_down</c> and <c>ffn_up</c> (swapped, "legacy"),
/// newer converters <c>ffn_up</c> and <c>ffn_down</c>; a reader tells them apart by shape (<see cref="ClipFfnIsLegacy"/>).
/// </para>
/// </summary>
internal static class GgufTensorNames
{
    public const string TextPrefix = "language_model.model.";
    public const string LayerPrefix = "language_model.model.layers.";
    public const string VisionPrefix = "vision_tower.vision_model.";
    public const string VisionLayerPrefix = "vision_tower.vision_model.encoder.layers.";

    private static readonly (string Hf, string Gguf)[] TextTop =
    [
        ("language_model.lm_head.weight", "output.weight"),
        ("language_model.model.embed_tokens.weight", "token_embd.weight"),
        ("language_model.model.norm.weight", "output_norm.weight"),
    ];

    private static readonly (string Hf, string Gguf)[] TextLayer =
    [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"), ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.weight", "attn_k.weight"), ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.weight", "attn_v.weight"), ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.weight", "attn_output.weight"), ("self_attn.o_proj.bias", "attn_output.bias"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"), ("mlp.gate_proj.bias", "ffn_gate.bias"),
        ("mlp.up_proj.weight", "ffn_up.weight"), ("mlp.up_proj.bias", "ffn_up.bias"),
        ("mlp.down_proj.weight", "ffn_down.weight"), ("mlp.down_proj.bias", "ffn_down.bias"),
    ];

    private static readonly (string Hf, string Gguf)[] VisionTop =
    [
        ("vision_tower.vision_model.embeddings.class_embedding", "v.class_embd"),
        ("vision_tower.vision_model.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
        ("vision_tower.vision_model.embeddings.patch_embedding.bias", "v.patch_embd.bias"),
        ("vision_tower.vision_model.embeddings.position_embedding.weight", "v.position_embd.weight"),
        ("vision_tower.vision_model.pre_layrnorm.weight", "v.pre_ln.weight"),
        ("vision_tower.vision_model.pre_layrnorm.bias", "v.pre_ln.bias"),
        ("vision_tower.vision_model.post_layernorm.weight", "v.post_ln.weight"),
        ("vision_tower.vision_model.post_layernorm.bias", "v.post_ln.bias"),
        ("multi_modal_projector.linear_1.weight", "mm.0.weight"),
        ("multi_modal_projector.linear_1.bias", "mm.0.bias"),
        ("multi_modal_projector.linear_2.weight", "mm.2.weight"),
        ("multi_modal_projector.linear_2.bias", "mm.2.bias"),
    ];

    private static readonly (string Hf, string Gguf)[] VisionLayer =
    [
        ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
        ("self_attn.out_proj", "attn_out"), ("layer_norm1", "ln1"), ("layer_norm2", "ln2"),
    ];

    /// <summary>The GGUF name of a canonical text-model tensor, or null when llama.cpp has none for it.</summary>
    public static string? TextToGguf(string canonical)
    {
        foreach (var (hf, g) in TextTop) if (canonical == hf) return g;
        if (!TryLayer(canonical, LayerPrefix, out int layer, out string suffix)) return null;
        foreach (var (hf, g) in TextLayer) if (suffix == hf) return $"blk.{layer}.{g}";
        return null;
    }

    /// <summary>The canonical name of a text GGUF tensor, or null when it is not one of LLaVA's.</summary>
    public static string? TextFromGguf(string gguf)
    {
        foreach (var (hf, g) in TextTop) if (gguf == g) return hf;
        if (!TryLayer(gguf, "blk.", out int layer, out string suffix)) return null;
        foreach (var (hf, g) in TextLayer) if (suffix == g) return $"{LayerPrefix}{layer}.{hf}";
        return null;
    }

    /// <summary>The mmproj name of a canonical vision-tower or projector tensor (fc1/fc2 in the legacy naming), or null.</summary>
    public static string? VisionToGguf(string canonical)
    {
        foreach (var (hf, top) in VisionTop) if (canonical == hf) return top;
        if (!TryLayer(canonical, VisionLayerPrefix, out int layer, out string suffix)) return null;
        int dot = suffix.LastIndexOf('.');
        if (dot < 0) return null;
        string module = suffix[..dot], kind = suffix[(dot + 1)..];
        if (kind is not ("weight" or "bias")) return null;
        string? g = module switch { "mlp.fc1" => "ffn_down", "mlp.fc2" => "ffn_up", _ => null };
        foreach (var (hf, gg) in VisionLayer) if (module == hf) g = gg;
        return g is null ? null : $"v.blk.{layer}.{g}.{kind}";
    }

    /// <summary>
    /// The canonical name of an mmproj tensor, or null. <paramref name="legacyFfn"/>: <c>ffn_down</c> is fc1 and <c>ffn_up</c>
    /// fc2 (llama.cpp's LLaVA-1.5 converter), otherwise the reverse.
    /// </summary>
    public static string? VisionFromGguf(string gguf, bool legacyFfn)
    {
        foreach (var (hf, g) in VisionTop) if (gguf == g) return hf;
        if (!TryLayer(gguf, "v.blk.", out int layer, out string suffix)) return null;
        int dot = suffix.LastIndexOf('.');
        if (dot < 0) return null;
        string module = suffix[..dot], kind = suffix[(dot + 1)..];
        if (kind is not ("weight" or "bias")) return null;
        string? hfModule = module switch
        {
            "ffn_down" => legacyFfn ? "mlp.fc1" : "mlp.fc2",
            "ffn_up" => legacyFfn ? "mlp.fc2" : "mlp.fc1",
            _ => null,
        };
        foreach (var (hf, g) in VisionLayer) if (module == g) hfModule = hf;
        return hfModule is null ? null : $"{VisionLayerPrefix}{layer}.{hfModule}.{kind}";
    }

    /// <summary>
    /// Whether a CLIP block's MLP uses the legacy (swapped) names: <c>ffn_down</c> maps hidden → intermediate, i.e. its ggml
    /// <c>ne</c> is [hidden, intermediate]. Null when the shapes cannot tell (intermediate = hidden).
    /// </summary>
    public static bool? ClipFfnIsLegacy(long[] ffnDownNe, long hidden, long intermediate)
    {
        if (hidden == intermediate || ffnDownNe.Length != 2) return null;
        if (ffnDownNe[0] == hidden && ffnDownNe[1] == intermediate) return true;
        if (ffnDownNe[0] == intermediate && ffnDownNe[1] == hidden) return false;
        return null;
    }

    private static bool TryLayer(string name, string prefix, out int layer, out string suffix)
    {
        layer = -1; suffix = "";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', prefix.Length);
        if (dot <= prefix.Length) return false;
        var digits = name.AsSpan(prefix.Length, dot - prefix.Length);
        foreach (char c in digits) if (c is < '0' or > '9') return false;
        if (digits.Length > 1 && digits[0] == '0') return false;
        if (!int.TryParse(digits, out layer)) return false;
        suffix = name[(dot + 1)..];
        return true;
    }

    /// <summary>True for the text tensors llama.cpp's converter permutes (q and k projections, weight and bias).</summary>
    public static bool IsRopePermuted(string canonical, out bool isKey)
    {
        isKey = canonical.EndsWith(".self_attn.k_proj.weight", StringComparison.Ordinal) || canonical.EndsWith(".self_attn.k_proj.bias", StringComparison.Ordinal);
        bool isQuery = canonical.EndsWith(".self_attn.q_proj.weight", StringComparison.Ordinal) || canonical.EndsWith(".self_attn.q_proj.bias", StringComparison.Ordinal);
        return canonical.StartsWith(LayerPrefix, StringComparison.Ordinal) && (isKey || isQuery);
    }

    /// <summary>
    /// The row order llama.cpp's converter gives q/k (<c>permute</c> in convert_hf_to_gguf.py): within each head of
    /// <c>rows / heads</c> rows, HF's two halves [x0..x(d/2−1) | y0..y(d/2−1)] become interleaved pairs [x0, y0, x1, y1, ...],
    /// which GGML's rope rotates as adjacent pairs. Returns, for each GGUF row g, the HF row it holds.
    /// </summary>
    public static int[] GgufRowSources(int rows, int heads)
    {
        if (heads < 1 || rows % heads != 0 || rows / heads % 2 != 0)
            throw new ArgumentException($"{rows} rows cannot be split into {heads} heads of an even size.");
        int d = rows / heads, half = d / 2;
        var src = new int[rows];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int s = 0; s < 2; s++)
                    src[h * d + 2 * i + s] = h * d + s * half + i;
        return src;
    }

    /// <summary>The inverse of <see cref="GgufRowSources"/>: for each HF row, the GGUF row holding it.</summary>
    public static int[] HfRowSources(int rows, int heads)
    {
        var g = GgufRowSources(rows, heads);
        var inv = new int[rows];
        for (int i = 0; i < rows; i++) inv[g[i]] = i;
        return inv;
    }
}
