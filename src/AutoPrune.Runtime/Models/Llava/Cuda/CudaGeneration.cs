using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// One request's decoding on the GPU: a per-layer fp16 KV cache (each layer holds exactly the tokens that entered it,
/// so a layer after a prune holds fewer), the sequence (hidden states, positions, visual indices) on the device, and
/// scratch buffers reused across layers and steps. Pruning runs between layers: a policy reads signals through
/// <see cref="CudaLayerView"/> (on the host) or <see cref="DeviceLayerSignals"/> (kept on the device), and the kept rows
/// are gathered on the device.
/// </summary>
/// <remarks>
/// Host synchronisations: a prefill waits once, at its end, for the last position's logits, the greedy token and the
/// pruning report's visual indices together (policies still on the host wait where they read). A greedy decode step
/// waits once, for the 4-byte id. Decoding reads each layer's cache length and position from device memory (the
/// decode state), so a step is the same launches every time and can be replayed as a CUDA graph.
/// </remarks>
internal sealed class CudaGeneration : IGeneration
{
    private sealed class LayerCache(DeviceBuffer<ushort> k, DeviceBuffer<ushort> v, int capacity)
    {
        public DeviceBuffer<ushort> K { get; } = k;
        public DeviceBuffer<ushort> V { get; } = v;
        public int Capacity { get; } = capacity;
        /// <summary>Rows held (the host's mirror of the decode state's length).</summary>
        public int Count;
    }

    /// <summary>One of the two sets of sequence buffers prunes alternate between.</summary>
    private sealed class SequenceBuffers(DeviceArena mem)
    {
        public readonly Scratch<float> X = new(mem);
        public readonly Scratch<int> Positions = new(mem), Visual = new(mem);
        public void Dispose() { X.Dispose(); Positions.Dispose(); Visual.Dispose(); }
    }

    private readonly CudaLlavaModel _m;
    private readonly CudaLlamaDecoder _d;
    private readonly int _extra;
    private readonly LayerCache?[] _caches;
    private readonly SequenceBuffers[] _sets;
    private int _current; // which set holds the sequence; -1: the DeviceSequence the prompt was built in
    private DeviceSequence? _built;
    private readonly Scratch<float> _qkv, _q, _k, _scores, _extraRows;
    private readonly Scratch<ushort> _xnH, _qH, _attH, _gateUpH, _actH, _probs;
    private readonly Scratch<float> _gateUp;
    private readonly Scratch<int> _state, _plan, _history;
    // Decode: fixed buffers, so a captured graph's pointers stay valid.
    private readonly Scratch<float> _dx, _dqkv, _dgateUp, _dscores, _logits;
    private readonly Scratch<ushort> _dxnH, _dqH, _dattH, _dgateUpH, _dactH;
    private readonly Scratch<int> _token;
    private readonly List<IDisposable> _layerScratch = [];
    private readonly List<(int Version, long Offset, int Length)> _snapshots = [];
    private readonly List<Action<DeviceQueue.Readback>> _atEnd = [];
    private long _historyUsed;
    private int _signalsLayer = -1;
    /// <summary>
    /// The layer a prune's gather prepared: its input norm in _xnH, or (WithQkv) its q|k|v projection in _qkv
    /// (Layer -1: none).
    /// </summary>
    private (int Layer, bool WithQkv) _preparedFor = (-1, false);
    /// <summary>
    /// The q|k|v projection a pruning policy computed during the current prune (layer scratch, cleared with it): its
    /// layer, the hidden states' version, the rows.
    /// </summary>
    private (int Layer, int Version, ArrayView<float> Qkv)? _computedQkv;
    private int? _deviceToken;
    private CudaGraph? _decodeGraph;
    private int _decodeSteps;
    private int _version; // bumped whenever the device hidden states change, so stale lazy downloads fail loudly
    private bool _disposed;

