using System.Numerics.Tensors;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// What the vision tower hands to the projector and to the pruning policies. On a GPU backend it stays on the device
/// (<see cref="Device"/>); reading <see cref="Features"/>, <see cref="ClsAttention"/> or <see cref="PatchKeys"/> then
/// copies that array to the host (a counted download), which only host-side code (LLaVA-NeXT's assembly, policies not
/// yet moved to the device, tests) does.
/// </summary>
internal sealed class VisionFeatures
{
    private float[]? _features, _cls, _keys;

    /// <summary>Selected patch features [Tokens, Hidden] at the configured feature layer.</summary>
    public float[] Features
    {
        get => _features ??= Device?.CopyFeaturesToHost() ?? throw new InvalidOperationException("These vision features hold no data.");
        init => _features = value;
    }

    public required int Tokens { get; init; }
    public required int Hidden { get; init; }

    /// <summary>[CLS]→patch attention at the feature layer, per head: [Heads, Patches]; null when the feature layer is the embeddings.</summary>
    public float[]? ClsAttention
    {
        get => _cls ??= Device?.CopyClsToHost();
        init => _cls = value;
    }

    /// <summary>Key projections of the patches at the feature layer: [Patches, Hidden]; null as above.</summary>
    public float[]? PatchKeys
    {
        get => _keys ??= Device?.CopyKeysToHost();
        init => _keys = value;
    }

    public int Heads { get; init; }
    public int Patches { get; init; }

    /// <summary>The same data on a GPU (null on the CPU backend).</summary>
    public Cuda.DeviceVisionFeatures? Device { get; init; }

    /// <summary>
    /// Computed by a CPU backend with <see cref="CpuPrecision.MatchDevice"/>: a selection the host makes on these
    /// features (DivPrune's) rounds where the device's would, so both choose the same rows.
    /// </summary>
    public bool MatchDevice { get; init; }
}

/// <summary>CLIP ViT vision tower (checkpoint prefix <c>vision_tower.vision_model</c>).</summary>
internal sealed class ClipVisionTower
{
    private sealed class Layer
    {
        public required NormWeights LayerNorm1, LayerNorm2;
        public required Linear QProj, KProj, VProj, OutProj, Fc1, Fc2;
    }

    private readonly ClipVisionConfig _cfg;
    private readonly float[] _patchWeight;   // [hidden, 3*p*p]
    private readonly float[] _classEmbedding; // [hidden]
    private readonly float[] _positionEmbedding; // [patches+1, hidden]
    private readonly NormWeights _preLayerNorm;
    private readonly Layer[] _layers; // only the layers needed to reach the feature layer

    /// <summary>The tower's linear layers (their weights as the checkpoint stores them).</summary>
    internal IEnumerable<Linear> Linears => _layers.SelectMany(l => new[] { l.QProj, l.KProj, l.VProj, l.OutProj, l.Fc1, l.Fc2 });
    private readonly int _featureLayer; // index into hidden_states (0 = embeddings)
    private readonly bool _dropCls;
    private readonly ActivationFunction _act;
    private readonly bool _matchDevice;

    public int Hidden => _cfg.HiddenSize;
    public int Grid => _cfg.ImageSize / _cfg.PatchSize;
    public int Patches => Grid * Grid;
    public int OutputTokens => _dropCls ? Patches : Patches + 1;

    /// <param name="matchDevice">Compute as the CUDA code path does (<see cref="CpuPrecision.MatchDevice"/>).</param>
    public ClipVisionTower(ITensorSource store, ClipVisionConfig cfg, int featureLayer, bool dropCls, bool matchDevice = false)
    {
        _cfg = cfg;
        _matchDevice = matchDevice;
        _featureLayer = featureLayer;
        _dropCls = dropCls;
        _act = cfg.Activation;
        const string p = "vision_tower.vision_model";
        int h = cfg.HiddenSize, ps = cfg.PatchSize, c = cfg.NumChannels;
        _patchWeight = store.ReadFloat32($"{p}.embeddings.patch_embedding.weight", h, c, ps, ps);
        _classEmbedding = store.ReadFloat32($"{p}.embeddings.class_embedding", h);
        _positionEmbedding = store.ReadFloat32($"{p}.embeddings.position_embedding.weight", Patches + 1, h);
        _preLayerNorm = NormWeights.LoadLayerNorm(store, $"{p}.pre_layrnorm", h, (float)cfg.LayerNormEps);
        _layers = new Layer[featureLayer];
        for (int i = 0; i < featureLayer; i++)
        {
            string lp = $"{p}.encoder.layers.{i}";
            _layers[i] = new Layer
            {
                LayerNorm1 = NormWeights.LoadLayerNorm(store, lp + ".layer_norm1", h, (float)cfg.LayerNormEps),
                LayerNorm2 = NormWeights.LoadLayerNorm(store, lp + ".layer_norm2", h, (float)cfg.LayerNormEps),
                QProj = Linear.Load(store, lp + ".self_attn.q_proj", h, h, true),
                KProj = Linear.Load(store, lp + ".self_attn.k_proj", h, h, true),
                VProj = Linear.Load(store, lp + ".self_attn.v_proj", h, h, true),
                OutProj = Linear.Load(store, lp + ".self_attn.out_proj", h, h, true),
                Fc1 = Linear.Load(store, lp + ".mlp.fc1", h, cfg.IntermediateSize, true),
                Fc2 = Linear.Load(store, lp + ".mlp.fc2", cfg.IntermediateSize, h, true),
            };
        }
    }

