using AutoPrune.Compute;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using ILGPU;
using Half = System.Half;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// The CLIP vision tower on the device (checkpoint prefix <c>vision_tower.vision_model</c>, the layers up to the
/// feature layer), mirroring <see cref="ClipVisionTower"/>. Only the pixels go up (as fp16 patches); the features, the
/// [CLS] attention and the patch keys stay on the device (<see cref="DeviceVisionFeatures"/>). Its buffers are the
/// model's own and never move, so one forward can be captured as a CUDA graph and replayed per image.
/// </summary>
internal sealed class CudaVisionTower : DeviceWeightSet
{
    private sealed class Layer
    {
        public required DeviceNorm Ln1, Ln2;
        /// <summary>q|k|v stacked ([3·hidden, hidden], biases likewise).</summary>
        public required DeviceLinear Qkv, O, Fc1, Fc2;
    }

    private readonly CudaLlavaModel _m;
    private readonly ClipVisionConfig _cfg;
    private readonly bool _dropCls;
    private readonly DeviceLinear _patch;
    private readonly DeviceBuffer<float> _classEmbedding, _positionEmbedding;
    private readonly DeviceNorm _preLayerNorm;
    private readonly Layer[] _layers;
    private CudaGraph? _graph;
    private int _forwards;

    /// <summary>The tower's working buffers, allocated on the first forward and kept (a graph refers to them).</summary>
    private sealed class Buffers(DeviceArena mem, int n, int h, int inter, int heads, int patches, int patchLength) : IDisposable
    {
        public readonly DeviceBuffer<ushort> PatchesH = mem.Allocate<ushort>((long)patches * patchLength);
        public readonly DeviceBuffer<float> X = mem.Allocate<float>((long)n * h);
        public readonly DeviceBuffer<ushort> XnH = mem.Allocate<ushort>((long)n * h);
        public readonly DeviceBuffer<float> Qkv = mem.Allocate<float>((long)n * 3 * h);
        public readonly DeviceBuffer<float> Q = mem.Allocate<float>((long)n * h);
        public readonly DeviceBuffer<float> K = mem.Allocate<float>((long)n * h);
        public readonly DeviceBuffer<ushort> QH = mem.Allocate<ushort>((long)n * h);
        public readonly DeviceBuffer<ushort> KH = mem.Allocate<ushort>((long)n * h);
        public readonly DeviceBuffer<ushort> VH = mem.Allocate<ushort>((long)n * h);
        public readonly DeviceBuffer<ushort> AttH = mem.Allocate<ushort>((long)n * h);
        public readonly DeviceBuffer<float> Mlp = mem.Allocate<float>((long)n * inter);
        public readonly DeviceBuffer<ushort> MlpH = mem.Allocate<ushort>((long)n * inter);
        public readonly DeviceBuffer<float> Cls = mem.Allocate<float>((long)heads * (n - 1));
        public readonly Scratch<float> Scores = new(mem);
        public readonly Scratch<ushort> Probs = new(mem);

        public void Dispose()
        {
            foreach (var d in new IDisposable[] { PatchesH, X, XnH, Qkv, Q, K, QH, KH, VH, AttH, Mlp, MlpH, Cls, Scores, Probs }) d.Dispose();
        }
    }

