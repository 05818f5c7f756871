using ILGPU;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// One request's decoder state on the GPU: a per-layer fp16 KV cache (each layer holds exactly the tokens that entered it,
/// so a layer after a prune holds fewer), the sequence (hidden states, positions, visual indices) on the device, and the
/// session's working buffers reused across layers and steps. Pruning runs between layers: a policy reads signals through
/// <see cref="CudaLayerView"/> (on the host) or <see cref="DeviceLayerSignals"/> (kept on the device), and the kept rows
/// are gathered on the device.
/// </summary>
/// <remarks>
/// Host synchronisations: a prefill waits once, at its end, for the last position's logits, the greedy token and the
/// pruning report's visual indices together (policies still on the host wait where they read). A greedy decode step
/// waits once, for the 4-byte id. Decoding reads each layer's cache length and position from device memory (the decode
/// state), so a step is the same launches every time and can be replayed as a CUDA graph. Every method but
/// <see cref="Dispose"/> runs inside the backend's <see cref="Backend.Enter"/>.
/// </remarks>
internal sealed class CudaDecoderSession : DecoderSession
{
    /// <summary>One of the two sets of sequence buffers prunes alternate between.</summary>
    private sealed class SequenceBuffers(DeviceArena mem)
    {
        public readonly Scratch<float> X = new(mem);
        public readonly Scratch<int> Positions = new(mem), Visual = new(mem);
        public void Dispose() { X.Dispose(); Positions.Dispose(); Visual.Dispose(); }
    }

    private readonly CudaBackend _b;
    private readonly CudaKvLayer?[] _caches;
    private readonly SequenceBuffers[] _sets;
    private int _current; // which set holds the sequence; -1: the BuiltSequence the prompt was built in
    private BuiltSequence? _built;
    private readonly Scratch<float> _q, _k, _extraRows;
    private readonly Scratch<int> _state, _plan, _history, _token;
    private readonly List<IDisposable> _layerScratch = [];
    private readonly List<(int Version, long Offset, int Length)> _snapshots = [];
    private readonly List<Action<DeviceQueue.Readback>> _atEnd = [];
    private readonly GraphSlot _decodeGraph = new();
    private long _historyUsed;
    private int _signalsLayer = -1;
    private int _maxCapacity;
    /// <summary>
    /// The layer a prune's gather prepared: its input norm in the "xn" buffer, or (WithQkv) its q|k|v projection in "qkv"
    /// (Layer -1: none); <see cref="_consumed"/> is what the layer now running found.
    /// </summary>
    private (int Layer, bool WithQkv) _preparedFor = (-1, false), _consumed = (-1, false);
    /// <summary>
    /// The q|k|v projection a pruning policy computed during the current prune (layer scratch, cleared with it): its
    /// layer, the hidden states' version, the rows.
    /// </summary>
    private (int Layer, int Version, ArrayView<float> Qkv)? _computedQkv;
    private int? _deviceToken;
    private int _version; // bumped whenever the device hidden states change, so stale lazy downloads fail loudly
    private bool _disposed;

    public CudaDecoderSession(CudaBackend backend, IDecoderWeights weights, DecoderShape shape, int extraCapacity)
        : base(backend, weights, shape, extraCapacity)
    {
        _b = backend;
        _caches = new CudaKvLayer?[shape.Layers];
        var mem = backend.Memory;
        _sets = [new SequenceBuffers(mem), new SequenceBuffers(mem)];
        _q = new(mem); _k = new(mem); _extraRows = new(mem);
        _state = new(mem); _plan = new(mem); _history = new(mem); _token = new(mem);
    }

    internal CudaBackend CudaBackend => _b;
    internal int Heads => Shape.Heads.Heads;
    internal int KvHeads => Shape.Heads.KvHeads;
    internal int HeadDim => Shape.Heads.HeadDim;
    internal int Layers => Shape.Layers;
    private int H => Shape.Hidden;
    private int Qd => Shape.Heads.QDim;
    private int Kvd => Shape.Heads.KvDim;
    private static ArrayView<float> F(Tensor t) => CudaBackend.Dev(t).F;

