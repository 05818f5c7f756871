using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// The CLIP ViT vision tower (checkpoint prefix <c>vision_tower.vision_model</c>, the layers up to the feature layer),
/// written once over a <see cref="Backend"/>'s ops. Several views (a LLaVA-NeXT image's base view and tiles) run as one
/// batch: every layer's norms, GEMMs and MLP over all views' rows at once, attention per view. Only the pixels go to the
/// backend (as Half patches); the features, the [CLS] attention and the patch keys stay there
/// (<see cref="Backend.KeepVision"/>). On a serialized backend (a GPU) the working buffers are kept per batch size, so a
/// single view's forward can be replayed as a graph.
/// </summary>
internal sealed class ClipVisionTower : IDisposable
{
    private sealed class Layer
    {
        public required NormWeight Ln1, Ln2;
        /// <summary>q|k|v stacked ([3·hidden, hidden], biases likewise).</summary>
        public required LinearWeight Qkv, O, Fc1, Fc2;
    }

    private readonly Backend _b;
    private readonly ClipVisionConfig _cfg;
    private readonly bool _dropCls;
    private readonly LinearWeight _patch;
    private readonly Tensor _classEmbedding, _positionEmbedding;
    private readonly NormWeight _preLayerNorm;
    private readonly Layer[] _layers;
    private readonly ActivationFunction _act;
    private readonly Dictionary<int, (Workspace Work, GraphSlot Graph)> _kept = [];

    public ClipVisionTower(Backend backend, ITensorSource store, ClipVisionConfig cfg, int featureLayer, bool dropCls)
    {
        _b = backend;
        _cfg = cfg;
        _dropCls = dropCls;
        _act = cfg.Activation; // an unsupported activation fails at load
        const string p = "vision_tower.vision_model";
        int h = cfg.HiddenSize, ps = cfg.PatchSize, c = cfg.NumChannels;
        float eps = (float)cfg.LayerNormEps;
        _patch = backend.LoadLinear(store, $"{p}.embeddings.patch_embedding.weight", c * ps * ps, h, [h, c, ps, ps]);
        _classEmbedding = backend.Constant(store.ReadFloat32($"{p}.embeddings.class_embedding", h));
        _positionEmbedding = backend.Constant(store.ReadFloat32($"{p}.embeddings.position_embedding.weight", Patches + 1, h));
        _preLayerNorm = backend.LoadNorm(store, $"{p}.pre_layrnorm", h, eps, NormKind.LayerNorm);
        _layers = new Layer[featureLayer];
        for (int i = 0; i < featureLayer; i++)
        {
            string lp = $"{p}.encoder.layers.{i}";
            _layers[i] = new Layer
            {
                Ln1 = backend.LoadNorm(store, lp + ".layer_norm1", h, eps, NormKind.LayerNorm),
                Ln2 = backend.LoadNorm(store, lp + ".layer_norm2", h, eps, NormKind.LayerNorm),
                Qkv = backend.LoadLinear(store, [(lp + ".self_attn.q_proj", h), (lp + ".self_attn.k_proj", h), (lp + ".self_attn.v_proj", h)], h, true),
                O = backend.LoadLinear(store, lp + ".self_attn.out_proj", h, h, true),
                Fc1 = backend.LoadLinear(store, lp + ".mlp.fc1", h, cfg.IntermediateSize, true),
                Fc2 = backend.LoadLinear(store, lp + ".mlp.fc2", cfg.IntermediateSize, h, true),
            };
        }
    }

    public int Hidden => _cfg.HiddenSize;
    public int Heads => _cfg.NumAttentionHeads;
    public int Grid => _cfg.ImageSize / _cfg.PatchSize;
    public int Patches => Grid * Grid;

    /// <summary>Visual tokens one image contributes (the patches, plus [CLS] with the "full" strategy).</summary>
    public int OutputTokens => _dropCls ? Patches : Patches + 1;