    public CudaVisionTower(CudaLlavaModel model, ITensorSource store, LlavaConfig config)
    {
        _m = model;
        _cfg = config.VisionConfig;
        _dropCls = config.VisionFeatureSelectStrategy == "default";
        var mem = model.Memory;
        const string vp = "vision_tower.vision_model";
        int vh = _cfg.HiddenSize, ps = _cfg.PatchSize, ch = _cfg.NumChannels;
        float eps = (float)_cfg.LayerNormEps;
        try
        {
            _patch = Own(new DeviceLinear(
                mem.Upload(MemoryMarshal.Cast<Half, ushort>(store.ReadFloat16($"{vp}.embeddings.patch_embedding.weight", vh, ch, ps, ps).AsSpan())),
                null, ch * ps * ps, vh));
            _classEmbedding = Own(mem.Upload<float>(store.ReadFloat32($"{vp}.embeddings.class_embedding", vh)));
            _positionEmbedding = Own(mem.Upload<float>(store.ReadFloat32($"{vp}.embeddings.position_embedding.weight", Patches + 1, vh)));
            _preLayerNorm = Own(DeviceNorm.Load(mem, store, $"{vp}.pre_layrnorm", vh, eps, bias: true));
            int featureLayer = config.ResolvedFeatureLayerIndex;
            _layers = new Layer[featureLayer];
            for (int i = 0; i < featureLayer; i++)
            {
                string lp = $"{vp}.encoder.layers.{i}";
                _layers[i] = new Layer
                {
                    Ln1 = Own(DeviceNorm.Load(mem, store, lp + ".layer_norm1", vh, eps, bias: true)),
                    Ln2 = Own(DeviceNorm.Load(mem, store, lp + ".layer_norm2", vh, eps, bias: true)),
                    Qkv = Own(DeviceLinear.LoadStacked(mem, store,
                        [(lp + ".self_attn.q_proj", vh), (lp + ".self_attn.k_proj", vh), (lp + ".self_attn.v_proj", vh)], vh, true)),
                    O = Own(DeviceLinear.Load(mem, store, lp + ".self_attn.out_proj", vh, vh, true)),
                    Fc1 = Own(DeviceLinear.Load(mem, store, lp + ".mlp.fc1", vh, _cfg.IntermediateSize, true)),
                    Fc2 = Own(DeviceLinear.Load(mem, store, lp + ".mlp.fc2", _cfg.IntermediateSize, vh, true)),
                };
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Grid => _cfg.ImageSize / _cfg.PatchSize;
    public int Patches => Grid * Grid;
    public int Hidden => _cfg.HiddenSize;
    public int Heads => _cfg.NumAttentionHeads;
    /// <summary>Visual tokens one image contributes (the patches, plus [CLS] with the "full" strategy).</summary>
    public int TokensOut => _dropCls ? Patches : Patches + 1;

    /// <summary>Runs the tower on one preprocessed image ([3, size, size], CHW); the caller holds the model's lock and binding.</summary>
    public VisionFeatures Forward(ReadOnlySpan<float> pixels, CancellationToken ct = default)
    {
        int c = _cfg.NumChannels, size = _cfg.ImageSize;
        if (pixels.Length != c * size * size)
            throw new ArgumentException($"Pixel tensor has {pixels.Length} values; the vision tower expects [{c}, {size}, {size}].", nameof(pixels));
        var b = Upload(pixels, 1);
        if (_m.UseCudaGraphs && _forwards > 0)
        {
            ct.ThrowIfCancellationRequested();
            _graph ??= CudaGraph.Capture(_m.Queue, () => Layers(b, 1, default));
            _graph.Launch();
        }
        else Layers(b, 1, ct);
        _forwards++;
        return CopyOut(b, 0);
    }

    private readonly Dictionary<int, Buffers> _batches = [];

    /// <summary>
    /// Runs <paramref name="views"/> images ([views, 3, size, size]) as one batch: the embeddings per view, then every
    /// layer's norms, QKV, output projection and MLP over all views' rows in one launch or GEMM each, attention per view;
    /// each view's features, [CLS] attention and keys copied out as <see cref="Forward"/> does. The caller holds the
    /// model's lock and binding.
    /// </summary>
    public VisionFeatures[] ForwardViews(ReadOnlySpan<float> pixels, int views, CancellationToken ct = default)
    {
        int c = _cfg.NumChannels, size = _cfg.ImageSize;
        if (views < 1 || pixels.Length != (long)views * c * size * size)
            throw new ArgumentException($"Pixel tensor has {pixels.Length} values; the vision tower expects [{views}, {c}, {size}, {size}].", nameof(pixels));
        var b = Upload(pixels, views);
        Layers(b, views, ct);
        var result = new VisionFeatures[views];
        try
        {
            for (int v = 0; v < views; v++) result[v] = CopyOut(b, v);
        }
        catch
        {
            foreach (var f in result) f?.Device?.Release();
            throw;
        }
        return result;
    }

    /// <summary>
    /// Unfolds each view's patches in (channel, row, col) order on the host and sends them up as fp16 (the only upload)
    /// into the working buffers for <paramref name="views"/> views (allocated on first use and kept: a graph refers to them).
    /// </summary>
    private Buffers Upload(ReadOnlySpan<float> pixels, int views)
    {
        int ps = _cfg.PatchSize, c = _cfg.NumChannels, g = Grid, size = _cfg.ImageSize, P = Patches, pk = c * ps * ps;
        int viewLength = c * size * size;
        var patches = new Half[(long)views * P * pk];
        for (int v = 0; v < views; v++)
        {
            var view = pixels.Slice(v * viewLength, viewLength);
            for (int py = 0; py < g; py++)
                for (int px = 0; px < g; px++)
                {
                    int o = (v * P + py * g + px) * pk;
                    for (int ch = 0; ch < c; ch++)
                        for (int y = 0; y < ps; y++, o += ps)
                            TensorPrimitives.ConvertToHalf(view.Slice(ch * size * size + (py * ps + y) * size + px * ps, ps), patches.AsSpan(o, ps));
                }
        }
        if (!_batches.TryGetValue(views, out var b))
            _batches[views] = b = new Buffers(_m.Memory, views * (P + 1), Hidden, _cfg.IntermediateSize, Heads, views * P, pk);
        _m.Queue.Upload(b.PatchesH.View, MemoryMarshal.Cast<Half, ushort>(patches.AsSpan()));
        return b;
    }

    /// <summary>View <paramref name="v"/>'s own copies of its features, [CLS] attention and keys (the buffers are reused by the next image).</summary>
    private VisionFeatures CopyOut(Buffers b, int v)
    {
        int h = Hidden, heads = Heads, P = Patches, tokens = TokensOut;
        long row = (long)v * (P + 1) * h;
        var mem = _m.Memory;
        var features = mem.Allocate<float>((long)tokens * h);
        DeviceBuffer<float>? cls = null, keys = null;
        try
        {
            _m.Queue.Copy(b.X.Slice(row + (_dropCls ? h : 0), (long)tokens * h), features.View);
            if (_layers.Length > 0)
            {
                cls = mem.Allocate<float>((long)heads * P);
                keys = mem.Allocate<float>((long)P * h);
                _m.Queue.Copy(b.Cls.Slice((long)v * heads * P, (long)heads * P), cls.View);
                _m.Queue.Copy(b.K.Slice(row + h, (long)P * h), keys.View);
            }
        }
        catch
        {
            features.Dispose(); cls?.Dispose(); keys?.Dispose();
            throw;
        }
        var device = new DeviceVisionFeatures(_m, features, cls, keys, tokens, h, heads, P);
        return new VisionFeatures { Device = device, Tokens = tokens, Hidden = h, Heads = heads, Patches = P };
    }

    /// <summary>
    /// Everything from the uploaded patches to the feature layer's output, the [CLS] attention and keys, for
    /// <paramref name="views"/> views: embeddings per view, each layer's norms, GEMMs and MLP over every view's rows at
    /// once, attention per view (graph-capturable).
    /// </summary>
    private void Layers(Buffers b, int views, CancellationToken ct)
    {
        int h = Hidden, P = Patches, n1 = P + 1, n = views * n1, heads = Heads, hd = h / heads, inter = _cfg.IntermediateSize;
        var ops = _m.Ops;
        for (int v = 0; v < views; v++)
        {
            long row = (long)v * n1 * h;
            _m.Queue.Copy(_classEmbedding.View, b.X.Slice(row, h));
            _m.Blas.Linear(b.PatchesH.Slice((long)v * P * _patch.In, (long)P * _patch.In), P, _patch.In, _patch.Weight.View, h, b.X.Slice(row + h, (long)P * h));
            ops.Add(b.X.Slice(row, (long)n1 * h), _positionEmbedding.View);
        }
        ops.LayerNorm(b.X.View, b.X.View, n, h, _preLayerNorm.Weight.View, _preLayerNorm.Bias!.View, _preLayerNorm.Eps);
        var split = new QkvShape(heads, heads, hd, Rope: 0); // no RoPE in CLIP: positions are not read
        for (int li = 0; li < _layers.Length; li++)
        {
            ct.ThrowIfCancellationRequested();
            var L = _layers[li];
            ops.LayerNormToHalf(b.X.View, b.XnH.View, n, h, L.Ln1.Weight.View, L.Ln1.Bias!.View, L.Ln1.Eps);
            _m.Linear(L.Qkv, b.XnH.View, n, b.Qkv.View);
            ops.QkvSplitRope(b.Qkv.View, n, _m.Decoder.NoPositions, _m.Decoder.RopeCos.View, _m.Decoder.RopeSin.View,
                b.Q.View, b.K.View, b.QH.View, b.KH.View, b.VH.View, split);
            for (int v = 0; v < views; v++)
            {
                long row = (long)v * n1 * h, len = (long)n1 * h;
                _m.Attend(b.QH.Slice(row, len), b.KH.Slice(row, len), b.VH.Slice(row, len), b.AttH.Slice(row, len), n1, n1, heads, heads, hd, -1, b.Scores, b.Probs);
                if (li == _layers.Length - 1)
                    ops.AttentionWindow(b.Q.Slice(row, len), b.K.Slice(row, len), b.Cls.Slice((long)v * heads * P, (long)heads * P),
                        AttentionShape.Create(n1, n1, heads, heads, hd, causal: false), new WindowShape(0, 1, 1, n1 - 1));
            }
            _m.Linear(L.O, b.AttH.View, n, b.X.View, accumulate: true);
            ops.LayerNormToHalf(b.X.View, b.XnH.View, n, h, L.Ln2.Weight.View, L.Ln2.Bias!.View, L.Ln2.Eps);
            _m.Linear(L.Fc1, b.XnH.View, n, b.Mlp.View);
            ops.Activation(_cfg.Activation, b.Mlp.View);
            _m.ToHalf(b.Mlp.View, b.MlpH.View, (long)n * inter);
            _m.Linear(L.Fc2, b.MlpH.View, n, b.X.View, accumulate: true);
        }
    }

    public override void Dispose()
    {
        _graph?.Dispose();
        foreach (var b in _batches.Values) b.Dispose();
        base.Dispose();
    }
}