    public CudaGeneration(CudaLlavaModel model, int extraCapacity)
    {
        _m = model;
        _d = model.Decoder;
        _extra = Math.Max(0, extraCapacity);
        _caches = new LayerCache?[model.DecoderLayers];
        var mem = model.Memory;
        _sets = [new SequenceBuffers(mem), new SequenceBuffers(mem)];
        _qkv = new(mem); _q = new(mem); _k = new(mem); _scores = new(mem); _extraRows = new(mem); _gateUp = new(mem);
        _xnH = new(mem); _qH = new(mem); _attH = new(mem); _gateUpH = new(mem); _actH = new(mem); _probs = new(mem);
        _state = new(mem); _plan = new(mem); _history = new(mem);
        _dx = new(mem); _dqkv = new(mem); _dgateUp = new(mem); _dscores = new(mem); _logits = new(mem);
        _dxnH = new(mem); _dqH = new(mem); _dattH = new(mem); _dgateUpH = new(mem); _dactH = new(mem);
        _token = new(mem);
    }

    internal CudaLlavaModel Model => _m;
    internal int Heads => _m.Heads;
    internal int KvHeads => _m.KvHeads;
    internal int HeadDim => _m.HeadDim;
    internal int Layers => _m.DecoderLayers;
    private int H => _m.Hidden;
    private int Qd => _d.QDim;
    private int Kvd => _d.KvDim;

    /// <summary>The current sequence's hidden states [n, Hidden].</summary>
    internal ArrayView<float> X(int n) => _current < 0 ? _built!.Hidden.Slice(0, (long)n * H) : _sets[_current].X.Get((long)n * H);
    internal ArrayView<int> Positions(int n) => _current < 0 ? _built!.Positions.Slice(0, n) : _sets[_current].Positions.Get(n);
    internal ArrayView<int> Visual(int n) => _current < 0 ? _built!.Visual.Slice(0, n) : _sets[_current].Visual.Get(n);