    /// <summary>The tower's linear layers, for inspection.</summary>
    internal IEnumerable<LinearWeight> Linears => _layers.SelectMany(l => new[] { l.Qkv, l.O, l.Fc1, l.Fc2 }).Prepend(_patch);

    /// <summary>Runs the tower on one preprocessed image ([3, size, size], CHW).</summary>
    public VisionFeatures Forward(ReadOnlySpan<float> pixels, CancellationToken ct = default) => Forward(pixels, 1, ct)[0];

    /// <summary>Runs <paramref name="views"/> images ([views, 3, size, size]) as one batch; <paramref name="ct"/> is checked between layers.</summary>
    public VisionFeatures[] Forward(ReadOnlySpan<float> pixels, int views, CancellationToken ct = default)
    {
        int c = _cfg.NumChannels, size = _cfg.ImageSize;
        if (views < 1 || pixels.Length != (long)views * c * size * size)
            throw new ArgumentException($"Pixel tensor has {pixels.Length} values; the vision tower expects [{views}, {c}, {size}, {size}].", nameof(pixels));
        using var scope = _b.Enter();
        // A serialized backend keeps one set of buffers per batch size (a graph refers to them); otherwise each call has its own.
        bool keep = _b.Serialized;
        (Workspace Work, GraphSlot Graph) set;
        if (!keep || !_kept.TryGetValue(views, out set))
        {
            set = (_b.CreateWorkspace(), new GraphSlot());
            if (keep) _kept[views] = set;
        }
        try
        {
            var w = set.Work;
            UploadPatches(pixels, views, w);
            if (views == 1)
            {
                ct.ThrowIfCancellationRequested();
                _b.RunReplayable(set.Graph, () => Layers(w, 1, default));
            }
            else Layers(w, views, ct);
            var result = new VisionFeatures[views];
            try
            {
                for (int v = 0; v < views; v++) result[v] = CopyOut(w, v);
            }
            catch
            {
                foreach (var f in result) f?.Device?.Release();
                throw;
            }
            return result;
        }
        finally
        {
            if (!keep) { set.Work.Dispose(); set.Graph.Dispose(); }
        }
    }

    /// <summary>Unfolds each view's patches in (channel, row, col) order on the host; they go to the backend as Half (the only upload).</summary>
    private void UploadPatches(ReadOnlySpan<float> pixels, int views, Workspace w)
    {
        int ps = _cfg.PatchSize, c = _cfg.NumChannels, g = Grid, size = _cfg.ImageSize, P = Patches, pk = c * ps * ps;
        int viewLength = c * size * size;
        var patches = new float[(long)views * P * pk];
        for (int v = 0; v < views; v++)
        {
            var view = pixels.Slice(v * viewLength, viewLength);
            for (int py = 0; py < g; py++)
                for (int px = 0; px < g; px++)
                {
                    int o = (v * P + py * g + px) * pk;
                    for (int ch = 0; ch < c; ch++)
                        for (int y = 0; y < ps; y++, o += ps)
                            view.Slice(ch * size * size + (py * ps + y) * size + px * ps, ps).CopyTo(patches.AsSpan(o, ps));
                }
        }
        _b.Upload(patches, w.Get("patches", patches.Length, TensorKind.Half));
    }

