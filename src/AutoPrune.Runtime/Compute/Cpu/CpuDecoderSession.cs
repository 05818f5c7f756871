namespace AutoPrune.Compute.Cpu;

/// <summary>
/// One request's decoder state on the CPU: the sequence's hidden states are the <see cref="SequenceState"/>'s own host
/// array, each layer's KV cache an unmanaged block from the backend's pool, a pruning hook reads fp32 queries and keys
/// through <see cref="CpuLayerView"/>.
/// </summary>
internal sealed class CpuDecoderSession(CpuBackend backend, IDecoderWeights weights, DecoderShape shape, int extraCapacity)
    : DecoderSession(backend, weights, shape, extraCapacity)
{
    private readonly CpuKvLayer?[] _caches = new CpuKvLayer?[shape.Layers];
    private SequenceState? _state;
    private float[] _q = [], _k = [];
    private readonly HostTensor _token = HostTensor.OfInts(new int[1]);
    private bool _disposed;

    private int H => Shape.Hidden;

    public override void BeginPrefill(SequenceState state)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_caches[0] is not null) throw new InvalidOperationException("This session has already run its prefill.");
        if (state.Length == 0) throw new ArgumentException("The prompt is empty.", nameof(state));
        _state = state;
        if (state.Built is { } built)
        {
            // Built on the CPU: the hidden states are a managed array, which the state takes over.
            state.Hidden = ((HostTensor)built.Hidden).Array ?? ((HostTensor)built.Hidden).Span.ToArray();
            state.Built = null;
        }
        // The fp32 queries and keys a hook reads: one pair of arrays for the whole prompt (a prune only shortens the rows in use).
        _q = new float[state.Length * Shape.Heads.QDim];
        _k = new float[state.Length * Shape.Heads.KvDim];
    }

    public override Tensor Hidden(int rows) => HostTensor.Of(_state!.Hidden, rows * H);

    public override Tensor Positions(int rows)
    {
        var p = _state!.Positions;
        if (p.Count != rows) throw new InvalidOperationException($"The sequence has {p.Count} positions, not {rows}.");
        return HostTensor.OfInts(p.Values.ToArray());
    }

    public override KvLayer NewCache(int layer, int rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long cap = (long)(rows + ExtraCapacity) * Shape.Heads.KvDim;
        _caches[layer]?.Dispose();
        _caches[layer] = null;
        var keys = (HostTensor)backend.Allocate(cap, TensorKind.Half);
        HostTensor values;
        try { values = (HostTensor)backend.Allocate(cap, TensorKind.Half); }
        catch { keys.Dispose(); throw; }
        return _caches[layer] = new CpuKvLayer(keys, values, rows + ExtraCapacity, Shape.Heads.KvDim);
    }

    public override KvLayer Cache(int layer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _caches[layer] ?? throw new InvalidOperationException($"Layer {layer} has no cache yet: prefill first.");
    }

    public override (Tensor Q, Tensor K) Signals(int layer, int rows)
        => (HostTensor.Of(_q, rows * Shape.Heads.QDim), HostTensor.Of(_k, rows * Shape.Heads.KvDim));

    public override void LayerComputed(int layer, bool signalsKept) { }

    public override PruneAction? AfterLayer(IPrefillHook hook, int layer, SequenceState state)
    {
        int n = state.Length, qd = Shape.Heads.QDim, kvd = Shape.Heads.KvDim;
        // The view's arrays hold exactly the layer's rows (copies only once a prune has shortened the sequence).
        var q = n * qd == _q.Length ? _q : _q[..(n * qd)];
        var k = n * kvd == _k.Length ? _k : _k[..(n * kvd)];
        return hook.AfterLayer(new CpuLayerView(this, layer, state, q, k));
    }

    public override void Apply(SequenceState state, PruneAction action, int nextLayer)
    {
        if (action.OnDevice is not null) throw new InvalidOperationException("A device prune cannot be applied on the CPU.");
        int h = H, n = action.NewRows.Length;
        if (n == 0) throw new InvalidOperationException("A pruning policy removed every token.");
        var hidden = new float[n * h];
        var old = state.Hidden;
        for (int i = 0; i < n; i++)
        {
            int r = action.NewRows[i];
            var src = r >= 0 ? old.AsSpan(r * h, h) : action.ExtraRows!.AsSpan((-r - 1) * h, h);
            src.CopyTo(hidden.AsSpan(i * h, h));
        }
        state.ApplyRows(action);
        state.Hidden = hidden;
    }

    public override void EndLayer() { }

    public override float[] FinishPrefill(SequenceState state, Action<Tensor, Tensor> logitsOfRow)
    {
        var logits = Work.Get("logits", Shape.Vocab, TensorKind.Float);
        logitsOfRow(Hidden(state.Length).Rows(state.Length - 1, 1, H), logits);
        return CpuBackend.Host(logits).Span.ToArray();
    }

    public override Tensor Token => _token;

    private void BeforeStep(int tokenId)
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
        _token.Ints[0] = tokenId;
    }

    public override float[] Step(int tokenId, Tensor logits, Action launches)
    {
        BeforeStep(tokenId);
        launches();
        return CpuBackend.Host(logits).Span.ToArray();
    }

    public override int StepGreedy(int tokenId, Action launches)
    {
        BeforeStep(tokenId);
        launches();
        Generation.NonFiniteLogitsException.ThrowIfAny(CpuBackend.Host(Work.Get("logits", Shape.Vocab, TensorKind.Float)).Span, "a decoding step");
        return _token.Ints[0];
    }

    public override void AdvanceDecode()
    {
        foreach (var c in _caches)
        {
            c!.Count++;
            c.NextPosition++;
        }
    }

    public override int[] CachedTokensPerLayer() => _caches.Select(c => c?.Count ?? 0).ToArray();

    /// <summary>Bytes held by every layer's cache.</summary>
    public long CacheBytes => _caches.Sum(c => c is null ? 0L : (c.Keys.Length + c.Values.Length) * sizeof(float));

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = 0; i < _caches.Length; i++)
        {
            _caches[i]?.Dispose();
            _caches[i] = null;
        }
        Work.Dispose();
    }

    /// <summary>Layer <paramref name="layer"/>'s queries and keys (its input norm, projection and, optionally, RoPE) of the current hidden states, on the host.</summary>
    internal (float[] Q, float[] K) QueryKeys(int layer, SequenceState state, bool rope)
    {
        int n = state.Length, qd = Shape.Heads.QDim, kvd = Shape.Heads.KvDim;
        using var work = backend.CreateWorkspace();
        var xn = work.Get("xn", (long)n * H, TensorKind.Half);
        backend.Norm(Weights.InputNorm(layer), HostTensor.Of(state.Hidden, n * H), xn, n);
        var qkv = work.Get("qkv", (long)n * Shape.Heads.Width, TensorKind.Float);
        backend.Linear(Weights.Qkv(layer), xn, n, qkv);
        var q = new float[n * qd];
        var k = new float[n * kvd];
        var src = CpuBackend.Host(qkv).Span;
        int width = Shape.Heads.Width;
        for (int r = 0; r < n; r++)
        {
            src.Slice(r * width, qd).CopyTo(q.AsSpan(r * qd, qd));
            src.Slice(r * width + qd, kvd).CopyTo(k.AsSpan(r * kvd, kvd));
        }
        if (rope)
        {
            var rotary = (CpuRotary)Weights.Rope;
            var pos = state.Positions.Values;
            rotary.Apply(q, n, Shape.Heads.Heads, pos);
            rotary.Apply(k, n, Shape.Heads.KvHeads, pos);
        }
        return (q, k);
    }
}

