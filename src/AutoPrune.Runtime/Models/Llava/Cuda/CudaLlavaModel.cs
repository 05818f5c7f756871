using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using ILGPU;
using ILGPU.Runtime;
using CudaAccelerator = ILGPU.Runtime.Cuda.CudaAccelerator;
using CudaDevice = AutoPrune.Compute.Cuda.CudaDevice;
using Half = System.Half;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>A linear layer on the device: fp16 weight [Out, In], optional fp32 bias.</summary>
internal sealed class DeviceLinear(DeviceBuffer<ushort> weight, DeviceBuffer<float>? bias, int @in, int @out) : IDisposable
{
    public DeviceBuffer<ushort> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;
    public int In { get; } = @in;
    public int Out { get; } = @out;

    public static DeviceLinear Load(DeviceArena mem, ITensorSource store, string prefix, int @in, int @out, bool bias)
        => LoadStacked(mem, store, [(prefix, @out)], @in, bias);

    /// <summary>
    /// Several linear layers on the same input stacked into one ([Σ out, in], biases likewise), so one GEMM computes
    /// them all: q|k|v, or gate|up. Fewer, larger GEMMs launch less often and read the input once.
    /// </summary>
    public static DeviceLinear LoadStacked(DeviceArena mem, ITensorSource store, IReadOnlyList<(string Prefix, int Out)> parts, int @in, bool bias)
    {
        int total = parts.Sum(p => p.Out);
        var w = new Half[(long)total * @in];
        var b = bias ? new float[total] : null;
        int row = 0;
        foreach (var (prefix, @out) in parts)
        {
            store.ReadFloat16(prefix + ".weight", @out, @in).CopyTo(w, (long)row * @in);
            if (b is not null) store.ReadFloat32(prefix + ".bias", @out).CopyTo(b, row);
            row += @out;
        }
        return new DeviceLinear(mem.Upload(MemoryMarshal.Cast<Half, ushort>(w.AsSpan())), b is null ? null : mem.Upload<float>(b), @in, total);
    }

    public void Dispose() { Weight.Dispose(); Bias?.Dispose(); }
}

/// <summary>A norm on the device (fp32 weight, bias for LayerNorm).</summary>
internal sealed class DeviceNorm(DeviceBuffer<float> weight, DeviceBuffer<float>? bias, float eps) : IDisposable
{
    public DeviceBuffer<float> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;
    public float Eps { get; } = eps;

    public static DeviceNorm Load(DeviceArena mem, ITensorSource store, string prefix, int dim, float eps, bool bias)
        => new(mem.Upload<float>(store.ReadFloat32(prefix + ".weight", dim)), bias ? mem.Upload<float>(store.ReadFloat32(prefix + ".bias", dim)) : null, eps);

    public void Dispose() { Weight.Dispose(); Bias?.Dispose(); }
}

/// <summary>
/// LLaVA on an NVIDIA GPU (or, for checking, on ILGPU's CPU accelerator): the CLIP tower, projector and Llama decoder
/// with fp16 weights uploaded once, fp32 activations that stay on the device, GEMMs through cuBLAS (fp16 inputs, fp32
/// accumulation) and every other operation in ILGPU kernels. Only pixels, token rows and pruning signals go up and
/// only features, logits and the signals a policy asks for come back.
/// </summary>
/// <remarks>
/// One request runs on the device at a time (a lock around each call): the kernels share the accelerator's stream.
/// </remarks>
internal sealed class CudaLlavaModel : ILlavaBackend
{
    private sealed class VisionLayer
    {
        public required DeviceNorm Ln1, Ln2;
        /// <summary>q|k|v stacked ([3·hidden, hidden], biases likewise).</summary>
        public required DeviceLinear Qkv, O, Fc1, Fc2;
    }

    internal sealed class DecoderLayer
    {
        public required DeviceNorm InNorm, PostNorm;
        /// <summary>q|k|v stacked ([heads·hd + 2·kvHeads·hd, hidden]) and gate|up stacked ([2·intermediate, hidden]).</summary>
        public required DeviceLinear Qkv, O, GateUp, Down;
    }

    private readonly CudaDevice _device;
    private readonly List<IDisposable> _owned = [];
    internal readonly object Sync = new();

    // vision tower
    private readonly ClipVisionConfig _vcfg;
    private readonly bool _dropCls;
    private readonly DeviceLinear _patch;
    private readonly DeviceBuffer<float> _classEmbedding, _positionEmbedding;
    private readonly DeviceNorm _preLayerNorm;
    private readonly VisionLayer[] _vlayers;
    // projector
    private readonly DeviceLinear _proj1, _proj2;
    private readonly ActivationFunction _projAct, _visionAct;
    // decoder
    private readonly LlamaTextConfig _tcfg;
    internal readonly DecoderLayer[] Layers;
    internal readonly DeviceNorm FinalNorm;
    private NormWeights? _hostFinalNorm;