    public float[] Prefill(SequenceState state, IPrefillHook? hook, CancellationToken ct)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_caches[0] is not null) throw new InvalidOperationException("This generation has already run its prefill.");
            int h = H, n = state.Length;
            if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(state));
            if (state.Device is { } built)
            {
                // Built on the device: take it over (its positions are increasing, the host knows the last).
                if (built.Rows != n) throw new ArgumentException($"The device sequence has {built.Rows} rows but the state {n}.", nameof(state));
                CheckPositions(built.LastPosition + _extra);
                _built = built;
                state.Device = null;
                _current = -1;
            }
            else
            {
                // Built on the host (tests, tools): its rows go up.
                var positions = state.Positions;
                for (int i = 0; i < n; i++) CheckPositions(positions.MaxAt(i) + _extra);
                _current = 0;
                _m.Queue.Upload(X(n), state.Hidden.AsSpan(0, n * h));
                _m.Queue.Upload(Positions(n), positions.Values);
                _m.Queue.Upload(Visual(n), state.VisualIndex.AsSpan(0, n));
            }
            _version++;
            var decodeState = _state.Get(2L * _m.DecoderLayers);
            _history.Get(Math.Max(1, (long)_m.DecoderLayers * n));
            try
            {
                for (int li = 0; li < _m.DecoderLayers; li++)
                {
                    ct.ThrowIfCancellationRequested();
                    n = state.Length;
                    var cache = NewCache(li, n);
                    bool last = li == _m.DecoderLayers - 1;
                    bool signals = hook is not null && !last && hook.ReadsAttention(li);
                    PrefillLayer(li, n, cache, signals, decodeState);
                    if (hook is not null && !last)
                    {
                        ExposeHidden(state, n);
                        PruneAction? action;
                        try { action = hook.AfterLayer(new CudaLayerView(this, li, state)); }
                        catch { ReleaseLayerScratch(); throw; }
                        if (action is not null) Apply(state, action, li + 1);
                        ReleaseLayerScratch();
                    }
                }
                ExposeHidden(state, state.Length);
                // The only wait of the prefill: logits, the greedy token and what the report needs, in one readback.
                var logits = _logits.Get(_m.Vocab);
                ComputeLogits(X(state.Length).SubView((long)(state.Length - 1) * h, h), logits);
                var token = _token.Get(1);
                _m.Ops.ArgMaxRows(logits, 1, _m.Vocab, token);
                var readback = _m.Queue.BeginReadback(_m.Memory);
                float[] result = [];
                readback.Add(logits, _m.Vocab, r => result = r);
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
            catch
            {
                // A launch may have stopped part-way (or be in flight when cancelled): the ticket of the kernels whose last
                // group carries on goes back to 0.
                _m.Ops.ResetLastGroupTicket();
                throw;
            }
        }
    }

    /// <summary>
    /// A device buffer of <paramref name="length"/> values that comes back with the prefill's final readback (no wait of
    /// its own) to <paramref name="deliver"/>: a kernel writes its result straight into it (it outlives the layer's
    /// scratch, which later prunes reuse).
    /// </summary>
    internal ArrayView<T> AtEnd<T>(long length, Action<T[]> deliver) where T : unmanaged
    {
        var keep = _m.Memory.Allocate<T>(Math.Max(1, length));
        _atEnd.Add(r => r.Add(keep.View, length, v => { deliver(v); keep.Dispose(); }));
        return keep.View.SubView(0, length);
    }

    public float[] Step(int tokenId)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            DecodeStep(tokenId);
            _deviceToken = null; // the device holds the argmax; a sampler may choose another id
            return _m.Queue.Download(_logits.Get(_m.Vocab), _m.Vocab);
        }
    }

    public int StepGreedy(int tokenId)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            DecodeStep(tokenId);
            var id = new int[1];
            _m.Queue.Download(_token.Get(1), id.AsSpan()); // the step's only wait: 4 bytes
            _deviceToken = id[0];
            return id[0];
        }
    }

    /// <summary>
    /// One generated token through every layer: its key and value appended to each layer's cache, the next greedy id
    /// left in device memory. The token comes from device memory too (set by a one-thread launch only when the caller
    /// chose another than the device holds).
    /// </summary>
    private void DecodeStep(int tokenId)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_caches[0] is null) throw new InvalidOperationException("Prefill first.");
        if ((uint)tokenId >= (uint)_m.Vocab)
            throw new ArgumentOutOfRangeException(nameof(tokenId), $"Token id {tokenId} is outside the vocabulary (size {_m.Vocab}).");
        for (int li = 0; li < _caches.Length; li++)
        {
            var c = _caches[li]!;
            if (c.Count >= c.Capacity) throw new InvalidOperationException($"KV cache of layer {li} is full ({c.Capacity} tokens).");
        }
        if (_deviceToken != tokenId)
        {
            _m.Ops.SetToken(_token.Get(1), tokenId);
            _deviceToken = tokenId;
        }
        _version++;
        if (_m.UseCudaGraphs && _decodeSteps > 0)
        {
            _decodeGraph ??= CudaGraph.Capture(_m.Queue, DecodeLaunches);
            _decodeGraph.Launch();
        }
        else DecodeLaunches();
        _decodeSteps++;
        foreach (var c in _caches) c!.Count++;
    }

    /// <summary>The static-shape decode step's launches (what a CUDA graph captures): nothing here waits or reads the host.</summary>
    private void DecodeLaunches()
    {
        var ops = _m.Ops;
        int h = H, inter = _m.Intermediate, maxCapacity = _caches.Max(c => c!.Capacity);
        var state = _state.Get(2L * _m.DecoderLayers);
        var token = _token.Get(1);
        var x = _dx.Get(h);
        var xnH = _dxnH.Get(h);
        var shape = _d.QkvShape(rope: true, signals: false);
        var qkv = _dqkv.Get(shape.Width);
        var qH = _dqH.Get(Qd);
        var att = _dattH.Get(Qd);
        var scores = _dscores.Get((long)_m.Heads * maxCapacity);
        var attShape = AttentionShape.Create(1, 1, _m.Heads, _m.KvHeads, _m.HeadDim, causal: false);
        ops.EmbedToken(_d.EmbedTokens.View, token, x, h);
        for (int li = 0; li < _m.DecoderLayers; li++)
        {
            var L = _d.Layers[li];
            var cache = _caches[li]!;
            ops.RmsNormToHalf(x, xnH, 1, h, L.InNorm.Weight.View, L.InNorm.Eps);
            _m.Linear(L.Qkv, xnH, 1, qkv);
            ops.DecodeRopeAttention(qkv, state, li, _d.RopeCos.View, _d.RopeSin.View, qH, cache.K.View, cache.V.View, scores, att, attShape, shape, cache.Capacity);
            _m.Linear(L.O, att, 1, x, accumulate: true);
            Mlp(L, x, 1, inter, _dxnH, _dgateUp, _dgateUpH, _dactH);
        }
        ComputeLogits(x, _logits.Get(_m.Vocab));
        ops.ArgMaxRows(_logits.Get(_m.Vocab), 1, _m.Vocab, token);
        ops.AdvanceDecodeState(state, _m.DecoderLayers);
    }

    public int[] CachedTokensPerLayer() => _caches.Select(c => c?.Count ?? 0).ToArray();

    private void CheckPositions(int largest)
    {
        if (largest >= _m.MaxPositions)
            throw new InvalidOperationException($"Position {largest} is outside the model's {_m.MaxPositions} rotary positions.");
    }

    private LayerCache NewCache(int layer, int rows)
    {
        int cap = rows + _extra;
        var mem = _m.Memory;
        var c = new LayerCache(mem.Allocate<ushort>((long)cap * Kvd), mem.Allocate<ushort>((long)cap * Kvd), cap);
        _caches[layer] = c;
        return c;
    }

    /// <summary>
    /// One decoder layer on the prompt's <paramref name="n"/> rows: attention (keys and values into the cache, whose
    /// length and next position go to the decode state) and the SwiGLU MLP, both added to the residual in place. The
    /// fp32 queries and keys a policy reads are written only when <paramref name="signals"/>.
    /// </summary>
    private void PrefillLayer(int li, int n, LayerCache cache, bool signals, ArrayView<int> decodeState)
    {
        var L = _d.Layers[li];
        var ops = _m.Ops;
        int h = H, inter = _m.Intermediate;
        var x = X(n);
        var xnH = _xnH.Get((long)n * h);
        var shape = _d.QkvShape(rope: true, signals) with { StateSlot = li, CacheCount = n };
        var qkv = _qkv.Get((long)n * shape.Width);
        var (prepared, withQkv) = _preparedFor;
        _preparedFor = (-1, false);
        if (prepared != li) ops.RmsNormToHalf(x, xnH, n, h, L.InNorm.Weight.View, L.InNorm.Eps);
        if (prepared != li || !withQkv) _m.Linear(L.Qkv, xnH, n, qkv);
        var q = signals ? _q.Get((long)n * Qd) : _q.Get(1);
        var k = signals ? _k.Get((long)n * Kvd) : _k.Get(1);
        var qH = _qH.Get((long)n * Qd);
        ops.QkvSplitRope(qkv, n, Positions(n), _d.RopeCos.View, _d.RopeSin.View, q, k, qH,
            cache.K.Slice(0, (long)n * Kvd), cache.V.Slice(0, (long)n * Kvd), shape, decodeState);
        _signalsLayer = signals ? li : -1;
        cache.Count = n;
        var att = _attH.Get((long)n * Qd);
        _m.Attend(qH, cache.K.View, cache.V.View, att, n, n, _m.Heads, _m.KvHeads, _m.HeadDim, 0, _scores, _probs);
        _m.Linear(L.O, att, n, x, accumulate: true);
        Mlp(L, x, n, inter, _xnH, _gateUp, _gateUpH, _actH);
        _version++;
    }

    /// <summary>x += down(silu(gate) · up)(RMSNorm(x)): the gate|up GEMM writes fp16 (what the activation reads) unless it has a bias.</summary>
    private void Mlp(CudaLlamaDecoder.Layer L, ArrayView<float> x, int n, int inter, Scratch<ushort> xnHs, Scratch<float> gateUp32, Scratch<ushort> gateUp16, Scratch<ushort> acts)
    {
        var ops = _m.Ops;
        int h = H;
        var xnH = xnHs.Get((long)n * h);
        ops.RmsNormToHalf(x, xnH, n, h, L.PostNorm.Weight.View, L.PostNorm.Eps);
        var act = acts.Get((long)n * inter);
        if (L.GateUp.Bias is null)
        {
            var gu = gateUp16.Get((long)n * 2 * inter);
            _m.Blas.LinearToHalf(xnH, n, h, L.GateUp.Weight.View, 2 * inter, gu);
            ops.SiluMulSplitToHalf(gu, act, n, inter);
        }
        else
        {
            var gu = gateUp32.Get((long)n * 2 * inter);
            _m.Linear(L.GateUp, xnH, n, gu);
            ops.SiluMulSplitToHalf(gu, act, n, inter);
        }
        _m.Linear(L.Down, act, n, x, accumulate: true);
    }

    /// <summary>Final RMSNorm and LM head on one hidden row into <paramref name="logits"/> (on the device).</summary>
    private void ComputeLogits(ArrayView<float> row, ArrayView<float> logits)
    {
        int h = H;
        var xn = _dxnH.Get(h);
        _m.Ops.RmsNormToHalf(row, xn, 1, h, _d.FinalNorm.Weight.View, _d.FinalNorm.Eps);
        _m.Linear(_d.LmHead, xn, 1, logits);
    }

    /// <summary>Lets host code read the current hidden states (copied on first use, and only while they are current).</summary>
    private void ExposeHidden(SequenceState state, int n)
    {
        int version = _version;
        var view = X(n);
        state.HiddenOnDevice(() =>
        {
            lock (_m.Sync)
            {
                if (version != _version || _disposed)
                    throw new InvalidOperationException("The device hidden states changed since this sequence state was current.");
                using var bind = _m.Accelerator.BindScoped();
                return _m.Queue.Download(view, (long)n * H);
            }
        });
    }

    /// <summary>
    /// Keeps and merges rows on the device (<see cref="CudaOps.GatherSequenceNormed"/>: hidden states, positions, visual
    /// indices and the next layer's input norm in one launch). A device prune's plan is already there; a host prune's rows go up. The visual indices
    /// of a version only the device knows are kept for the report, read back at the end.
    /// </summary>
    private void Apply(SequenceState state, PruneAction action, int nextLayer)
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
            _m.Queue.Upload(plan, action.NewRows);
            extraRows = action.ExtraRows is null ? 0 : action.ExtraRows.Length / h;
            extra = _extraRows.Get(Math.Max(1, (long)extraRows * h));
            if (extraRows > 0) _m.Queue.Upload(extra, action.ExtraRows.AsSpan(0, extraRows * h));
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
        var norm = _d.Layers[nextLayer].InNorm;
        int width = _d.QkvShape(rope: true).Width;
        bool reuse = _computedQkv is { } c && c.Layer == nextLayer && c.Version == _version && extraRows == 0;
        var shape = new GatherShape(rows, h, action.RenumberPositions ? 1 : 0, snapshot ? n : 0, reuse ? width : 0);
        _m.Ops.GatherSequenceNormed(X(n), extra, plan, set.X.Get((long)rows * h), Positions(n), set.Positions.Get(rows), Visual(n), set.Visual.Get(rows),
            history, _xnH.Get((long)rows * h), norm.Weight.View, norm.Eps, shape, reuse ? _computedQkv!.Value.Qkv : default, reuse ? _qkv.Get((long)rows * width) : default);
        _preparedFor = (nextLayer, reuse);
        _current = dst;
        _version++;
        if (action.OnDevice is null) state.ApplyRows(action);
        else
        {
            var pos = set.Positions;
            var vis = set.Visual;
            state.AppliedOnDevice(rows, visualRun, () =>
            {
                lock (_m.Sync)
                {
                    using var bind = _m.Accelerator.BindScoped();
                    var rb = _m.Queue.BeginReadback(_m.Memory);
                    int[] p = [], v = [];
                    rb.Add(pos.Get(rows), rows, r => p = r);
                    rb.Add(vis.Get(rows), rows, r => v = r);
                    rb.Flush();
                    return (PositionIds.OneComponent(p), v);
                }
            });
        }
        ExposeHidden(state, rows); // (positions only shrink or stay: the check at the start covers them)
    }

    /// <summary>A scratch buffer that lives until the current layer's prune is applied.</summary>
    internal DeviceBuffer<T> LayerScratch<T>(long length) where T : unmanaged
    {
        var b = _m.Memory.Allocate<T>(Math.Max(1, length));
        _layerScratch.Add(b);
        return b;
    }

    private void ReleaseLayerScratch()
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
        _m.Queue.Upload(index, rows);
        long size = (long)_m.Heads * rows.Length * n;
        using var result = _m.Memory.Allocate<float>(size);
        _m.Ops.AttentionRowsGrouped(q, k, index, result.View, AttentionShape.Create(n, n, _m.Heads, _m.KvHeads, _m.HeadDim, causal: true));
        return _m.Queue.Download(result.View, size);
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s queries and keys (its input norm and optionally RoPE) on the current hidden states,
    /// fp32, into layer scratch: q [n, heads·hd], k [n, kvHeads·hd].
    /// </summary>
    internal (ArrayView<float> Q, ArrayView<float> K) QueryKeysOnDevice(int layer, int n, bool rope)
    {
        var shape = _d.QkvShape(rope);
        var qkv = QkvOnDevice(layer, n);
        var q = LayerScratch<float>((long)n * Qd);
        var k = LayerScratch<float>((long)n * Kvd);
        var qH = LayerScratch<ushort>((long)n * Qd);
        var kH = LayerScratch<ushort>((long)n * Kvd);
        var vH = LayerScratch<ushort>((long)n * Kvd);
        _m.Ops.QkvSplitRope(qkv, n, Positions(n), _d.RopeCos.View, _d.RopeSin.View, q.View, k.View, qH.View, kH.View, vH.View, shape);
        return (q.View, k.View);
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s q|k|v projection (its input norm, the stacked GEMM; no RoPE) of the current
    /// <paramref name="n"/> rows: fp32 [n, Width] in layer scratch, two launches.
    /// </summary>
    internal ArrayView<float> QkvOnDevice(int layer, int n)
    {
        var L = _d.Layers[layer];
        int h = H;
        var xn = LayerScratch<ushort>((long)n * h);
        var qkv = LayerScratch<float>((long)n * _d.QkvShape(rope: true).Width);
        _m.Ops.RmsNormToHalf(X(n), xn.View, n, h, L.InNorm.Weight.View, L.InNorm.Eps);
        _m.Linear(L.Qkv, xn.View, n, qkv.View);
        _computedQkv = (layer, _version, qkv.View);
        return qkv.View;
    }

    /// <summary>The current layer's keys after RoPE (fp32, as the host policies read them): [n, kvHeads*headDim], copied to the host.</summary>
    internal float[] LayerKeys(int layer, int n) => _m.Queue.Download(LayerQueryKeys(layer, n).K, (long)n * Kvd);

    /// <summary>Layer <paramref name="layer"/>'s queries and keys on the current hidden states, copied to the host.</summary>
    internal (float[] Q, float[] K) QueryKeys(int layer, int n, bool rope)
    {
        var (q, k) = QueryKeysOnDevice(layer, n, rope);
        var rb = _m.Queue.BeginReadback(_m.Memory);
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
        var L = _d.Layers[layer];
        int h = H;
        var xn = LayerScratch<ushort>((long)rows * h);
        var keys = LayerScratch<float>((long)rows * Kvd);
        _m.Ops.RmsNormToHalf(X(n).SubView((long)rowStart * h, (long)rows * h), xn.View, rows, h, L.InNorm.Weight.View, L.InNorm.Eps);
        var (w, outRows) = L.Qkv.Rows(Qd, Kvd);
        _m.Blas.Linear(xn.View, rows, h, w, outRows, keys.View);
        if (L.Qkv.Bias is { } b) _m.Ops.AddBias(keys.View, rows, Kvd, b.View.SubView(Qd, Kvd));
        return keys.View;
    }

    public void Dispose()
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            if (_disposed) return;
            _disposed = true;
            _decodeGraph?.Dispose();
            ReleaseLayerScratch();
            foreach (var c in _caches) { c?.K.Dispose(); c?.V.Dispose(); }
            _built?.Dispose();
            foreach (var s in _sets) s.Dispose();
            foreach (var s in new IDisposable[] { _qkv, _q, _k, _scores, _extraRows, _gateUp, _xnH, _qH, _attH, _gateUpH, _actH, _probs, _state, _plan, _history,
                _dx, _dqkv, _dgateUp, _dscores, _logits, _dxnH, _dqH, _dattH, _dgateUpH, _dactH, _token })
                s.Dispose();
        }
    }
}