/// <summary>The CPU decoder's view for pruning policies: the layer's fp32 queries and keys are host arrays.</summary>
internal sealed class CpuLayerView : LayerView
{
    private readonly CpuDecoderSession _session;
    private readonly float[] _keys;

    internal CpuLayerView(CpuDecoderSession session, int layer, SequenceState state, float[] queries, float[] keys)
        : base(layer, state, session.Shape.Heads.Heads, session.Shape.Heads.KvHeads, session.Shape.Heads.HeadDim, session.Shape.Layers)
    {
        _session = session;
        Queries = queries;
        _keys = keys;
    }

    /// <summary>The layer's queries after RoPE, [n, heads*hd].</summary>
    public float[] Queries { get; }

    public override float[] AttentionRows(ReadOnlySpan<int> rows)
        => Attention.Rows(Queries, _keys, State.Length, State.Length, Heads, KvHeads, HeadDim, rows, causal: true);

    public override (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true) => _session.QueryKeys(Layer + 1, State, rope);

    public override float[] Keys() => _keys;

    public override float[] FinalNorm(ReadOnlySpan<int> rows)
        => FinalNormRows(State.Hidden, rows, _session.Shape.Hidden, ((CpuNorm)_session.Weights.FinalNorm).Weights);

    /// <summary>The final RMSNorm of some rows of <paramref name="hidden"/> ([n, h]): [rows, h], in fp32.</summary>
    internal static float[] FinalNormRows(ReadOnlySpan<float> hidden, ReadOnlySpan<int> rows, int h, NormWeights norm)
    {
        var result = new float[rows.Length * h];
        for (int i = 0; i < rows.Length; i++)
            CpuOps.RmsNorm(hidden.Slice(rows[i] * h, h), result.AsSpan(i * h, h), 1, h, norm.Weight, norm.Eps);
        return result;
    }
}