    /// <summary>Runs the tower on one preprocessed image ([3, size, size], CHW).</summary>
    public VisionFeatures Forward(ReadOnlySpan<float> pixels, CancellationToken ct = default)
    {
        int h = _cfg.HiddenSize, ps = _cfg.PatchSize, c = _cfg.NumChannels, g = Grid, size = _cfg.ImageSize;
        int n = Patches + 1, heads = _cfg.NumAttentionHeads, hd = h / heads;
        int pk = c * ps * ps;
        if (pixels.Length != c * size * size)
            throw new ArgumentException($"Pixel tensor has {pixels.Length} values; the vision tower expects [{c}, {size}, {size}].", nameof(pixels));

        // Patch embedding as a GEMM over unfolded patches in (channel, row, col) order.
        var patches = new float[Patches * pk];
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++)
            {
                var dst = patches.AsSpan((py * g + px) * pk, pk);
                int o = 0;
                for (int ch = 0; ch < c; ch++)
                    for (int y = 0; y < ps; y++)
                    {
                        pixels.Slice(ch * size * size + (py * ps + y) * size + px * ps, ps).CopyTo(dst.Slice(o, ps));
                        o += ps;
                    }
            }
        bool md = _matchDevice;
        if (md) DeviceNumerics.RoundToHalf(patches); // the device uploads the patches as fp16
        var x = new float[n * h];
        _classEmbedding.CopyTo(x.AsSpan(0, h));
        Gemm.MatMulTransB(patches, Patches, pk, _patchWeight, h, x.AsSpan(h));
        TensorPrimitives.Add(x, _positionEmbedding, x);
        CpuOps.LayerNorm(x, n, h, _preLayerNorm.Weight, _preLayerNorm.Bias, _preLayerNorm.Eps, sequentialSums: md);

        var xn = new float[n * h];
        var q = new float[n * h];
        var k = new float[n * h];
        var v = new float[n * h];
        var att = new float[n * h];
        var mlp = new float[n * _cfg.IntermediateSize];
        float[]? clsAttention = null;
        for (int li = 0; li < _layers.Length; li++)
        {
            ct.ThrowIfCancellationRequested();
            var L = _layers[li];
            CpuOps.LayerNorm(x, xn, n, h, L.LayerNorm1.Weight, L.LayerNorm1.Bias, L.LayerNorm1.Eps, md);
            if (md) DeviceNumerics.RoundToHalf(xn);
            L.QProj.Forward(xn, n, q, matchDevice: md);
            L.KProj.Forward(xn, n, k, matchDevice: md);
            L.VProj.Forward(xn, n, v, matchDevice: md);
            // The [CLS] attention and the patch keys are read in fp32; the attention itself takes q, k, v as fp16.
            var (qa, ka) = md ? (DeviceNumerics.HalfCopy(q), DeviceNumerics.HalfCopy(k)) : (q, k);
            if (md) DeviceNumerics.RoundToHalf(v);
            Attention.MultiHead(qa, ka, v, att, n, n, heads, heads, hd, causal: false, md);
            if (li == _layers.Length - 1)
                clsAttention = Attention.Rows(q, k, n, n, heads, heads, hd, [0], causal: false, firstKey: 1);
            L.OutProj.Forward(att, n, x, accumulate: true, md);
            CpuOps.LayerNorm(x, xn, n, h, L.LayerNorm2.Weight, L.LayerNorm2.Bias, L.LayerNorm2.Eps, md);
            if (md) DeviceNumerics.RoundToHalf(xn);
            L.Fc1.Forward(xn, n, mlp, matchDevice: md);
            CpuOps.Activation(_act, mlp, md);
            if (md) DeviceNumerics.RoundToHalf(mlp);
            L.Fc2.Forward(mlp, n, x, accumulate: true, md);
        }

        float[] features = _dropCls ? x.AsSpan(h).ToArray() : x;
        return new VisionFeatures
        {
            Features = features,
            Tokens = _dropCls ? Patches : n,
            Hidden = h,
            ClsAttention = clsAttention,
            PatchKeys = _layers.Length > 0 ? k.AsSpan(h).ToArray() : null,
            Heads = heads,
            Patches = Patches,
            MatchDevice = _matchDevice,
        };
    }
}
