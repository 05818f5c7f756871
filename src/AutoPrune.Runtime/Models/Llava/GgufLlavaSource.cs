using System.Text.Json.Nodes;
using AutoPrune.Compute.Quant;

using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;

namespace AutoPrune.Models.Llava;

/// <summary>
/// A LLaVA-1.5 model as llama.cpp stores it — a text GGUF (<c>general.architecture = llama</c>) and an mmproj GGUF
/// (<c>clip</c>, <c>clip.projector_type = mlp</c>) — seen through canonical tensor names (<see cref="TensorNames"/>):
/// <c>blk.3.attn_q.weight</c> is <c>language_model.model.layers.3.self_attn.q_proj.weight</c> with llama.cpp's rope row
/// permutation undone, <c>v.blk.0.ffn_down.weight</c> is fc1 or fc2 as its shape says, and so on. The metadata gives the
/// <see cref="LlavaConfig"/> (<see cref="ConfigJson"/> is the equivalent <c>config.json</c>), the vocabulary
/// (<see cref="Vocabulary"/>), the image normalisation and the chat template.
/// <para>
/// Tensors read as fp32 are dequantized exactly; weights stored F32/F16/BF16 and not permuted are views of the mapped file
/// (<see cref="ReadWeight"/>), quantized ones are available as they are stored through <see cref="ReadMatrix"/>.
/// </para>
/// </summary>
internal sealed class GgufLlavaSource : ITensorSource, IDisposable
{
    private sealed record Entry(GgufFile File, GgufTensorInfo Info, int PermuteHeads);