    /// <summary>The current sequence's hidden states [n, Hidden].</summary>
    internal ArrayView<float> X(int n) => _current < 0 ? CudaBackend.Dev(_built!.Hidden).F.SubView(0, (long)n * H) : _sets[_current].X.Get((long)n * H);
    /// <summary>Position components per row: the current sequence's positions are [Components, n].</summary>
    internal int Components => Weights.Rope.Components;

    internal ArrayView<int> PositionsView(int n) => _current < 0 ? CudaBackend.Dev(_built!.Positions).I.SubView(0, (long)Components * n) : _sets[_current].Positions.Get((long)Components * n);
    internal ArrayView<int> Visual(int n) => _current < 0 ? CudaBackend.Dev(_built!.Visual).I.SubView(0, n) : _sets[_current].Visual.Get(n);

    public override Tensor Hidden(int rows) => DeviceTensor.Of(X(rows));
    public override Tensor Positions(int rows) => DeviceTensor.Of(PositionsView(rows));

    public override void BeginPrefill(SequenceState state)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_caches[0] is not null) throw new InvalidOperationException("This generation has already run its prefill.");
        int h = H, n = state.Length;
        if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(state));
        if (state.Built is { } built)
        {
            // Built on the device: take it over (its positions are increasing, the host knows the last).
            if (built.Rows != n) throw new ArgumentException($"The device sequence has {built.Rows} rows but the state {n}.", nameof(state));
            if (built.Positions.Length < (long)Components * n)
                throw new ArgumentException($"The device sequence holds {built.Positions.Length} position values; the decoder's rotary embedding needs {Components} per row ({Components * (long)n}).", nameof(state));
            CheckPositions(built.LastPosition + ExtraCapacity);
            _built = built;
            state.Built = null;
            _current = -1;
        }
        else
        {
            // Built on the host (tests, tools): its rows go up.
            var positions = state.Positions;
            if (positions.Components != Components || positions.Count != n)
                throw new ArgumentException($"The sequence has {positions.Count} positions of {positions.Components} component(s); the decoder needs {n} of {Components}.", nameof(state));
            for (int i = 0; i < n; i++) CheckPositions(positions.MaxAt(i) + ExtraCapacity);
            _current = 0;
            _b.Queue.Upload(X(n), state.Hidden.AsSpan(0, n * h));
            _b.Queue.Upload(PositionsView(n), positions.Values);
            _b.Queue.Upload(Visual(n), state.VisualIndex.AsSpan(0, n));
        }
        _version++;
        _maxCapacity = n + ExtraCapacity;
        _state.Get(2L * Layers);
        _history.Get(Math.Max(1, (long)Layers * n));
    }

    private void CheckPositions(int largest)
    {
        if (largest >= Shape.MaxPositions)
            throw new InvalidOperationException($"Position {largest} is outside the model's {Shape.MaxPositions} rotary positions.");
    }

    public override KvLayer NewCache(int layer, int rows)
    {
        int cap = rows + ExtraCapacity;
        var mem = _b.Memory;
        var k = mem.Allocate<ushort>((long)cap * Kvd);
        DeviceBuffer<ushort> v;
        try { v = mem.Allocate<ushort>((long)cap * Kvd); }
        catch { k.Dispose(); throw; }
        return _caches[layer] = new CudaKvLayer(k, v, cap, Kvd, layer, _state.Get(2L * Layers), _maxCapacity);
    }

    public override KvLayer Cache(int layer) => _caches[layer] ?? throw new InvalidOperationException($"Layer {layer} has not run.");

    public override (Tensor Q, Tensor K) Signals(int layer, int rows)
        => (DeviceTensor.Of(_q.Get((long)rows * Qd)), DeviceTensor.Of(_k.Get((long)rows * Kvd)));

    public override Tensor InputNorm(int layer, int rows)
    {
        _consumed = _preparedFor;
        _preparedFor = (-1, false);
        var xn = Work.Get("xn", (long)rows * H, TensorKind.Half);
        if (_consumed.Layer != layer) Backend.Norm(Weights.InputNorm(layer), Hidden(rows), xn, rows);
        return xn;
    }

    public override Tensor Qkv(int layer, int rows, Tensor inputNorm)
    {
        var qkv = Work.Get("qkv", (long)rows * Shape.Heads.Width, TensorKind.Float);
        if (_consumed.Layer != layer || !_consumed.WithQkv) Backend.Linear(Weights.Qkv(layer), inputNorm, rows, qkv);
        _consumed = (-1, false);
        return qkv;
    }

    public override void LayerComputed(int layer, bool signalsKept)
    {
        _signalsLayer = signalsKept ? layer : -1;
        _version++;
    }

    public override PruneAction? AfterLayer(IPrefillHook hook, int layer, SequenceState state)
    {
        ExposeHidden(state, state.Length);
        return hook.AfterLayer(new CudaLayerView(this, layer, state));
    }

    public override float[] FinishPrefill(SequenceState state, Action<Tensor, Tensor> logitsOfRow)
    {
        int h = H;
        ExposeHidden(state, state.Length);
        // The only wait of the prefill: logits, the greedy token and what the report needs, in one readback.
        var logits = Work.Get("logits", Shape.Vocab, TensorKind.Float);
        logitsOfRow(DeviceTensor.Of(X(state.Length).SubView((long)(state.Length - 1) * h, h)), logits);
        var token = _token.Get(1);
        _b.Ops.ArgMaxRows(F(logits), 1, Shape.Vocab, token);
        var readback = _b.Queue.BeginReadback(_b.Memory);
        float[] result = [];
        readback.Add(F(logits), Shape.Vocab, r => result = r);
        readback.Add(token, 1, t => _deviceToken = t[0]);
        foreach (var (version, offset, length) in _snapshots)
        {
            int v = version;
            readback.Add(_history.Buffer.Slice(offset, length), length, vis => state.ResolveVisual(v, vis));
        }
        if (!state.VisualKnown(state.Version))
        {
            int v = state.Version;
            readback.Add(Visual(state.Length), state.Length, vis => state.ResolveVisual(v, vis));
        }
        foreach (var add in _atEnd) add(readback);
        readback.Flush();
        _atEnd.Clear();
        return result;
    }

    /// <summary>A launch may have stopped part-way (or be in flight when cancelled): the ticket of the kernels whose last group carries on goes back to 0.</summary>
    public override void PrefillFailed() => _b.Ops.ResetLastGroupTicket();

    /// <summary>
    /// A device buffer of <paramref name="length"/> values that comes back with the prefill's final readback (no wait of
    /// its own) to <paramref name="deliver"/>: a kernel writes its result straight into it (it outlives the layer's
    /// scratch, which later prunes reuse).
    /// </summary>
    internal ArrayView<T> AtEnd<T>(long length, Action<T[]> deliver) where T : unmanaged
    {
        var keep = _b.Memory.Allocate<T>(Math.Max(1, length));
        _atEnd.Add(r => r.Add(keep.View, length, v => { deliver(v); keep.Dispose(); }));
        return keep.View.SubView(0, length);
    }

    public override Tensor Token => DeviceTensor.Of(_token.Get(1));

    public override float[] Step(int tokenId, Tensor logits, Action launches)
    {
        DecodeStep(tokenId, launches);
        _deviceToken = null; // the device holds the argmax; a sampler may choose another id
        return _b.Queue.Download(F(logits), Shape.Vocab);
    }

    public override int StepGreedy(int tokenId, Action launches)
    {
        DecodeStep(tokenId, launches);
        var id = new int[1];
        _b.Queue.Download(_token.Get(1), id.AsSpan()); // the step's only wait: 4 bytes
        _deviceToken = id[0];
        return id[0];
    }

    /// <summary>
    /// One generated token through every layer: its key and value appended to each layer's cache, the next greedy id left
    /// in device memory. The token comes from device memory too (set by a one-thread launch only when the caller chose
    /// another than the device holds).
    /// </summary>
    private void DecodeStep(int tokenId, Action launches)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_caches[0] is null) throw new InvalidOperationException("Prefill first.");
        if ((uint)tokenId >= (uint)Shape.Vocab)
            throw new ArgumentOutOfRangeException(nameof(tokenId), $"Token id {tokenId} is outside the vocabulary (size {Shape.Vocab}).");
        for (int li = 0; li < _caches.Length; li++)
        {
            var c = _caches[li]!;
            if (c.Count >= c.Capacity) throw new InvalidOperationException($"KV cache of layer {li} is full ({c.Capacity} tokens).");
        }
        if (_deviceToken != tokenId)
        {
            _b.Ops.SetToken(_token.Get(1), tokenId);
            _deviceToken = tokenId;
        }
        _version++;
        _b.RunReplayable(_decodeGraph, launches);
        foreach (var c in _caches) c!.Count++;
    }

    public override void AdvanceDecode() => _b.Ops.AdvanceDecodeState(_state.Get(2L * Layers), Layers);

    public override int[] CachedTokensPerLayer() => _caches.Select(c => c?.Count ?? 0).ToArray();

    /// <summary>Lets host code read the current hidden states (copied on first use, and only while they are current).</summary>
    private void ExposeHidden(SequenceState state, int n)
    {
        int version = _version;
        var view = X(n);
        state.HiddenOnDevice(() =>
        {
            using var scope = _b.Enter();
            if (version != _version || _disposed)
                throw new InvalidOperationException("The device hidden states changed since this sequence state was current.");
            return _b.Queue.Download(view, (long)n * H);
        });
    }

    /// <summary>
    /// Keeps and merges rows on the device (<see cref="CudaOps.GatherSequenceNormed"/>: hidden states, positions, visual
    /// indices and the next layer's input norm in one launch). A device prune's plan is already there; a host prune's rows
    /// go up. The visual indices of a version only the device knows are kept for the report, read back at the end.
    /// </summary>
    public override void Apply(SequenceState state, PruneAction action, int nextLayer)
    {
        int h = H, n = state.Length;
        ArrayView<int> plan;
        ArrayView<float> extra;
        int rows, visualRun, extraRows;
        if (action.OnDevice is { } d)
        {
            plan = d.Plan;
            extra = d.ExtraRows > 0 ? d.Extra : _extraRows.Get(1);
            extraRows = d.ExtraRows;
            rows = d.Rows;
            visualRun = d.VisualRun;
        }
        else
        {
            rows = action.NewRows.Length;
            plan = _plan.Get(rows);
            _b.Queue.Upload(plan, action.NewRows);
            extraRows = action.ExtraRows is null ? 0 : action.ExtraRows.Length / h;
            extra = _extraRows.Get(Math.Max(1, (long)extraRows * h));
            if (extraRows > 0) _b.Queue.Upload(extra, action.ExtraRows.AsSpan(0, extraRows * h));
            visualRun = -1;
        }
        if (rows == 0) throw new InvalidOperationException("A pruning policy removed every token.");
        bool snapshot = !state.VisualKnown(state.Version);
        var history = snapshot ? _history.Buffer.Slice(_historyUsed, n) : _history.Get(1);
        if (snapshot)
        {
            _snapshots.Add((state.Version, _historyUsed, n));
            _historyUsed += n;
        }
        int dst = _current == 0 ? 1 : 0;
        var set = _sets[dst];
        // The gather also prepares the next layer: the q|k|v a prune computed for it on these rows (no merged rows), or
        // the new rows' input norm (one launch instead of two or three).
        var norm = (DeviceNorm)Weights.InputNorm(nextLayer);
        int width = Shape.Heads.Width;
        bool reuse = _computedQkv is { } c && c.Layer == nextLayer && c.Version == _version && extraRows == 0;
        var shape = new GatherShape(rows, h, action.RenumberPositions ? 1 : 0, snapshot ? n : 0, reuse ? width : 0, Components, n);
        _b.Ops.GatherSequenceNormed(X(n), extra, plan, set.X.Get((long)rows * h), PositionsView(n), set.Positions.Get((long)Components * rows), Visual(n), set.Visual.Get(rows),
            history, CudaBackend.Dev(Work.Get("xn", (long)rows * h, TensorKind.Half)).H, norm.Weight.View, norm.Eps, shape,
            reuse ? _computedQkv!.Value.Qkv : default, reuse ? F(Work.Get("qkv", (long)rows * width, TensorKind.Float)) : default);
        _preparedFor = (nextLayer, reuse);
        _current = dst;
        _version++;
        if (action.OnDevice is null) state.ApplyRows(action);
        else
        {
            var pos = set.Positions;
            var vis = set.Visual;
            int components = Components;
            state.AppliedOnDevice(rows, visualRun, () =>
            {
                using var scope = _b.Enter();
                var rb = _b.Queue.BeginReadback(_b.Memory);
                int[] p = [], v = [];
                rb.Add(pos.Get((long)components * rows), (long)components * rows, r => p = r);
                rb.Add(vis.Get(rows), rows, r => v = r);
                rb.Flush();
                return (components == 1 ? PositionIds.OneComponent(p) : PositionIds.FromValues(components, rows, p), v);
            });
        }
        ExposeHidden(state, rows); // (positions only shrink or stay: the check at the start covers them)
    }

    /// <summary>A scratch buffer that lives until the current layer's prune is applied.</summary>
    internal DeviceBuffer<T> LayerScratch<T>(long length) where T : unmanaged
    {
        var b = _b.Memory.Allocate<T>(Math.Max(1, length));
        _layerScratch.Add(b);
        return b;
    }

    public override void EndLayer()
    {
        foreach (var b in _layerScratch) b.Dispose();
        _layerScratch.Clear();
        _computedQkv = null; // it lived in that scratch
    }

    /// <summary>The fp32 queries and keys of the current layer, when a policy announced it reads them (<see cref="IPrefillHook.ReadsAttention"/>).</summary>
    internal (ArrayView<float> Q, ArrayView<float> K) LayerQueryKeys(int layer, int n)
    {
        if (_signalsLayer != layer)
            throw new InvalidOperationException($"Layer {layer}'s attention was not kept: the pruning hook said it would not read it (IPrefillHook.ReadsAttention).");
        return (_q.Get((long)n * Qd), _k.Get((long)n * Kvd));
    }

    /// <summary>The keys layer <paramref name="layer"/> cached (fp16, after RoPE): [rows, KvHeads·HeadDim].</summary>
    internal ArrayView<ushort> CachedKeys(int layer) => _caches[layer]?.K.View ?? throw new InvalidOperationException($"Layer {layer} has not run.");

    /// <summary>Attention probabilities of the current layer for some query rows: [heads, rows, n] (host).</summary>
    internal float[] AttentionRows(int layer, ReadOnlySpan<int> rows, int n)
    {
        if (rows.Length == 0) return [];
        var (q, k) = LayerQueryKeys(layer, n);
        var index = _plan.Get(rows.Length);
        _b.Queue.Upload(index, rows);
        long size = (long)Heads * rows.Length * n;
        using var result = _b.Memory.Allocate<float>(size);
        _b.Ops.AttentionRowsGrouped(q, k, index, result.View, AttentionShape.Create(n, n, Heads, KvHeads, HeadDim, causal: true));
        return _b.Queue.Download(result.View, size);
    }

    private QkvShape QkvShapeOf(bool rope) => new QkvShape(Heads, KvHeads, HeadDim, rope ? 1 : 0, 1).WithSections(rope ? Weights.Rope.Sections : null);

    /// <summary>
    /// Layer <paramref name="layer"/>'s queries and keys (its input norm and optionally RoPE) on the current hidden states,
    /// fp32, into layer scratch: q [n, heads·hd], k [n, kvHeads·hd].
    /// </summary>
    internal (ArrayView<float> Q, ArrayView<float> K) QueryKeysOnDevice(int layer, int n, bool rope)
    {
        var shape = QkvShapeOf(rope);
        var qkv = QkvOnDevice(layer, n);
        var q = LayerScratch<float>((long)n * Qd);
        var k = LayerScratch<float>((long)n * Kvd);
        var qH = LayerScratch<ushort>((long)n * Qd);
        var kH = LayerScratch<ushort>((long)n * Kvd);
        var vH = LayerScratch<ushort>((long)n * Kvd);
        var r = (CudaRotary)Weights.Rope;
        _b.Ops.QkvSplitRope(qkv, n, PositionsView(n), r.Cos.View, r.Sin.View, q.View, k.View, qH.View, kH.View, vH.View, shape);
        return (q.View, k.View);
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s q|k|v projection (its input norm, the stacked GEMM; no RoPE) of the current
    /// <paramref name="n"/> rows: fp32 [n, Width] in layer scratch, two launches.
    /// </summary>
    internal ArrayView<float> QkvOnDevice(int layer, int n)
    {
        var norm = (DeviceNorm)Weights.InputNorm(layer);
        int h = H;
        var xn = LayerScratch<ushort>((long)n * h);
        var qkv = LayerScratch<float>((long)n * Shape.Heads.Width);
        _b.Ops.RmsNormToHalf(X(n), xn.View, n, h, norm.Weight.View, norm.Eps);
        _b.Linear(Weights.Qkv(layer), DeviceTensor.Of(xn.View), n, DeviceTensor.Of(qkv.View));
        _computedQkv = (layer, _version, qkv.View);
        return qkv.View;
    }

    /// <summary>The current layer's keys after RoPE (fp32, as the host policies read them): [n, kvHeads*headDim], copied to the host.</summary>
    internal float[] LayerKeys(int layer, int n) => _b.Queue.Download(LayerQueryKeys(layer, n).K, (long)n * Kvd);

    /// <summary>Layer <paramref name="layer"/>'s queries and keys on the current hidden states, copied to the host.</summary>
    internal (float[] Q, float[] K) QueryKeys(int layer, int n, bool rope)
    {
        var (q, k) = QueryKeysOnDevice(layer, n, rope);
        var rb = _b.Queue.BeginReadback(_b.Memory);
        float[] qh = [], kh = [];
        rb.Add(q, (long)n * Qd, r => qh = r);
        rb.Add(k, (long)n * Kvd, r => kh = r);
        rb.Flush();
        return (qh, kh);
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s key projection without RoPE (its input norm, the k rows of q|k|v) of rows
    /// [rowStart, rowStart + rows) of the current hidden states: fp32 [rows, KvHeads·HeadDim] in layer scratch.
    /// </summary>
    internal ArrayView<float> KeysNoRopeOnDevice(int layer, int n, int rowStart, int rows)
    {
        var norm = (DeviceNorm)Weights.InputNorm(layer);
        var qkv = (DeviceLinear)Weights.Qkv(layer);
        int h = H;
        var xn = LayerScratch<ushort>((long)rows * h);
        var keys = LayerScratch<float>((long)rows * Kvd);
        _b.Ops.RmsNormToHalf(X(n).SubView((long)rowStart * h, (long)rows * h), xn.View, rows, h, norm.Weight.View, norm.Eps);
        var (w, outRows) = qkv.Rows(Qd, Kvd);
        _b.Blas.Linear(xn.View, rows, h, w, outRows, keys.View);
        if (qkv.Bias is { } b) _b.Ops.AddBias(keys.View, rows, Kvd, b.View.SubView(Qd, Kvd));
        return keys.View;
    }

    public override void Dispose()
    {
        using var scope = _b.Enter();
        if (_disposed) return;
        _disposed = true;
        _decodeGraph.Dispose();
        EndLayer();
        foreach (var c in _caches) c?.Dispose();
        _built?.Dispose();
        foreach (var s in _sets) s.Dispose();
        foreach (var s in new IDisposable[] { _q, _k, _extraRows, _state, _plan, _history, _token }) s.Dispose();
        Work.Dispose();
    }
}