    /// <summary>The final RMSNorm's weights copied to the host once (for policies that compare normalised hidden states).</summary>
    internal NormWeights HostFinalNorm => _hostFinalNorm ??= new NormWeights(FinalNorm.Weight.Download(0, FinalNorm.Weight.Length), null, FinalNorm.Eps);
    internal readonly DeviceLinear LmHead;
    private readonly Half[] _embed; // host copy for building sequences: [vocab, hidden]
    internal readonly DeviceBuffer<float> RopeCos, RopeSin;

    internal CudaOps Ops { get; }
    internal Accelerator Accelerator => _device.Accelerator;
    internal DeviceBlas Blas { get; }
    internal DeviceArena Memory { get; }

    /// <summary>Largest attention score block (heads × query rows × keys, fp32 elements); longer prompts run in query chunks.</summary>
    internal long AttentionBlockElements { get; set; } = 64L << 20;

    public LlavaConfig Config { get; }
    public string Device => _device.Description;
    public int TokensPerImage => _dropCls ? Patches : Patches + 1;
    public int Grid => _vcfg.ImageSize / _vcfg.PatchSize;
    private int Patches => Grid * Grid;
    public int DecoderLayers => Layers.Length;
    public int Hidden => _tcfg.HiddenSize;
    internal int Heads => _tcfg.NumAttentionHeads;
    internal int KvHeads => _tcfg.NumKeyValueHeads;
    internal int HeadDim => _tcfg.HeadDim;
    internal int Intermediate => _tcfg.IntermediateSize;
    internal int Vocab => _tcfg.VocabSize;
    internal int MaxPositions { get; }
    internal QkvShape QkvShape(bool rope) => new(Heads, KvHeads, HeadDim, rope ? 1 : 0);