    /// <summary>
    /// Everything from the uploaded patches to the feature layer's output, its [CLS] attention and keys, for
    /// <paramref name="views"/> views (replayable: fixed buffers, nothing read from the host).
    /// </summary>
    private void Layers(Workspace w, int views, CancellationToken ct)
    {
        int h = Hidden, P = Patches, n1 = P + 1, n = views * n1, heads = Heads, hd = h / heads, inter = _cfg.IntermediateSize, pk = _patch.In;
        var patches = w.Get("patches", (long)views * P * pk, TensorKind.Half);
        var x = w.Get("x", (long)n * h, TensorKind.Float);
        var xn = w.Get("xn", (long)n * h, TensorKind.Half);
        var qkv = w.Get("qkv", (long)n * 3 * h, TensorKind.Float);
        var q32 = w.Get("q32", (long)n * h, TensorKind.Float);
        var k32 = w.Get("k32", (long)n * h, TensorKind.Float);
        var q = w.Get("q", (long)n * h, TensorKind.Half);
        var k = w.Get("k", (long)n * h, TensorKind.Half);
        var v = w.Get("v", (long)n * h, TensorKind.Half);
        var att = w.Get("att", (long)n * h, TensorKind.Half);
        var mlp = w.Get("mlp", (long)n * inter, TensorKind.Float);
        var mlpH = w.Get("mlpH", (long)n * inter, TensorKind.Half);
        var cls = w.Get("cls", (long)views * heads * P, TensorKind.Float);
        for (int view = 0; view < views; view++)
        {
            var rows = x.Rows((long)view * n1, n1, h);
            _b.Copy(_classEmbedding, rows.First(h));
            _b.Linear(_patch, patches.Rows((long)view * P, P, pk), P, rows.Slice(h, (long)P * h));
            _b.Add(rows, _positionEmbedding);
        }
        _b.Norm(_preLayerNorm, x, x, n);
        var layout = new HeadLayout(heads, heads, hd);
        var shape = AttentionShape.Create(n1, n1, heads, heads, hd, causal: false);
        for (int li = 0; li < _layers.Length; li++)
        {
            ct.ThrowIfCancellationRequested();
            var L = _layers[li];
            _b.Norm(L.Ln1, x, xn, n);
            _b.Linear(L.Qkv, xn, n, qkv);
            _b.SplitHeads(qkv, n, layout, null, null, q32, k32, q, k, v, null);
            for (int view = 0; view < views; view++)
            {
                long row = (long)view * n1;
                _b.Attention(q.Rows(row, n1, h), k.Rows(row, n1, h), v.Rows(row, n1, h), att.Rows(row, n1, h), shape, -1, w);
                if (li == _layers.Length - 1)
                    _b.AttentionWindow(q32.Rows(row, n1, h), k32.Rows(row, n1, h), cls.Slice((long)view * heads * P, (long)heads * P), shape, new WindowShape(0, 1, 1, n1 - 1));
            }
            _b.Linear(L.O, att, n, x, accumulate: true);
            _b.Norm(L.Ln2, x, xn, n);
            _b.Linear(L.Fc1, xn, n, mlp);
            _b.Activation(_act, mlp);
            _b.ToHalf(mlp, mlpH);
            _b.Linear(L.Fc2, mlpH, n, x, accumulate: true);
        }
    }

    /// <summary>View <paramref name="view"/>'s own copies of its features, [CLS] attention and keys (the buffers are reused by the next image).</summary>
    private VisionFeatures CopyOut(Workspace w, int view)
    {
        int h = Hidden, heads = Heads, P = Patches, n1 = P + 1, tokens = OutputTokens;
        long row = (long)view * n1 * h;
        var x = w.Get("x", row + (long)n1 * h, TensorKind.Float);
        var features = x.Slice(row + (_dropCls ? h : 0), (long)tokens * h);
        if (_layers.Length == 0) return _b.KeepVision(features, null, null, tokens, h, heads, P);
        var cls = w.Get("cls", (long)(view + 1) * heads * P, TensorKind.Float).Slice((long)view * heads * P, (long)heads * P);
        var keys = w.Get("k32", row + (long)n1 * h, TensorKind.Float).Slice(row + h, (long)P * h);
        return _b.KeepVision(features, cls, keys, tokens, h, heads, P);
    }

    public void Dispose()
    {
        foreach (var (work, graph) in _kept.Values) { graph.Dispose(); work.Dispose(); }
        _kept.Clear();
    }
}
