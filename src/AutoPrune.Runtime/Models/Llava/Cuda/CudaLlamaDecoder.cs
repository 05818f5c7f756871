using System.Runtime.InteropServices;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using ILGPU;
using Half = System.Half;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// The Llama decoder's weights on the device (prefix <c>language_model.model</c>), mirroring the CPU decoder:
/// fp16 layers with q|k|v and gate|up stacked, the final norm, the LM head, the token embedding table (fp16, so
/// sequences are built on the device from token ids) and the RoPE tables. The computation is per request, in
/// <see cref="CudaGeneration"/>.
/// </summary>
internal sealed class CudaLlamaDecoder : DeviceWeightSet
{
    internal sealed class Layer
    {
        public required DeviceNorm InNorm, PostNorm;
        /// <summary>q|k|v stacked ([heads·hd + 2·kvHeads·hd, hidden]) and gate|up stacked ([2·intermediate, hidden]).</summary>
        public required DeviceLinear Qkv, O, GateUp, Down;
    }

    private readonly LlamaTextConfig _cfg;

    public Layer[] Layers { get; }
    public DeviceNorm FinalNorm { get; }
    public DeviceLinear LmHead { get; }
    /// <summary>embed_tokens as fp16 [vocab, hidden] (shared with the LM head when the embeddings are tied).</summary>
    public DeviceBuffer<ushort> EmbedTokens { get; }
    public DeviceBuffer<float> RopeCos { get; }
    public DeviceBuffer<float> RopeSin { get; }
    /// <summary>A position buffer for kernels that take positions but apply no RoPE (CLIP).</summary>
    public ArrayView<int> NoPositions => _noPositions.View;
    private readonly DeviceBuffer<int> _noPositions;

    public int Hidden => _cfg.HiddenSize;
    public int Heads => _cfg.NumAttentionHeads;
    public int KvHeads => _cfg.NumKeyValueHeads;
    public int HeadDim => _cfg.HeadDim;
    public int Intermediate => _cfg.IntermediateSize;
    public int Vocab => _cfg.VocabSize;
    public int MaxPositions { get; }
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;

    public QkvShape QkvShape(bool rope, bool signals = true) => new(Heads, KvHeads, HeadDim, rope ? 1 : 0, signals ? 1 : 0);

    public CudaLlamaDecoder(DeviceArena mem, ITensorSource store, LlavaConfig config, Action<double>? progress)
    {
        _cfg = config.TextConfig;
        const string p = "language_model.model";
        int th = Hidden, qd = QDim, kvd = KvDim;
        float eps = (float)_cfg.RmsNormEps;
        try
        {
            EmbedTokens = Own(mem.Upload(MemoryMarshal.Cast<Half, ushort>(store.ReadFloat16($"{p}.embed_tokens.weight", Vocab, th).AsSpan())));
            Layers = new Layer[_cfg.NumHiddenLayers];
            for (int i = 0; i < Layers.Length; i++)
            {
                string lp = $"{p}.layers.{i}";
                Layers[i] = new Layer
                {
                    InNorm = Own(DeviceNorm.Load(mem, store, lp + ".input_layernorm", th, eps, bias: false)),
                    PostNorm = Own(DeviceNorm.Load(mem, store, lp + ".post_attention_layernorm", th, eps, bias: false)),
                    Qkv = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".self_attn.q_proj", qd), (lp + ".self_attn.k_proj", kvd), (lp + ".self_attn.v_proj", kvd)], th, _cfg.AttentionBias)),
                    O = Own(DeviceLinear.Load(mem, store, lp + ".self_attn.o_proj", qd, th, _cfg.AttentionBias)),
                    GateUp = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".mlp.gate_proj", Intermediate), (lp + ".mlp.up_proj", Intermediate)], th, _cfg.MlpBias)),
                    Down = Own(DeviceLinear.Load(mem, store, lp + ".mlp.down_proj", Intermediate, th, _cfg.MlpBias)),
                };
                progress?.Invoke((i + 1.0) / Layers.Length);
            }
            FinalNorm = Own(DeviceNorm.Load(mem, store, $"{p}.norm", th, eps, bias: false));
            bool tied = config.TieWordEmbeddings || _cfg.TieWordEmbeddings;
            LmHead = tied && !store.Contains("language_model.lm_head.weight")
                ? new DeviceLinear(EmbedTokens, null, th, Vocab) // shares the table: not owned twice
                : Own(DeviceLinear.Load(mem, store, "language_model.lm_head", th, Vocab, false));
            MaxPositions = Math.Max(1, _cfg.MaxPositionEmbeddings);
            var (cos, sin) = CudaKernels.RopeTables(CpuOps.RopeInvFreq(HeadDim, _cfg.RopeTheta), MaxPositions);
            RopeCos = Own(mem.Upload<float>(cos));
            RopeSin = Own(mem.Upload<float>(sin));
            _noPositions = Own(mem.Upload<int>([0]));
        }
        catch
        {
            Dispose();
            throw;
        }
    }
}