    /// <summary>Uploads the weights of <paramref name="store"/> to <paramref name="device"/>, which the model then owns.</summary>
    public CudaLlavaModel(ITensorSource store, LlavaConfig config, CudaDevice device, Action<double>? progress = null)
    {
        _device = device;
        Config = config;
        _vcfg = config.VisionConfig;
        _tcfg = config.TextConfig;
        _dropCls = config.VisionFeatureSelectStrategy == "default";
        _projAct = config.ProjectorActivation; // an unsupported activation fails at load
        _visionAct = _vcfg.Activation;
        var acc = device.Accelerator;
        // CUDA calls need the accelerator's context current on the calling thread: every entry point binds it.
        using var bind = acc.BindScoped();
        Memory = new DeviceArena(acc);
        // On ILGPU's CPU accelerator every emulated thread and barrier costs microseconds: one thread per row group.
        Ops = new CudaOps(acc, rowGroupSize: device.IsCuda ? 0 : 1);
        try
        {
            Blas = new DeviceBlas(device.IsCuda ? new CuBlasExecutor((CudaAccelerator)acc) : new HostGemmExecutor(acc));
            var mem = Memory;
            // Vision tower (only the layers up to the feature layer).
            const string vp = "vision_tower.vision_model";
            int vh = _vcfg.HiddenSize, ps = _vcfg.PatchSize, ch = _vcfg.NumChannels;
            float veps = (float)_vcfg.LayerNormEps;
            _patch = Own(new DeviceLinear(
                mem.Upload(MemoryMarshal.Cast<Half, ushort>(store.ReadFloat16($"{vp}.embeddings.patch_embedding.weight", vh, ch, ps, ps).AsSpan())),
                null, ch * ps * ps, vh));
            _classEmbedding = Own(mem.Upload<float>(store.ReadFloat32($"{vp}.embeddings.class_embedding", vh)));
            _positionEmbedding = Own(mem.Upload<float>(store.ReadFloat32($"{vp}.embeddings.position_embedding.weight", Patches + 1, vh)));
            _preLayerNorm = Own(DeviceNorm.Load(mem, store, $"{vp}.pre_layrnorm", vh, veps, bias: true));
            int featureLayer = config.ResolvedFeatureLayerIndex;
            _vlayers = new VisionLayer[featureLayer];
            for (int i = 0; i < featureLayer; i++)
            {
                string lp = $"{vp}.encoder.layers.{i}";
                _vlayers[i] = new VisionLayer
                {
                    Ln1 = Own(DeviceNorm.Load(mem, store, lp + ".layer_norm1", vh, veps, bias: true)),
                    Ln2 = Own(DeviceNorm.Load(mem, store, lp + ".layer_norm2", vh, veps, bias: true)),
                    Qkv = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".self_attn.q_proj", vh), (lp + ".self_attn.k_proj", vh), (lp + ".self_attn.v_proj", vh)], vh, true)),
                    O = Own(DeviceLinear.Load(mem, store, lp + ".self_attn.out_proj", vh, vh, true)),
                    Fc1 = Own(DeviceLinear.Load(mem, store, lp + ".mlp.fc1", vh, _vcfg.IntermediateSize, true)),
                    Fc2 = Own(DeviceLinear.Load(mem, store, lp + ".mlp.fc2", _vcfg.IntermediateSize, vh, true)),
                };
            }
            // Projector.
            int th = _tcfg.HiddenSize;
            _proj1 = Own(DeviceLinear.Load(mem, store, "multi_modal_projector.linear_1", vh, th, config.MultimodalProjectorBias));
            _proj2 = Own(DeviceLinear.Load(mem, store, "multi_modal_projector.linear_2", th, th, config.MultimodalProjectorBias));
            progress?.Invoke(0.1);
            // Decoder.
            const string p = "language_model.model";
            int qd = Heads * HeadDim, kvd = KvHeads * HeadDim;
            float eps = (float)_tcfg.RmsNormEps;
            _embed = store.ReadFloat16($"{p}.embed_tokens.weight", Vocab, th);
            Layers = new DecoderLayer[_tcfg.NumHiddenLayers];
            for (int i = 0; i < Layers.Length; i++)
            {
                string lp = $"{p}.layers.{i}";
                Layers[i] = new DecoderLayer
                {
                    InNorm = Own(DeviceNorm.Load(mem, store, lp + ".input_layernorm", th, eps, bias: false)),
                    PostNorm = Own(DeviceNorm.Load(mem, store, lp + ".post_attention_layernorm", th, eps, bias: false)),
                    Qkv = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".self_attn.q_proj", qd), (lp + ".self_attn.k_proj", kvd), (lp + ".self_attn.v_proj", kvd)], th, _tcfg.AttentionBias)),
                    O = Own(DeviceLinear.Load(mem, store, lp + ".self_attn.o_proj", qd, th, _tcfg.AttentionBias)),
                    GateUp = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".mlp.gate_proj", Intermediate), (lp + ".mlp.up_proj", Intermediate)], th, _tcfg.MlpBias)),
                    Down = Own(DeviceLinear.Load(mem, store, lp + ".mlp.down_proj", Intermediate, th, _tcfg.MlpBias)),
                };
                progress?.Invoke(0.1 + 0.85 * (i + 1.0) / Layers.Length);
            }
            FinalNorm = Own(DeviceNorm.Load(mem, store, $"{p}.norm", th, eps, bias: false));
            bool tied = config.TieWordEmbeddings || _tcfg.TieWordEmbeddings;
            LmHead = Own(tied && !store.Contains("language_model.lm_head.weight")
                ? new DeviceLinear(mem.Upload(MemoryMarshal.Cast<Half, ushort>(_embed.AsSpan())), null, th, Vocab)
                : DeviceLinear.Load(mem, store, "language_model.lm_head", th, Vocab, false));
            MaxPositions = Math.Max(1, _tcfg.MaxPositionEmbeddings);
            var (cos, sin) = CudaKernels.RopeTables(CpuOps.RopeInvFreq(HeadDim, _tcfg.RopeTheta), MaxPositions);
            RopeCos = Own(mem.Upload<float>(cos));
            RopeSin = Own(mem.Upload<float>(sin));
            if (device.IsCuda) Ops.CompileAll();
            acc.Synchronize();
            progress?.Invoke(1.0);
        }
        catch
        {
            DisposeOwned();
            Memory.Dispose();
            Blas?.Dispose();
            throw;
        }
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    public void Embed(ReadOnlySpan<int> ids, Span<float> dst)
    {
        int h = Hidden;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if ((uint)id >= (uint)Vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary (size {Vocab}).");
            TensorPrimitives.ConvertToSingle(_embed.AsSpan(id * h, h), dst.Slice(i * h, h));
        }
    }

    /// <summary>y (+)= x·Wᵀ (+ b) with x fp16 on the device.</summary>
    internal void Linear(DeviceLinear l, ArrayView<ushort> x, int rows, ArrayView<float> y, bool accumulate = false)
    {
        Blas.Linear(x, rows, l.In, l.Weight.View, l.Out, y, accumulate);
        if (l.Bias is not null && rows > 0) Ops.AddBias(y, rows, l.Out, l.Bias.View);
    }

    /// <summary>Rounds <paramref name="length"/> fp32 values to fp16 on the device.</summary>
    internal void ToHalf(ArrayView<float> src, ArrayView<ushort> dst, long length)
    {
        if (length > 0) Ops.ToHalf(src.SubView(0, length), dst.SubView(0, length));
    }

    /// <summary>
    /// Multi-head attention through cuBLAS: scores = q·kᵀ per head (batched GEMM), scaled masked softmax to fp16,
    /// out = p·v (batched GEMM, fp16 out). q: fp16 [nq, heads·hd]; k, v: fp16 rows 0..nk-1 of [*, kvHeads·hd];
    /// out: fp16 [nq, heads·hd]. <paramref name="causalOffset"/> ≥ 0: query i sees keys ≤ causalOffset + i; -1: all.
    /// Queries run in chunks so the score block stays under <see cref="AttentionBlockElements"/>.
    /// </summary>
    internal void Attend(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output,
        int nq, int nk, int heads, int kvHeads, int hd, int causalOffset, Scratch<float> scores, Scratch<ushort> probs)
    {
        if (nq == 0) return;
        int group = heads / kvHeads, qd = heads * hd, kvd = kvHeads * hd;
        int block = (int)Math.Clamp(AttentionBlockElements / ((long)heads * nk), 1, nq);
        float scale = 1f / MathF.Sqrt(hd);
        for (int i0 = 0; i0 < nq; i0 += block)
        {
            int b = Math.Min(block, nq - i0);
            long per = (long)b * nk;
            var s = scores.Get(heads * per);
            var p = probs.Get(heads * per);
            for (int g = 0; g < group; g++)
            {
                // Query heads kvh·group + g, for every kv head kvh: one strided batch over kv heads.
                Blas.BatchedTransB(b, hd, nk, kvHeads,
                    q.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd,
                    k.SubView(0, (long)(nk - 1) * kvd + kvd), kvd, hd,
                    s.SubView(g * per, (kvHeads - 1) * group * per + per), nk, group * per);
            }
            Ops.ScaledMaskedSoftmaxToHalf(s, p, heads, b, nk, causalOffset < 0 ? -1 : causalOffset + i0, scale);
            for (int g = 0; g < group; g++)
            {
                Blas.BatchedNN(b, nk, hd, kvHeads,
                    p.SubView(g * per, (kvHeads - 1) * group * per + per), nk, group * per,
                    v.SubView(0, (long)(nk - 1) * kvd + kvd), kvd, hd,
                    output.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd);
            }
        }
    }

    public VisionFeatures VisionForward(ReadOnlySpan<float> pixels, CancellationToken ct = default)
    {
        int h = _vcfg.HiddenSize, ps = _vcfg.PatchSize, c = _vcfg.NumChannels, g = Grid, size = _vcfg.ImageSize;
        int n = Patches + 1, heads = _vcfg.NumAttentionHeads, hd = h / heads, inter = _vcfg.IntermediateSize;
        int pk = c * ps * ps;
        if (pixels.Length != c * size * size)
            throw new ArgumentException($"Pixel tensor has {pixels.Length} values; the vision tower expects [{c}, {size}, {size}].", nameof(pixels));
        // Unfold patches in (channel, row, col) order on the host and send them as fp16.
        var patches = new Half[Patches * pk];
        var row = new float[ps];
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++)
            {
                int o = (py * g + px) * pk;
                for (int ch = 0; ch < c; ch++)
                    for (int y = 0; y < ps; y++, o += ps)
                        TensorPrimitives.ConvertToHalf(pixels.Slice(ch * size * size + (py * ps + y) * size + px * ps, ps), patches.AsSpan(o, ps));
            }
        lock (Sync)
        {
            using var bind = _device.Accelerator.BindScoped();
            var mem = Memory;
            using var patchesH = mem.UploadScratch(MemoryMarshal.Cast<Half, ushort>(patches.AsSpan()));
            using var x = mem.Allocate<float>((long)n * h);
            using var xnH = mem.Allocate<ushort>((long)n * h);
            var split = new QkvShape(heads, heads, hd, Rope: 0); // no RoPE in CLIP: positions are not read
            using var noPositions = mem.UploadScratch<int>([0]);
            using var qkv = mem.Allocate<float>((long)n * split.Width);
            using var q = mem.Allocate<float>((long)n * h);
            using var k = mem.Allocate<float>((long)n * h);
            using var qH = mem.Allocate<ushort>((long)n * h);
            using var kH = mem.Allocate<ushort>((long)n * h);
            using var vH = mem.Allocate<ushort>((long)n * h);
            using var attH = mem.Allocate<ushort>((long)n * h);
            using var mlp = mem.Allocate<float>((long)n * inter);
            using var mlpH = mem.Allocate<ushort>((long)n * inter);
            using var scores = new Scratch<float>(mem);
            using var probs = new Scratch<ushort>(mem);
            _classEmbedding.View.CopyTo(x.Slice(0, h));
            Blas.Linear(patchesH.View, Patches, pk, _patch.Weight.View, h, x.Slice(h, (long)Patches * h));
            Ops.Add(x.View, _positionEmbedding.View);
            Ops.LayerNorm(x.View, x.View, n, h, _preLayerNorm.Weight.View, _preLayerNorm.Bias!.View, _preLayerNorm.Eps);
            float[]? cls = null;
            for (int li = 0; li < _vlayers.Length; li++)
            {
                ct.ThrowIfCancellationRequested();
                var L = _vlayers[li];
                Ops.LayerNormToHalf(x.View, xnH.View, n, h, L.Ln1.Weight.View, L.Ln1.Bias!.View, L.Ln1.Eps);
                Linear(L.Qkv, xnH.View, n, qkv.View);
                Ops.QkvSplitRope(qkv.View, n, noPositions.View, RopeCos.View, RopeSin.View, q.View, k.View, qH.View, kH.View, vH.View, split);
                Attend(qH.View, kH.View, vH.View, attH.View, n, n, heads, heads, hd, -1, scores, probs);
                if (li == _vlayers.Length - 1)
                {
                    using var rows = mem.UploadScratch<int>([0]);
                    using var result = mem.Allocate<float>((long)heads * (n - 1));
                    Ops.AttentionRowsGrouped(q.View, k.View, rows.View, result.View, AttentionShape.Create(n, n, heads, heads, hd, causal: false), firstKey: 1);
                    cls = result.Download(0, (long)heads * (n - 1));
                }
                Linear(L.O, attH.View, n, x.View, accumulate: true);
                Ops.LayerNormToHalf(x.View, xnH.View, n, h, L.Ln2.Weight.View, L.Ln2.Bias!.View, L.Ln2.Eps);
                Linear(L.Fc1, xnH.View, n, mlp.View);
                Ops.Activation(_visionAct, mlp.View);
                ToHalf(mlp.View, mlpH.View, (long)n * inter);
                Linear(L.Fc2, mlpH.View, n, x.View, accumulate: true);
            }
            var features = _dropCls ? x.Download(h, (long)Patches * h) : x.Download(0, (long)n * h);
            return new VisionFeatures
            {
                Features = features,
                Tokens = _dropCls ? Patches : n,
                Hidden = h,
                ClsAttention = cls,
                PatchKeys = _vlayers.Length > 0 ? k.Download(h, (long)Patches * h) : null,
                Heads = heads,
                Patches = Patches,
            };
        }
    }

    public float[] Project(ReadOnlySpan<float> features, int rows)
    {
        int vh = _proj1.In, th = Hidden;
        if (features.Length != rows * vh)
            throw new ArgumentException($"Projector input has {features.Length} values; expected {rows} rows of {vh}.", nameof(features));
        var half = new Half[features.Length];
        TensorPrimitives.ConvertToHalf(features, half);
        lock (Sync)
        {
            using var bind = _device.Accelerator.BindScoped();
            var mem = Memory;
            using var xH = mem.UploadScratch(MemoryMarshal.Cast<Half, ushort>(half.AsSpan()));
            using var h1 = mem.Allocate<float>((long)rows * th);
            using var h1H = mem.Allocate<ushort>((long)rows * th);
            using var y = mem.Allocate<float>((long)rows * th);
            Linear(_proj1, xH.View, rows, h1.View);
            Ops.Activation(_projAct, h1.View);
            ToHalf(h1.View, h1H.View, (long)rows * th);
            Linear(_proj2, h1H.View, rows, y.View);
            return y.Download(0, (long)rows * th);
        }
    }

    public IGeneration StartGeneration(int extraCapacity) => new CudaGeneration(this, extraCapacity);

    private void DisposeOwned()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    public void Dispose()
    {
        lock (Sync)
        {
            using var bind = _device.Accelerator.BindScoped();
            DisposeOwned();
            Memory.Dispose();
            Blas?.Dispose();
            _device.Dispose();
        }
    }
}
