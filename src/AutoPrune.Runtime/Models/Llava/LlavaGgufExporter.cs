using System.Buffers.Binary;
using System.Globalization;
using System.Text.Json;
using AutoPrune.Compute.Quant;

using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;

namespace AutoPrune.Models.Llava;

/// <summary>
/// Writes a LLaVA-1.5 safetensors checkpoint folder as the two GGUF files llama.cpp loads: the Llama text model
/// (<c>NAME-f16.gguf</c>, or quantized: <c>NAME-Q8_0.gguf</c>, <c>NAME-Q4_K_M.gguf</c>, ...) and the vision tower with the
/// projector (<c>mmproj-NAME-f16.gguf</c>).
/// <para>
/// Text model: what llama.cpp's <c>convert_hf_to_gguf.py</c> writes (same keys in the same order, tensors in the checkpoint's
/// order, q/k rows permuted for GGML's rope, 2-D weights F16, 1-D F32, the SentencePiece vocabulary as
/// <c>tokenizer.ggml.*</c> with the checkpoint's added tokens), so for the demo model the f16 file is byte-identical to that
/// converter's output. A quantized file is what llama.cpp's quantizer (<c>llama_model_quantize</c>, no importance matrix)
/// makes of that f16 file: tensors in its order, types from <see cref="QuantMix"/>, <c>general.file_type</c> last.
/// </para>
/// <para>
/// mmproj: llama.cpp's LLaVA-1.5 route (<c>convert_image_encoder_to_gguf.py --llava-projector</c>): the CLIP layers up to
/// the feature layer only, no post-layernorm, the legacy <c>ffn_down</c> = fc1 / <c>ffn_up</c> = fc2 names, <c>mm.0</c> /
/// <c>mm.2</c> for the projector, 2-D and 4-D weights F16, the rest F32.
/// </para>
/// Tensors are read and converted one at a time while the file is written, so memory stays at about one tensor.
/// </summary>
internal static class LlavaGgufExporter
{
    public sealed record Result(string TextPath, string MmprojPath, IReadOnlyDictionary<string, GgmlType> TextTypes);

    /// <summary>Exports <paramref name="modelFolder"/> into <paramref name="outputFolder"/> (created if needed).</summary>
    public static Result Export(string modelFolder, string outputFolder, LlamaFileType fileType = LlamaFileType.MostlyF16, string? baseName = null)
    {
        var source = Source.Open(modelFolder);
        try
        {
            baseName ??= Path.GetFileName(Path.TrimEndingDirectorySeparator(source.Folder));
            Directory.CreateDirectory(outputFolder);
            string textPath = Path.Combine(outputFolder, $"{baseName}-{QuantMix.FileSuffix(fileType)}.gguf");
            string mmprojPath = Path.Combine(outputFolder, $"mmproj-{baseName}-f16.gguf");
            var (text, types) = BuildText(source, fileType);
            text.WriteTo(textPath);
            BuildMmproj(source).WriteTo(mmprojPath);
            return new Result(textPath, mmprojPath, types);
        }
        finally { source.Dispose(); }
    }

    /// <summary>The checkpoint: its config, tokenizer files and tensors (canonical names) in the order its shards list them.</summary>
    internal sealed class Source : IDisposable
    {
        public required string Folder { get; init; }
        public required LlavaConfig Config { get; init; }
        public required JsonElement RawConfig { get; init; }
        public required SafeTensorStore Store { get; init; }
        public required List<string> Order { get; init; }