    private readonly Dictionary<string, Entry> _entries;
    private readonly List<string> _unmapped;
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);

    private GgufLlavaSource(GgufFile text, GgufFile mmproj, Dictionary<string, Entry> entries, List<string> unmapped,
        JsonObject configJson, LlavaConfig config, GgufVocabulary vocabulary, float[] mean, float[] std)
    {
        Text = text; Mmproj = mmproj; _entries = entries; _unmapped = unmapped;
        ConfigJson = configJson; Config = config; Vocabulary = vocabulary; ImageMean = mean; ImageStd = std;
    }

    public GgufFile Text { get; }
    public GgufFile Mmproj { get; }

    /// <summary>The model's config in <c>config.json</c> form (Hugging Face field names), as derived from the metadata.</summary>
    public JsonObject ConfigJson { get; }

    /// <summary><see cref="ConfigJson"/> parsed and validated.</summary>
    public LlavaConfig Config { get; }

    public GgufVocabulary Vocabulary { get; }

    /// <summary><c>clip.vision.image_mean</c> / <c>image_std</c> (CLIP's defaults when absent).</summary>
    public float[] ImageMean { get; }
    public float[] ImageStd { get; }

    /// <summary><c>tokenizer.chat_template</c>, when the text GGUF has one.</summary>
    public string? ChatTemplate => Vocabulary.ChatTemplate;

    /// <summary>Canonical names of every tensor, sorted.</summary>
    public IReadOnlyList<string> Names => _entries.Keys.Order(StringComparer.Ordinal).ToList();

    /// <summary>The ggml type a canonical tensor is stored in.</summary>
    public GgmlType TypeOf(string name) => Find(name).Info.Type;

    /// <summary>The GGUF tensor behind a canonical name (its file and info).</summary>
    public (GgufFile File, GgufTensorInfo Info) Locate(string name) { var e = Find(name); return (e.File, e.Info); }

    // ------------------------------------------------------------------ opening

    /// <summary>Opens a text GGUF and its mmproj GGUF.</summary>
    public static GgufLlavaSource Open(string textPath, string mmprojPath, GgufLimits? limits = null)
    {
        var text = GgufFile.Open(textPath, limits);
        GgufFile? mmproj = null;
        try
        {
            mmproj = GgufFile.Open(mmprojPath, limits);
            return Build(text, mmproj);
        }
        catch
        {
            mmproj?.Dispose();
            text.Dispose();
            throw;
        }
    }

    /// <summary>Opens the folder's two GGUF files: the one whose architecture is <c>llama</c> and the <c>clip</c> one.</summary>
    public static GgufLlavaSource OpenFolder(string folder, GgufLimits? limits = null)
    {
        string full = Path.GetFullPath(folder);
        if (!Directory.Exists(full)) throw new ModelLoadException($"GGUF model folder '{full}' does not exist.", full);
        var files = Directory.GetFiles(full, "*.gguf").Order(StringComparer.Ordinal).ToList();
        var text = new List<string>();
        var clip = new List<string>();
        foreach (var f in files)
        {
            using var g = GgufFile.Open(f, limits);
            (g.GetString("general.architecture") == "clip" ? clip : text).Add(f);
        }
        if (text.Count != 1 || clip.Count != 1)
            throw new ModelLoadException(
                $"GGUF model folder '{full}' should hold one text model GGUF and one mmproj (general.architecture = clip) GGUF; it has " +
                $"{text.Count} text file(s) [{string.Join(", ", text.Select(Path.GetFileName))}] and {clip.Count} mmproj file(s) [{string.Join(", ", clip.Select(Path.GetFileName))}].", full);
        return Open(text[0], clip[0], limits);
    }

    private static GgufLlavaSource Build(GgufFile text, GgufFile mmproj)
    {
        string arch = text.Require("general.architecture", text.GetString("general.architecture"));
        if (arch != "llama")
            throw new ModelLoadException($"GGUF file '{text.Path}': general.architecture = '{arch}'; the LLaVA-1.5 text model must be 'llama'.", text.Path, "general.architecture");
        string march = mmproj.Require("general.architecture", mmproj.GetString("general.architecture"));
        if (march != "clip")
            throw new ModelLoadException($"GGUF file '{mmproj.Path}': general.architecture = '{march}'; an mmproj file is 'clip'.", mmproj.Path, "general.architecture");

        var vocab = GgufVocabulary.Read(text);
        var (json, mean, std) = DeriveConfig(text, mmproj, vocab);
        string source = $"{text.Path} + {mmproj.Path}";
        var config = LlavaConfig.Parse(json.ToJsonString(), source);
        var tc = config.TextConfig;

        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var unmapped = new List<string>();
        void Add(string canonical, GgufFile f, GgufTensorInfo t, int heads)
        {
            if (!entries.TryAdd(canonical, new Entry(f, t, heads)))
                throw new ModelLoadException($"GGUF files '{source}': tensors '{entries[canonical].Info.Name}' and '{t.Name}' both map to '{canonical}'.", f.Path, t.Name);
        }
        foreach (var t in text.Tensors)
        {
            string? c = GgufTensorNames.TextFromGguf(t.Name);
            if (c is null) { unmapped.Add(t.Name); continue; }
            int heads = GgufTensorNames.IsRopePermuted(c, out bool isKey) ? (isKey ? tc.NumKeyValueHeads : tc.NumAttentionHeads) : 0;
            if (heads > 0 && t.Rows % heads != 0 && t.Dimensions.Length > 1)
                throw new ModelLoadException($"GGUF file '{text.Path}': tensor '{t.Name}' has {t.Rows} rows, not a multiple of its {heads} heads.", text.Path, t.Name);
            Add(c, text, t, heads);
        }
        long hidden = config.VisionConfig.HiddenSize;
        foreach (var t in mmproj.Tensors)
        {
            bool legacy = true;
            if (t.Name.StartsWith("v.blk.", StringComparison.Ordinal) && (t.Name.Contains(".ffn_down.", StringComparison.Ordinal) || t.Name.Contains(".ffn_up.", StringComparison.Ordinal)))
            {
                // llama.cpp's rule (clip.cpp): the names are swapped when ffn_down's rows are n_embd long (it maps hidden → intermediate).
                string block = t.Name[..t.Name.IndexOf(".ffn_", StringComparison.Ordinal)];
                legacy = mmproj.TryGetTensor(block + ".ffn_down.weight", out var down) && down.Dimensions[0] == hidden;
            }
            string? c = GgufTensorNames.VisionFromGguf(t.Name, legacy);
            if (c is null) { unmapped.Add(t.Name); continue; }
            Add(c, mmproj, t, 0);
        }
        return new GgufLlavaSource(text, mmproj, entries, unmapped, json, config, vocab, mean, std);
    }

    /// <summary>
    /// The <c>config.json</c> equivalent of the two files' metadata. Text: llama.* keys; vision: clip.vision.* keys, the stored
    /// layers with <c>clip.vision.feature_layer</c> (default: the output of the last stored layer), CLS dropped, quick_gelu unless
    /// <c>clip.use_gelu</c>; the image token is the vocabulary's <c>&lt;image&gt;</c> (else the id after the vocabulary).
    /// </summary>
    internal static (JsonObject Json, float[] Mean, float[] Std) DeriveConfig(GgufFile text, GgufFile mmproj, GgufVocabulary vocab)
    {
        const string a = "llama.";
        long Req(GgufFile f, string key, long min = 1, long max = int.MaxValue) => f.Require(key, f.GetInteger(key, min, max));
        long? Opt(GgufFile f, string key, long min = 0, long max = int.MaxValue) => f.GetInteger(key, min, max);

        if (Opt(text, a + "expert_count") is > 0)
            throw new ModelLoadException($"GGUF file '{text.Path}': llama.expert_count > 0 (a mixture of experts); LLaVA-1.5 text models are dense.", text.Path, a + "expert_count");
        string? scaling = text.GetString(a + "rope.scaling.type");
        if (scaling is not (null or "none"))
            throw new ModelLoadException($"GGUF file '{text.Path}': {a}rope.scaling.type = '{scaling}'; scaled RoPE is not supported.", text.Path, a + "rope.scaling.type");

        long heads = Req(text, a + "attention.head_count");
        long hiddenSize = Req(text, a + "embedding_length");
        long headDim = Opt(text, a + "attention.key_length", 1) ?? (hiddenSize / heads);
        long? ropeDim = Opt(text, a + "rope.dimension_count", 1);
        if (ropeDim is long rd && rd != headDim)
            throw new ModelLoadException($"GGUF file '{text.Path}': {a}rope.dimension_count = {rd} but the head size is {headDim}; partial rotary embeddings are not supported.", text.Path, a + "rope.dimension_count");
        if (Opt(text, a + "attention.value_length", 1) is long vl && vl != headDim)
            throw new ModelLoadException($"GGUF file '{text.Path}': {a}attention.value_length = {vl} differs from key_length {headDim}.", text.Path, a + "attention.value_length");
        long vocabSize = Opt(text, a + "vocab_size", 1) ?? vocab.Tokens.Length;
        if (vocabSize != vocab.Tokens.Length)
            throw new ModelLoadException($"GGUF file '{text.Path}': {a}vocab_size = {vocabSize} but tokenizer.ggml.tokens has {vocab.Tokens.Length} tokens.", text.Path, a + "vocab_size");
        bool tied = !text.TryGetTensor("output.weight", out _);
        int imageToken = vocab.IdOf("<image>");

        var textConfig = new JsonObject
        {
            ["model_type"] = "llama",
            ["hidden_size"] = hiddenSize,
            ["intermediate_size"] = Req(text, a + "feed_forward_length"),
            ["num_hidden_layers"] = Req(text, a + "block_count"),
            ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = Opt(text, a + "attention.head_count_kv", 1) ?? heads,
            ["head_dim"] = headDim,
            ["rms_norm_eps"] = text.Require(a + "attention.layer_norm_rms_epsilon", text.GetReal(a + "attention.layer_norm_rms_epsilon")),
            ["rope_theta"] = text.GetReal(a + "rope.freq_base") ?? 10000.0,
            ["max_position_embeddings"] = Req(text, a + "context_length"),
            ["vocab_size"] = vocabSize,
            ["bos_token_id"] = vocab.BosId,
            ["eos_token_id"] = vocab.EosId,
            ["tie_word_embeddings"] = tied,
            ["hidden_act"] = "silu",
        };
        if (vocab.PadId is int pad) textConfig["pad_token_id"] = pad;

        const string v = "clip.vision.";
        if (mmproj.GetBool("clip.has_vision_encoder") == false)
            throw new ModelLoadException($"GGUF file '{mmproj.Path}': clip.has_vision_encoder is false; an mmproj must hold a vision encoder.", mmproj.Path, "clip.has_vision_encoder");
        string projector = mmproj.GetString("clip.projector_type") ?? "mlp";
        if (projector != "mlp")
            throw new ModelLoadException($"GGUF file '{mmproj.Path}': clip.projector_type = '{projector}'; LLaVA-1.5's two-layer MLP projector ('mlp') is supported.", mmproj.Path, "clip.projector_type");
        long blocks = Req(mmproj, v + "block_count");
        long featureLayer = blocks;
        if (mmproj.TryGetValue(v + "feature_layer", out var fl))
        {
            if (!fl.TryGetIntegerArray(out var layers) || layers.Length != 1)
                throw new ModelLoadException($"GGUF file '{mmproj.Path}': {v}feature_layer is {fl}; LLaVA-1.5 takes one feature layer (a one-element integer array).", mmproj.Path, v + "feature_layer");
            featureLayer = layers[0];
            if (featureLayer < 0 || featureLayer > blocks)
                throw new ModelLoadException($"GGUF file '{mmproj.Path}': {v}feature_layer = {featureLayer}, outside the {blocks} stored layers (0 to {blocks}).", mmproj.Path, v + "feature_layer");
        }
        bool gelu = mmproj.GetBool("clip.use_gelu") ?? false;
        if (mmproj.GetBool("clip.use_silu") == true)
            throw new ModelLoadException($"GGUF file '{mmproj.Path}': clip.use_silu is true; CLIP's MLP uses quick_gelu or gelu.", mmproj.Path, "clip.use_silu");
        long imageSize = Req(mmproj, v + "image_size"), patch = Req(mmproj, v + "patch_size");
        var visionConfig = new JsonObject
        {
            ["model_type"] = "clip_vision_model",
            ["hidden_size"] = Req(mmproj, v + "embedding_length"),
            ["intermediate_size"] = Req(mmproj, v + "feed_forward_length"),
            ["projection_dim"] = Opt(mmproj, v + "projection_dim") ?? 0,
            ["num_hidden_layers"] = blocks,
            ["num_attention_heads"] = Req(mmproj, v + "attention.head_count"),
            ["num_channels"] = 3,
            ["image_size"] = imageSize,
            ["patch_size"] = patch,
            ["layer_norm_eps"] = mmproj.Require(v + "attention.layer_norm_epsilon", mmproj.GetReal(v + "attention.layer_norm_epsilon")),
            ["hidden_act"] = gelu ? "gelu" : "quick_gelu",
        };
        long grid = patch > 0 ? imageSize / patch : 0;
        var json = new JsonObject
        {
            ["model_type"] = "llava",
            ["image_token_index"] = imageToken >= 0 ? imageToken : vocabSize,
            ["vision_feature_layer"] = featureLayer,
            ["vision_feature_select_strategy"] = "default",
            ["projector_hidden_act"] = "gelu",
            ["multimodal_projector_bias"] = mmproj.TryGetTensor("mm.0.bias", out _),
            ["tie_word_embeddings"] = tied,
            ["image_seq_length"] = grid * grid,
            ["text_config"] = textConfig,
            ["vision_config"] = visionConfig,
        };
        if (vocab.PadId is int p) json["pad_token_id"] = p;

        float[] Stats(string key, float[] fallback)
        {
            if (!mmproj.TryGetValue(key, out var s)) return fallback;
            if (!s.TryGetFloatArray(out var values) || values.Length != 3 || values.Any(x => !float.IsFinite(x)))
                throw new ModelLoadException($"GGUF file '{mmproj.Path}': {key} is {s}; expected 3 finite floats (one per RGB channel).", mmproj.Path, key);
            return values;
        }
        var mean = Stats(v + "image_mean", [0.48145466f, 0.4578275f, 0.40821073f]);
        var std = Stats(v + "image_std", [0.26862954f, 0.26130258f, 0.27577711f]);
        if (std.Any(x => x <= 0))
            throw new ModelLoadException($"GGUF file '{mmproj.Path}': {v}image_std has a value ≤ 0.", mmproj.Path, v + "image_std");
        return (json, mean, std);
    }

    // ------------------------------------------------------------------ reading

    public bool Contains(string name) => _entries.ContainsKey(TensorNames.ToCanonical(name));

    private Entry Find(string name)
    {
        string canonical = TensorNames.ToCanonical(name);
        if (_entries.TryGetValue(canonical, out var e)) return e;
        string? gguf = GgufTensorNames.TextToGguf(canonical) ?? GgufTensorNames.VisionToGguf(canonical);
        throw new ModelLoadException(
            $"Tensor '{canonical}' is not in the GGUF model ('{Text.Path}', '{Mmproj.Path}')" + (gguf is null ? "." : $"; llama.cpp would name it '{gguf}'."),
            Text.Path, canonical);
    }

    private static void CheckShape(Entry e, long[] expected, string canonical)
    {
        if (expected is null || expected.Length == 0) return;
        var shape = e.Info.RowMajorShape;
        if (!expected.AsSpan().SequenceEqual(shape))
            throw new ModelLoadException(
                $"Tensor '{canonical}' ('{e.Info.Name}' in '{e.File.Path}', ne {e.Info.DimensionsText}) has shape {TensorInfo.FormatShape(shape)} but {TensorInfo.FormatShape(expected)} was expected.",
                e.File.Path, canonical);
    }

    private void MarkRead(string canonical)
    {
        lock (_read) _read.Add(canonical);
    }

    /// <summary>The tensor in HF layout as fp32: dequantized exactly, q/k rows put back in HF order.</summary>
    public float[] ReadFloat32(string name, params long[] expectedShape)
    {
        string canonical = TensorNames.ToCanonical(name);
        var e = Find(canonical);
        CheckShape(e, expectedShape, canonical);
        var values = e.File.ReadFloat32(e.Info);
        if (e.PermuteHeads > 0) values = Unpermute(values, e);
        MarkRead(canonical);
        return values;
    }

    /// <summary>As <see cref="ReadFloat32"/>, rounded to fp16 (exact for F16 tensors; quantized ones lose what fp16 cannot hold).</summary>
    public Half[] ReadFloat16(string name, params long[] expectedShape)
    {
        string canonical = TensorNames.ToCanonical(name);
        var e = Find(canonical);
        CheckShape(e, expectedShape, canonical);
        Half[] result;
        if (e.Info.Type == GgmlType.F16 && e.PermuteHeads == 0)
            result = e.File.GetMemory<Half>(e.Info).ToArray();
        else
        {
            var f = ReadFloat32(canonical);
            result = new Half[f.Length];
            System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(f, result);
        }
        MarkRead(canonical);
        return result;
    }

    /// <summary>
    /// F32/F16/BF16 tensors that need no row permutation: a view of the mapped file. Permuted ones: a copy in HF order.
    /// Quantized ones: dequantized to fp32 (the quantized form is <see cref="ReadMatrix"/>).
    /// </summary>
    public WeightData ReadWeight(string name, params long[] expectedShape)
    {
        string canonical = TensorNames.ToCanonical(name);
        var e = Find(canonical);
        CheckShape(e, expectedShape, canonical);
        WeightData result;
        if (e.PermuteHeads == 0 && e.Info.Type == GgmlType.F16) result = WeightData.Of(e.File.GetMemory<Half>(e.Info));
        else if (e.PermuteHeads == 0 && e.Info.Type == GgmlType.F32) result = WeightData.Of(e.File.GetMemory<float>(e.Info));
        else if (e.PermuteHeads == 0 && e.Info.Type == GgmlType.BF16) result = WeightData.OfBFloat16(e.File.GetMemory<ushort>(e.Info));
        else if (e.Info.Type == GgmlType.F16) result = WeightData.Of(ReadFloat16(canonical));
        else result = WeightData.Of(ReadFloat32(canonical));
        MarkRead(canonical);
        return result;
    }

    /// <summary>
    /// The tensor as a <see cref="QuantizedMatrix"/> of HF shape [rows, cols] in its stored format: a view of the file, or
    /// (q/k projections) a copy with the rows in HF order — rows are whole blocks, so nothing is re-quantized.
    /// </summary>
    public QuantizedMatrix ReadMatrix(string name, params long[] expectedShape)
    {
        string canonical = TensorNames.ToCanonical(name);
        var e = Find(canonical);
        CheckShape(e, expectedShape, canonical);
        var m = e.File.GetMatrix(e.Info);
        if (e.PermuteHeads > 0) m = m.PermuteRows(GgufTensorNames.HfRowSources(m.Rows, e.PermuteHeads));
        MarkRead(canonical);
        return m;
    }

    private static float[] Unpermute(float[] values, Entry e)
    {
        int rows = (int)(e.Info.Dimensions.Length == 1 ? e.Info.Dimensions[0] : e.Info.Rows);
        int cols = values.Length / rows;
        var src = GgufTensorNames.HfRowSources(rows, e.PermuteHeads);
        var result = new float[values.Length];
        for (int r = 0; r < rows; r++) values.AsSpan(src[r] * cols, cols).CopyTo(result.AsSpan(r * cols, cols));
        return result;
    }

    /// <summary>Canonical names never read, then the GGUF tensors that have no canonical name (as their GGUF names).</summary>
    public IReadOnlyList<string> UnusedTensors()
    {
        lock (_read)
            return _entries.Keys.Where(n => !_read.Contains(n)).Order(StringComparer.Ordinal).Concat(_unmapped).ToList();
    }

    /// <summary>Keeps both files mapped until the lease is disposed (weights handed out as views stay valid).</summary>
    public IDisposable Retain()
    {
        var a = Text.Retain();
        var b = Mmproj.Retain();
        return new Both(a, b);
    }

    private sealed class Both(IDisposable a, IDisposable b) : IDisposable
    {
        public void Dispose() { a.Dispose(); b.Dispose(); }
    }

    public void Dispose()
    {
        Text.Dispose();
        Mmproj.Dispose();
    }
}
