using System.Runtime.InteropServices;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// One request's decoding on the GPU: a per-layer fp16 KV cache (each layer holds exactly the tokens that entered it,
/// so a layer after a prune holds fewer), the hidden states on the device, and scratch buffers reused across layers
/// and steps. Pruning runs between layers: the policy reads signals through <see cref="CudaLayerView"/>, and the kept
/// rows are gathered on the device.
/// </summary>
internal sealed class CudaGeneration : IGeneration
{
    private sealed class LayerCache(DeviceBuffer<ushort> k, DeviceBuffer<ushort> v, int capacity)
    {
        public DeviceBuffer<ushort> K { get; } = k;
        public DeviceBuffer<ushort> V { get; } = v;
        public int Capacity { get; } = capacity;
        public int Count;
        public int NextPosition;
    }

    private readonly CudaLlavaModel _m;
    private readonly int _extra;
    private readonly LayerCache?[] _caches;
    private readonly Scratch<float> _x, _x2, _q, _k, _qkv, _gateUp, _scores, _logits, _extraRows;
    private readonly Scratch<ushort> _xnH, _qH, _attH, _actH, _probs;
    private readonly Scratch<int> _positions, _rows;
    private bool _xIsSecond;
    private int _version; // bumped whenever the device hidden states change, so stale lazy downloads fail loudly
    private bool _disposed;

    public CudaGeneration(CudaLlavaModel model, int extraCapacity)
    {
        _m = model;
        _extra = Math.Max(0, extraCapacity);
        _caches = new LayerCache?[model.DecoderLayers];
        var mem = model.Memory;
        _x = new(mem); _x2 = new(mem); _q = new(mem); _k = new(mem); _qkv = new(mem); _gateUp = new(mem);
        _scores = new(mem); _logits = new(mem); _extraRows = new(mem);
        _xnH = new(mem); _qH = new(mem); _attH = new(mem); _actH = new(mem); _probs = new(mem);
        _positions = new(mem); _rows = new(mem);
    }

    internal int Heads => _m.Heads;
    internal int KvHeads => _m.KvHeads;
    internal int HeadDim => _m.HeadDim;
    internal int Layers => _m.DecoderLayers;

    private Scratch<float> X => _xIsSecond ? _x2 : _x;
    private int H => _m.Hidden;
    private int Qd => _m.Heads * _m.HeadDim;
    private int Kvd => _m.KvHeads * _m.HeadDim;