        public static Source Open(string folder)
        {
            string full = Path.GetFullPath(folder);
            var config = LlavaConfig.Load(full);
            if (config.IsAnyRes)
                throw new ModelLoadException($"'{full}' is a LLaVA-NeXT checkpoint; the GGUF export writes LLaVA-1.5 (llama.cpp's mmproj has no anyres tiles here).", full);
            using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(full, LlavaConfig.FileName)));
            var store = TensorNames.Open(full);
            try
            {
                return new Source { Folder = full, Config = config, RawConfig = doc.RootElement.Clone(), Store = store, Order = HeaderOrder(store) };
            }
            catch
            {
                store.Dispose();
                throw;
            }
        }

        public void Dispose() => Store.Dispose();

        /// <summary>Canonical names in shard order (shard files sorted by name) and, within a shard, header order.</summary>
        private static List<string> HeaderOrder(SafeTensorStore store)
        {
            var order = new List<string>();
            Span<byte> len = stackalloc byte[8];
            foreach (var file in store.Files.Distinct().OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal))
            {
                using var fs = File.OpenRead(file);
                fs.ReadExactly(len);
                long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(len); // validated by SafeTensorStore.Open
                var header = new byte[n];
                fs.ReadExactly(header);
                using var doc = JsonDocument.Parse(header);
                foreach (var p in doc.RootElement.EnumerateObject())
                    if (p.Name != "__metadata__") order.Add(TensorNames.ToCanonical(p.Name));
            }
            return order;
        }
    }

    // ------------------------------------------------------------------ text model

    internal static (GgufWriter Writer, Dictionary<string, GgmlType> Types) BuildText(Source src, LlamaFileType fileType)
    {
        var cfg = src.Config;
        var tc = cfg.TextConfig;
        var tensors = new List<(string Gguf, string Hf, long[] Ne)>();
        foreach (var hf in src.Order)
        {
            if (hf.StartsWith("vision_tower.", StringComparison.Ordinal) || hf.StartsWith("multi_modal_projector.", StringComparison.Ordinal) || hf == "image_newline")
                continue;
            string gguf = GgufTensorNames.TextToGguf(hf)
                ?? throw new ModelLoadException($"Checkpoint tensor '{hf}' has no llama.cpp name; the GGUF export knows the Llama text model's tensors only.", src.Folder, hf);
            var shape = src.Store.GetInfo(hf).Shape;
            tensors.Add((gguf, hf, shape.Reverse().ToArray()));
        }

        var w = new GgufWriter();
        string name = TitleCase(Path.GetFileName(Path.TrimEndingDirectorySeparator(src.Folder)).Replace('-', ' '));
        long parameters = tensors.Sum(t => t.Ne.Aggregate(1L, (a, b) => a * b));
        w.Add("general.architecture", GgufValue.Of("llama"));
        w.Add("general.type", GgufValue.Of("model"));
        w.Add("general.name", GgufValue.Of(name));
        w.Add("general.size_label", GgufValue.Of(SizeLabel(parameters)));
        w.Add("llama.block_count", GgufValue.Of((uint)tc.NumHiddenLayers));
        w.Add("llama.context_length", GgufValue.Of((uint)tc.MaxPositionEmbeddings));
        w.Add("llama.embedding_length", GgufValue.Of((uint)tc.HiddenSize));
        w.Add("llama.feed_forward_length", GgufValue.Of((uint)tc.IntermediateSize));
        w.Add("llama.attention.head_count", GgufValue.Of((uint)tc.NumAttentionHeads));
        w.Add("llama.attention.head_count_kv", GgufValue.Of((uint)tc.NumKeyValueHeads));
        w.Add("llama.rope.freq_base", GgufValue.Of((float)tc.RopeTheta));
        w.Add("llama.attention.layer_norm_rms_epsilon", GgufValue.Of((float)tc.RmsNormEps));
        if (tc.ExplicitHeadDim is int hd)
        {
            w.Add("llama.attention.key_length", GgufValue.Of((uint)hd));
            w.Add("llama.attention.value_length", GgufValue.Of((uint)hd));
        }
        w.Add("general.file_type", GgufValue.Of((uint)LlamaFileType.MostlyF16));
        w.Add("llama.vocab_size", GgufValue.Of((uint)tc.VocabSize));
        w.Add("llama.rope.dimension_count", GgufValue.Of((uint)tc.HeadDim));
        w.Add("general.quantization_version", GgufValue.Of(2u));
        AddVocabulary(w, src, tc.VocabSize);

        // f16 / bf16 / f32: what the converter writes (checkpoint order, general.file_type in place). Quantized types: what
        // llama.cpp's quantizer makes of the f16 file (its tensor order, the two keys it sets moved to the end).
        bool converted = fileType is LlamaFileType.MostlyF16 or LlamaFileType.MostlyBF16 or LlamaFileType.AllF32;
        var order = converted ? tensors : QuantMix.ProcessingOrder(tensors, t => t.Gguf);
        var types = QuantMix.Plan(fileType, order.Select(t => (t.Gguf, t.Ne)).ToList(), tc.NumHiddenLayers);
        if (converted) w.Set("general.file_type", GgufValue.Of((uint)fileType), inPlace: true);
        else
        {
            w.Set("general.quantization_version", GgufValue.Of(2u));
            w.Set("general.file_type", GgufValue.Of((uint)fileType));
        }
        foreach (var (gguf, hf, ne) in order)
        {
            var type = types[gguf];
            string hfName = hf;
            w.AddTensor(gguf, type, ne, s => WriteTensor(s, src, hfName, type, ne, tc));
        }
        return (w, types);
    }

    /// <summary>One tensor converted to <paramref name="type"/> (q/k rows permuted) and written to <paramref name="s"/>.</summary>
    private static void WriteTensor(Stream s, Source src, string hf, GgmlType type, long[] ne, LlamaTextConfig tc)
    {
        float[] values = src.Store.ReadFloat32(hf);
        if (GgufTensorNames.IsRopePermuted(hf, out bool isKey))
        {
            int rows = (int)(ne.Length == 1 ? ne[0] : ne[1]);
            int cols = ne.Length == 1 ? 1 : (int)ne[0];
            var from = GgufTensorNames.GgufRowSources(rows, isKey ? tc.NumKeyValueHeads : tc.NumAttentionHeads);
            var permuted = new float[values.Length];
            for (int r = 0; r < rows; r++) values.AsSpan(from[r] * cols, cols).CopyTo(permuted.AsSpan(r * cols, cols));
            values = permuted;
        }
        var format = type.ToQuantFormat() ?? throw new InvalidOperationException($"{type} cannot be written.");
        if (format == QuantFormat.F16)
        {
            int bad = Array.FindIndex(values, v => float.IsFinite(v) && MathF.Abs(v) > 65504f);
            if (bad >= 0)
                throw new ModelLoadException($"Tensor '{hf}' has value {values[bad]} at element {bad}, beyond fp16's range (±65504); export it as bf16 or a quantized type.", src.Folder, hf);
        }
        var bytes = new byte[format.RowBytes(ne[0]) * (values.Length / ne[0])];
        BlockCodec.Quantize(format, values, bytes);
        s.Write(bytes);
    }

    private static void AddVocabulary(GgufWriter w, Source src, int vocabSize)
    {
        string folder = src.Folder;
        string modelPath = Path.Combine(folder, "tokenizer.model");
        if (!File.Exists(modelPath))
            throw new ModelLoadException($"'{folder}' has no tokenizer.model; the GGUF export writes SentencePiece (llama) vocabularies.", modelPath);
        var pieces = SentencePieceModelReader.Read(ModelFiles.ReadBytes(modelPath, new InputFileLimits().TokenizerBytes, "ModelOptions.FileLimits.TokenizerBytes"), modelPath);
        if (pieces.Count > vocabSize)
            throw new ModelLoadException($"tokenizer.model has {pieces.Count} pieces but text_config.vocab_size is {vocabSize}.", modelPath);

        const int normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, @byte = 6;
        var tokens = new string[vocabSize];
        var scores = new float[vocabSize];
        var types = new int[vocabSize];
        for (int i = 0; i < vocabSize; i++) { tokens[i] = $"[PAD{i}]"; scores[i] = -10000f; types[i] = unused; }
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            // As llama.cpp's converter: a user-defined piece of the SentencePiece model stays NORMAL.
            int t = p.Type switch
            {
                SentencePieceModelReader.Unknown => unknown,
                SentencePieceModelReader.Control => control,
                SentencePieceModelReader.Unused => unused,
                SentencePieceModelReader.Byte => @byte,
                _ => normal,
            };
            tokens[i] = p.Text; scores[i] = p.Score; types[i] = t;
        }

        string addedPath = Path.Combine(folder, "added_tokens.json");
        if (File.Exists(addedPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(addedPath));
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                int id = p.Value.GetInt32();
                CheckId(id, vocabSize, addedPath, p.Name);
                tokens[id] = p.Name; scores[id] = -1000f; types[id] = userDefined;
            }
        }
        string tcPath = Path.Combine(folder, "tokenizer_config.json");
        JsonElement tok = default;
        if (File.Exists(tcPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(tcPath));
            tok = doc.RootElement.Clone();
            if (tok.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
                foreach (var p in dec.EnumerateObject())
                {
                    int id = int.Parse(p.Name, CultureInfo.InvariantCulture);
                    string content = p.Value.GetProperty("content").GetString()!;
                    CheckId(id, vocabSize, tcPath, content);
                    bool special = p.Value.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                    tokens[id] = content; scores[id] = -1000f; types[id] = special ? control : userDefined;
                }
        }

        w.Add("tokenizer.ggml.model", GgufValue.Of("llama"));
        w.Add("tokenizer.ggml.pre", GgufValue.Of("default"));
        w.Add("tokenizer.ggml.tokens", GgufValue.Array(tokens));
        w.Add("tokenizer.ggml.scores", GgufValue.Array(scores));
        w.Add("tokenizer.ggml.token_type", GgufValue.Array(types));
        int IdOf(string? token) => token is null ? -1 : Array.IndexOf(tokens, token);
        foreach (var (field, key) in new[] { ("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id") })
        {
            int id = IdOf(TokenContent(tok, field));
            if (id >= 0) w.Add(key, GgufValue.Of((uint)id));
        }
        bool addBos = tok.ValueKind != JsonValueKind.Object || !tok.TryGetProperty("add_bos_token", out var ab) || ab.ValueKind != JsonValueKind.False;
        bool addEos = tok.ValueKind == JsonValueKind.Object && tok.TryGetProperty("add_eos_token", out var ae) && ae.ValueKind == JsonValueKind.True;
        w.Add("tokenizer.ggml.add_bos_token", GgufValue.Of(addBos));
        w.Add("tokenizer.ggml.add_eos_token", GgufValue.Of(addEos));
        string? template = tok.ValueKind == JsonValueKind.Object && tok.TryGetProperty("chat_template", out var ct) && ct.ValueKind == JsonValueKind.String ? ct.GetString() : null;
        string jinja = Path.Combine(folder, "chat_template.jinja");
        if (template is null && File.Exists(jinja)) template = File.ReadAllText(jinja);
        if (template is not null) w.Add("tokenizer.chat_template", GgufValue.Of(template));
    }

    private static void CheckId(int id, int vocabSize, string path, string token)
    {
        if (id < 0 || id >= vocabSize)
            throw new ModelLoadException($"'{path}' gives token '{token}' id {id}, outside the {vocabSize}-token vocabulary (text_config.vocab_size).", path);
    }

    private static string? TokenContent(JsonElement root, string name)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
            _ => null,
        };
    }

    // ------------------------------------------------------------------ mmproj

    internal static GgufWriter BuildMmproj(Source src)
    {
        var cfg = src.Config;
        var vc = cfg.VisionConfig;
        if (cfg.VisionFeatureSelectStrategy != "default")
            throw new ModelLoadException($"Config '{src.Folder}': vision_feature_select_strategy = '{cfg.VisionFeatureSelectStrategy}'; llama.cpp's LLaVA-1.5 mmproj drops the CLS token ('default').", src.Folder);
        int featureLayer = cfg.ResolvedFeatureLayerIndex;
        int blockCount = featureLayer;

        var proj = new List<(string Gguf, string Hf)>();
        var vis = new List<(string Gguf, string Hf)>();
        foreach (var hf in src.Order)
        {
            if (hf.StartsWith("multi_modal_projector.", StringComparison.Ordinal))
                proj.Add((GgufTensorNames.VisionToGguf(hf) ?? throw Unknown(src, hf), hf));
            else if (hf.StartsWith("vision_tower.", StringComparison.Ordinal))
            {
                if (hf.StartsWith(GgufTensorNames.VisionPrefix + "post_layernorm.", StringComparison.Ordinal)) continue;
                string gguf = GgufTensorNames.VisionToGguf(hf) ?? throw Unknown(src, hf);
                if (gguf.StartsWith("v.blk.", StringComparison.Ordinal) && int.Parse(gguf.Split('.')[2], CultureInfo.InvariantCulture) >= blockCount) continue;
                vis.Add((gguf, hf));
            }
        }
        vis.Sort((a, b) => VisionKey(a.Gguf).CompareTo(VisionKey(b.Gguf)));

        var pp = PreprocessorStats(src.Folder);
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Of("clip"));
        w.Add("clip.has_text_encoder", GgufValue.Of(false));
        w.Add("clip.has_vision_encoder", GgufValue.Of(true));
        w.Add("clip.has_llava_projector", GgufValue.Of(true));
        w.Add("general.file_type", GgufValue.Of(1u));
        w.Add("general.name", GgufValue.Of(Path.GetFileName(Path.TrimEndingDirectorySeparator(src.Folder))));
        w.Add("general.description", GgufValue.Of("image encoder for LLaVA"));
        w.Add("clip.projector_type", GgufValue.Of("mlp"));
        w.Add("clip.vision.image_size", GgufValue.Of((uint)vc.ImageSize));
        w.Add("clip.vision.patch_size", GgufValue.Of((uint)vc.PatchSize));
        w.Add("clip.vision.embedding_length", GgufValue.Of((uint)vc.HiddenSize));
        w.Add("clip.vision.feed_forward_length", GgufValue.Of((uint)vc.IntermediateSize));
        w.Add("clip.vision.projection_dim", GgufValue.Of((uint)vc.ProjectionDim));
        w.Add("clip.vision.attention.head_count", GgufValue.Of((uint)vc.NumAttentionHeads));
        w.Add("clip.vision.attention.layer_norm_epsilon", GgufValue.Of((float)vc.LayerNormEps));
        w.Add("clip.vision.block_count", GgufValue.Of((uint)blockCount));
        w.Add("clip.vision.feature_layer", GgufValue.Array(new[] { featureLayer }));
        w.Add("clip.vision.image_mean", GgufValue.Array(pp.Mean));
        w.Add("clip.vision.image_std", GgufValue.Array(pp.Std));
        w.Add("clip.use_gelu", GgufValue.Of(vc.HiddenAct == "gelu"));

        foreach (var (gguf, hf) in proj.Concat(vis))
        {
            var shape = src.Store.GetInfo(hf).Shape;
            var ne = shape.Reverse().ToArray();
            bool half = shape.Length == 4 || (shape.Length == 2 && (gguf.StartsWith("mm.", StringComparison.Ordinal) || gguf.EndsWith(".weight", StringComparison.Ordinal)));
            var type = half ? GgmlType.F16 : GgmlType.F32;
            string hfName = hf;
            w.AddTensor(gguf, type, ne.Length == 0 ? [1] : ne, s => WriteTensor(s, src, hfName, type, ne.Length == 0 ? [1] : ne, src.Config.TextConfig));
        }
        return w;
    }

    private static ModelLoadException Unknown(Source src, string hf)
        => new($"Checkpoint tensor '{hf}' has no llama.cpp mmproj name; the GGUF export knows CLIP vision towers with a 2-layer MLP projector.", src.Folder, hf);

    /// <summary>Tensor order of llama.cpp's legacy converter: embeddings, pre-LN, then per block k, v, q, out, ln1, fc1, fc2, ln2 (the CLIP module order), weight before bias.</summary>
    private static (int, int, int, int) VisionKey(string g)
    {
        switch (g)
        {
            case "v.class_embd": return (0, 0, 0, 0);
            case "v.patch_embd.weight": return (1, 0, 0, 0);
            case "v.patch_embd.bias": return (1, 0, 0, 1);
            case "v.position_embd.weight": return (2, 0, 0, 0);
            case "v.pre_ln.weight": return (3, 0, 0, 0);
            case "v.pre_ln.bias": return (4, 0, 0, 0);
        }
        var p = g.Split('.');
        int module = p[3] switch { "attn_k" => 0, "attn_v" => 1, "attn_q" => 2, "attn_out" => 3, "ln1" => 4, "ffn_down" => 5, "ffn_up" => 6, "ln2" => 7, _ => 8 };
        return (10, int.Parse(p[2], CultureInfo.InvariantCulture), module, p[4] == "weight" ? 0 : 1);
    }

    private static (float[] Mean, float[] Std) PreprocessorStats(string folder)
    {
        string path = Path.Combine(folder, "preprocessor_config.json");
        float[] mean = [0.48145466f, 0.4578275f, 0.40821073f], std = [0.26862954f, 0.26130258f, 0.27577711f]; // CLIP's defaults
        if (!File.Exists(path)) return (mean, std);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        float[] Read(string key, float[] fallback) => doc.RootElement.TryGetProperty(key, out var a) && a.ValueKind == JsonValueKind.Array
            ? a.EnumerateArray().Select(e => (float)e.GetDouble()).ToArray() : fallback;
        return (Read("image_mean", mean), Read("image_std", std));
    }

    // ------------------------------------------------------------------ gguf-py's naming helpers

    /// <summary>Python's <c>str.title()</c> for ASCII: a letter after a non-letter upper-cased, after a letter lower-cased.</summary>
    internal static string TitleCase(string s)
    {
        var c = s.ToCharArray();
        bool prevCased = false;
        for (int i = 0; i < c.Length; i++)
        {
            bool letter = char.IsLetter(c[i]);
            if (letter) c[i] = prevCased ? char.ToLowerInvariant(c[i]) : char.ToUpperInvariant(c[i]);
            prevCased = letter;
        }
        return new string(c);
    }

    /// <summary>gguf-py's <c>size_label</c> (<c>model_weight_count_rounded_notation</c> with 2 significant digits): 3.7M, 7.0B, 236K.</summary>
    internal static string SizeLabel(long parameters)
    {
        double n = parameters;
        (double scaled, string suffix) = n > 1e12 ? (n * 1e-12, "T") : n > 1e9 ? (n * 1e-9, "B") : n > 1e6 ? (n * 1e-6, "M") : (n * 1e-3, "K");
        int digits = Math.Round(scaled, MidpointRounding.ToEven).ToString(CultureInfo.InvariantCulture).Length;
        int fix = Math.Max(2 - digits, 0);
        return scaled.ToString("F" + fix, CultureInfo.InvariantCulture) + suffix;
    }
}