    public float[] Prefill(SequenceState state, IPrefillHook? hook, CancellationToken ct)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_caches[0] is not null) throw new InvalidOperationException("This generation has already run its prefill.");
            int h = H, n = state.Length;
            if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(state));
            CheckPositions(state.Positions, n);
            var x = X.Get((long)n * h);
            x.SubView(0, (long)n * h).CopyFromCPU(state.Hidden.AsSpan(0, n * h));
            _version++;
            var positions = _positions.Get(n);
            positions.CopyFromCPU(state.Positions.AsSpan(0, n));
            for (int li = 0; li < _m.DecoderLayers; li++)
            {
                ct.ThrowIfCancellationRequested();
                n = state.Length;
                var cache = NewCache(li, n, state.Positions[n - 1] + 1);
                LayerForward(li, n, _positions.Get(n), cache, causal: true);
                if (hook is not null && li < _m.DecoderLayers - 1)
                {
                    ExposeHidden(state, n);
                    var action = hook.AfterLayer(new CudaLayerView(this, li, state));
                    if (action is not null)
                    {
                        ApplyOnDevice(state, action);
                        CheckPositions(state.Positions, state.Length);
                        _positions.Get(state.Length).CopyFromCPU(state.Positions.AsSpan(0, state.Length));
                    }
                }
            }
            ExposeHidden(state, state.Length);
            return Logits(state.Length - 1);
        }
    }

    public float[] Step(int tokenId)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            StepLayers(tokenId);
            return Logits(0);
        }
    }

    public int StepGreedy(int tokenId)
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            StepLayers(tokenId);
            ComputeLogits(0);
            var id = _rows.Get(1);
            _m.Ops.ArgMaxRows(_logits.Get(_m.Vocab), 1, _m.Vocab, id);
            return _rows.Buffer.Download(0, 1)[0];
        }
    }

    /// <summary>One generated token through every layer (its key and value appended to each layer's cache).</summary>
    private void StepLayers(int tokenId)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_caches[0] is null) throw new InvalidOperationException("Prefill first.");
        int h = H;
        var row = new float[h];
        _m.Embed([tokenId], row);
        X.Get(h).CopyFromCPU(row);
        _version++;
        var pos = new int[_m.DecoderLayers];
        for (int li = 0; li < pos.Length; li++)
        {
            var c = _caches[li]!;
            if (c.Count >= c.Capacity)
                throw new InvalidOperationException($"KV cache of layer {li} is full ({c.Capacity} tokens).");
            pos[li] = c.NextPosition;
        }
        CheckPositions(pos, pos.Length);
        var positions = _positions.Get(Math.Max(pos.Length, 1));
        positions.SubView(0, pos.Length).CopyFromCPU(pos);
        for (int li = 0; li < _m.DecoderLayers; li++)
            LayerForward(li, 1, positions.SubView(li, 1), _caches[li]!, causal: false);
    }

    public int[] CachedTokensPerLayer() => _caches.Select(c => c?.Count ?? 0).ToArray();

    private void CheckPositions(int[] positions, int n)
    {
        for (int i = 0; i < n; i++)
            if ((uint)positions[i] >= (uint)_m.MaxPositions)
                throw new InvalidOperationException($"Position {positions[i]} is outside the model's {_m.MaxPositions} rotary positions.");
    }

    private LayerCache NewCache(int layer, int rows, int nextPosition)
    {
        int cap = rows + _extra;
        var mem = _m.Memory;
        var c = new LayerCache(mem.Allocate<ushort>((long)cap * Kvd), mem.Allocate<ushort>((long)cap * Kvd), cap) { NextPosition = nextPosition };
        _caches[layer] = c;
        return c;
    }

    /// <summary>
    /// One decoder layer on <paramref name="n"/> rows of the hidden states: attention (writing the new keys and values
    /// into the cache after its <c>Count</c> rows) and the SwiGLU MLP, both added to the residual in place.
    /// Prefill (<paramref name="causal"/>) sees keys up to each row; a decode step sees the whole cache.
    /// </summary>
    private void LayerForward(int li, int n, ArrayView<int> positions, LayerCache cache, bool causal)
    {
        var L = _m.Layers[li];
        var ops = _m.Ops;
        int h = H, qd = Qd, kvd = Kvd, inter = _m.Intermediate;
        var x = X.Get((long)n * h);
        var xnH = _xnH.Get((long)n * h);
        ops.RmsNormToHalf(x, xnH, n, h, L.InNorm.Weight.View, L.InNorm.Eps);
        int start = cache.Count;
        if (start + n > cache.Capacity)
            throw new InvalidOperationException($"KV cache of layer {li} is full ({cache.Capacity} tokens).");
        // One GEMM for q|k|v, one pass for RoPE, the fp32 copies the policies read and the fp16 q and cache rows.
        var shape = _m.QkvShape(rope: true);
        var qkv = _qkv.Get((long)n * shape.Width);
        _m.Linear(L.Qkv, xnH, n, qkv);
        var q = _q.Get((long)n * qd);
        var k = _k.Get((long)n * kvd);
        var qH = _qH.Get((long)n * qd);
        ops.QkvSplitRope(qkv, n, positions, _m.RopeCos.View, _m.RopeSin.View, q, k, qH,
            cache.K.Slice((long)start * kvd, (long)n * kvd), cache.V.Slice((long)start * kvd, (long)n * kvd), shape);
        cache.Count = start + n;
        if (!causal) cache.NextPosition++;
        var att = _attH.Get((long)n * qd);
        _m.Attend(qH, cache.K.View, cache.V.View, att, n, cache.Count, _m.Heads, _m.KvHeads, _m.HeadDim,
            causal ? cache.Count - n : -1, _scores, _probs);
        _m.Linear(L.O, att, n, x, accumulate: true);
        ops.RmsNormToHalf(x, xnH, n, h, L.PostNorm.Weight.View, L.PostNorm.Eps);
        var gateUp = _gateUp.Get((long)n * 2 * inter);
        _m.Linear(L.GateUp, xnH, n, gateUp);
        var act = _actH.Get((long)n * inter);
        ops.SiluMulSplitToHalf(gateUp, act, n, inter);
        _m.Linear(L.Down, act, n, x, accumulate: true);
        _version++;
    }

    /// <summary>Logits of hidden row <paramref name="row"/>: final RMSNorm and the LM head, copied to the host.</summary>
    private float[] Logits(int row)
    {
        ComputeLogits(row);
        return _logits.Buffer.Download(0, _m.Vocab);
    }

    /// <summary>Final RMSNorm and LM head on hidden row <paramref name="row"/> into the logits scratch buffer (on the device).</summary>
    private void ComputeLogits(int row)
    {
        int h = H;
        var xn = _xnH.Get(h);
        _m.Ops.RmsNormToHalf(X.Get((long)(row + 1) * h).SubView((long)row * h, h), xn, 1, h, _m.FinalNorm.Weight.View, _m.FinalNorm.Eps);
        _m.Linear(_m.LmHead, xn, 1, _logits.Get(_m.Vocab));
    }

    /// <summary>Lets host code read the current hidden states (copied on first use, and only while they are current).</summary>
    private void ExposeHidden(SequenceState state, int n)
    {
        int version = _version;
        var buffer = X;
        state.HiddenOnDevice(() =>
        {
            lock (_m.Sync)
            {
                if (version != _version || _disposed)
                    throw new InvalidOperationException("The device hidden states changed since this sequence state was current.");
                using var bind = _m.Accelerator.BindScoped();
                return buffer.Buffer.Download(0, (long)n * H);
            }
        });
    }

    /// <summary>Keeps and merges rows on the device (<see cref="CudaOps.RowGatherMixed"/>) and updates the host bookkeeping.</summary>
    private void ApplyOnDevice(SequenceState state, PruneAction action)
    {
        int h = H, n = action.NewRows.Length;
        if (n == 0) throw new InvalidOperationException("A pruning policy removed every token.");
        var src = X.Get((long)state.Length * h);
        var index = _rows.Get(n);
        index.CopyFromCPU(action.NewRows);
        int extraCount = action.ExtraRows is null ? 0 : action.ExtraRows.Length / h;
        var extra = _extraRows.Get(Math.Max(1, (long)extraCount * h));
        if (extraCount > 0) extra.SubView(0, (long)extraCount * h).CopyFromCPU(action.ExtraRows.AsSpan(0, extraCount * h));
        var dst = (_xIsSecond ? _x : _x2).Get((long)n * h);
        _m.Ops.RowGatherMixed(src, extra, index, dst, h);
        _xIsSecond = !_xIsSecond;
        _version++;
        state.ApplyRows(action);
        ExposeHidden(state, n);
    }

    /// <summary>Attention probabilities of the current layer for some query rows: [heads, rows, n] (host).</summary>
    internal float[] AttentionRows(ReadOnlySpan<int> rows, int n)
    {
        if (rows.Length == 0) return [];
        var index = _rows.Get(rows.Length);
        index.CopyFromCPU(rows);
        long size = (long)_m.Heads * rows.Length * n;
        using var result = _m.Memory.Allocate<float>(size);
        _m.Ops.AttentionRowsGrouped(_q.Get((long)n * Qd), _k.Get((long)n * Kvd), index, result.View,
            AttentionShape.Create(n, n, _m.Heads, _m.KvHeads, _m.HeadDim, causal: true));
        return result.Download(0, size);
    }

    /// <summary>The current layer's keys after RoPE (fp32, as the policies read them): [n, kvHeads*headDim] (host).</summary>
    internal float[] LayerKeys(int n) => _k.Buffer.Download(0, (long)n * Kvd);

    /// <summary>The final RMSNorm's weights on the host (read once), for policies that compare normalised hidden states.</summary>
    internal NormWeights HostFinalNorm => _m.HostFinalNorm;

    /// <summary>Layer <paramref name="layer"/>'s queries and keys (its input norm and optionally RoPE) on the current hidden states.</summary>
    internal (float[] Q, float[] K) QueryKeys(int layer, int n, bool rope)
    {
        var L = _m.Layers[layer];
        int h = H, qd = Qd, kvd = Kvd;
        var mem = _m.Memory;
        var shape = _m.QkvShape(rope);
        using var xn = mem.Allocate<ushort>((long)n * h);
        using var qkv = mem.Allocate<float>((long)n * shape.Width);
        using var q = mem.Allocate<float>((long)n * qd);
        using var k = mem.Allocate<float>((long)n * kvd);
        using var qH = mem.Allocate<ushort>((long)n * qd);
        using var kH = mem.Allocate<ushort>((long)n * kvd);
        using var vH = mem.Allocate<ushort>((long)n * kvd);
        _m.Ops.RmsNormToHalf(X.Get((long)n * h), xn.View, n, h, L.InNorm.Weight.View, L.InNorm.Eps);
        _m.Linear(L.Qkv, xn.View, n, qkv.View);
        _m.Ops.QkvSplitRope(qkv.View, n, _positions.Get(n), _m.RopeCos.View, _m.RopeSin.View, q.View, k.View, qH.View, kH.View, vH.View, shape);
        return (q.Download(0, (long)n * qd), k.Download(0, (long)n * kvd));
    }

    public void Dispose()
    {
        lock (_m.Sync)
        {
            using var bind = _m.Accelerator.BindScoped();
            if (_disposed) return;
            _disposed = true;
            foreach (var c in _caches) { c?.K.Dispose(); c?.V.Dispose(); }
            foreach (var s in new IDisposable[] { _x, _x2, _q, _k, _qkv, _gateUp, _scores, _logits, _extraRows, _xnH, _qH, _attH, _actH, _probs, _positions, _rows })
                s.Dispose();
        }
    }
}

/// <summary>The GPU decoder's view for pruning policies: signals computed on the device, only they come back.</summary>
internal sealed class CudaLayerView : LayerView
{
    private readonly CudaGeneration _gen;

    internal CudaLayerView(CudaGeneration gen, int layer, SequenceState state)
        : base(layer, state, gen.Heads, gen.KvHeads, gen.HeadDim, gen.Layers)
    {
        _gen = gen;
    }

    public override float[] AttentionRows(ReadOnlySpan<int> rows) => _gen.AttentionRows(rows, State.Length);

    public override (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true) => _gen.QueryKeys(Layer + 1, State.Length, rope);

    public override float[] Keys() => _gen.LayerKeys(State.Length);

    public override float[] FinalNorm(ReadOnlySpan<int> rows) => LlamaDecoder.FinalNormRows(State.Hidden, rows, State.Hidden.Length / State.Length, _gen.HostFinalNorm);
}
