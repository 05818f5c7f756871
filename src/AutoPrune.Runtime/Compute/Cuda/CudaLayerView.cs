using AutoPrune.Compute;
using ILGPU;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// The GPU decoder's view for pruning policies: the host methods compute on the device and copy the result back (a
/// host synchronisation each); <see cref="Device"/> offers the same signals kept on the device.
/// </summary>
internal sealed class CudaLayerView : LayerView
{
    private readonly CudaDecoderSession _gen;

    internal CudaLayerView(CudaDecoderSession gen, int layer, SequenceState state)
        : base(layer, state, gen.Heads, gen.KvHeads, gen.HeadDim, gen.Layers)
    {
        _gen = gen;
        Device = new DeviceLayerSignals(gen, layer, state);
    }

    public override float[] AttentionRows(ReadOnlySpan<int> rows) => _gen.AttentionRows(Layer, rows, State.Length);

    public override (float[] Q, float[] K) NextLayerQueryKeys(bool rope = true) => _gen.QueryKeys(Layer + 1, State.Length, rope);

    public override float[] Keys() => _gen.LayerKeys(Layer, State.Length);

    public override float[] FinalNorm(ReadOnlySpan<int> rows) => Cpu.CpuLayerView.FinalNormRows(State.Hidden, rows, State.Hidden.Length / State.Length, ((DeviceNorm)_gen.Weights.FinalNorm).Host(_gen.CudaBackend.Queue));

    public override DeviceLayerSignals Device { get; }
}

/// <summary>
/// What a layer computed, as device buffers a pruning policy combines with kernels without anything coming back to the
/// host: attention rows restricted to the columns it needs, column means (text means), mutual information and its
/// bound, key L1 norms, the final norm of rows, unit rows for cosine similarities (matrices by GEMM, rows to a pivot),
/// the next layer's queries and keys, deterministic top-k with the pruned sequence's plan, and reads (now, or with the
/// prefill's final readback). Buffers it hands out live until the layer's prune is applied.
/// </summary>
internal sealed class DeviceLayerSignals
{
    private readonly CudaDecoderSession _g;
    private readonly SequenceState _state;

    internal DeviceLayerSignals(CudaDecoderSession g, int layer, SequenceState state)
    {
        _g = g;
        Layer = layer;
        _state = state;
    }

    public int Layer { get; }
    /// <summary>Rows of the sequence entering the prune.</summary>
    public int Rows => _state.Length;
    public int Heads => _g.Heads;
    public int KvHeads => _g.KvHeads;
    public int HeadDim => _g.HeadDim;
    public int Hidden => _g.Shape.Hidden;
    public CudaOps Ops => _g.CudaBackend.Ops;

    /// <summary>A device buffer that lives until this layer's prune has been applied.</summary>
    public ArrayView<T> Scratch<T>(long length) where T : unmanaged => _g.LayerScratch<T>(length).View;

    /// <summary>Each row's visual index (<see cref="SequenceState.VisualIndex"/>) on the device: [Rows].</summary>
    public ArrayView<int> VisualIndex => _g.Visual(Rows);

    /// <summary>This layer's fp32 keys after RoPE, [Rows, KvHeads·HeadDim] (kept when the pruner said it reads this layer).</summary>
    public ArrayView<float> LayerKeys => _g.LayerQueryKeys(Layer, Rows).K;

    /// <summary>The hidden states leaving this layer, [Rows, Hidden] fp32.</summary>
    public ArrayView<float> HiddenStates => _g.X(Rows);

    /// <summary>This layer's fp32 queries and keys after RoPE and their attention shape (all rows, causal), for kernels that compute attention rows themselves.</summary>
    public (ArrayView<float> Q, ArrayView<float> K, AttentionShape Shape) QueryKeys
    {
        get
        {
            var (q, k) = _g.LayerQueryKeys(Layer, Rows);
            return (q, k, AttentionShape.Create(Rows, Rows, Heads, KvHeads, HeadDim, causal: true));
        }
    }

    /// <summary>This layer's attention probabilities of query rows [rowStart, +rowCount) over key columns [colStart, +colCount): [heads, rows, cols].</summary>
    public ArrayView<float> AttentionWindow(int rowStart, int rowCount, int colStart, int colCount)
    {
        var (q, k, shape) = QueryKeys;
        var result = Scratch<float>((long)Heads * rowCount * colCount);
        Ops.AttentionWindow(q, k, result, shape, new WindowShape(rowStart, rowCount, colStart, colCount));
        return result;
    }

    /// <summary>Mean over heads and rows (only rows whose mask is non-zero, when given) of attention [heads, rows, cols]: [cols].</summary>
    public ArrayView<float> ColumnMean(ArrayView<float> attn, int rows, int cols, ArrayView<int> mask = default)
    {
        var result = Scratch<float>(cols);
        Ops.ColumnMean(attn, mask, result, new PlanShape(cols, 0, 0, 0, 0, 1, Heads, rows, mask.Length > 0 ? 1 : 0, 0));
        return result;
    }

    /// <summary>
    /// Mutual information of T text rows × cols visual columns of attention [heads, T, cols], summed over heads: [MI, bound
    /// Σ m_h·log2 T], into <paramref name="result"/> when given (e.g. an <see cref="AtEnd{T}"/> buffer), else into scratch.
    /// </summary>
    public ArrayView<float> MutualInformation(ArrayView<float> attn, int T, int cols, ArrayView<float> result = default)
    {
        if (result.Length == 0) result = Scratch<float>(2);
        Ops.MutualInformation(attn, Heads, T, cols, Scratch<float>((long)Heads * cols), Scratch<float>(2L * Heads), result);
        return result;
    }

    /// <summary>L1 norms of this layer's cached keys (after RoPE, all KV heads) for rows [rowStart, +rows).</summary>
    public ArrayView<float> KeyL1Norms(int rowStart, int rows)
    {
        var result = Scratch<float>(rows);
        Ops.KeyL1Norms(_g.CachedKeys(Layer), rowStart, rows, KvHeads * HeadDim, result);
        return result;
    }

    /// <summary>The model's final RMSNorm (<c>model.norm</c>) of rows [rowStart, +rows) of the hidden states: [rows, Hidden] fp32.</summary>
    public ArrayView<float> FinalNorm(int rowStart, int rows)
    {
        var result = Scratch<float>((long)rows * Hidden);
        var norm = (DeviceNorm)_g.Weights.FinalNorm;
        Ops.RmsNormRows(HiddenStates, rowStart, rows, Hidden, norm.Weight.View, norm.Eps, result);
        return result;
    }

    /// <summary>Rows [rowStart, +rows) of <paramref name="src"/> ([*, dim]) scaled to unit length, fp16, and their norms.</summary>
    public (ArrayView<ushort> Unit, ArrayView<float> Norms) UnitRows(ArrayView<float> src, int rowStart, int rows, int dim)
    {
        var unit = Scratch<ushort>((long)rows * dim);
        var norms = Scratch<float>(rows);
        Ops.L2NormalizeRowsToHalf(src, rowStart, rows, dim, unit, norms);
        return (unit, norms);
    }

    /// <summary>Cosine similarities of unit rows a [rowsA, dim] to unit rows b [rowsB, dim]: one GEMM, [rowsA, rowsB] fp32.</summary>
    public ArrayView<float> CosineMatrix(ArrayView<ushort> unitA, int rowsA, ArrayView<ushort> unitB, int rowsB, int dim)
    {
        var result = Scratch<float>((long)rowsA * rowsB);
        _g.CudaBackend.Blas.Linear(unitA, rowsA, dim, unitB, rowsB, result);
        return result;
    }

    /// <summary>Cosine of rows [rowStart, +rows) of x ([*, dim]) to the row x[pivots[slot]] (the pivot chosen on the device).</summary>
    public ArrayView<float> CosineToPivot(ArrayView<float> x, ArrayView<int> pivots, int slot, int rowStart, int rows, int dim)
    {
        var result = Scratch<float>(rows);
        Ops.CosineToPivot(x, pivots, slot, rowStart, rows, dim, result);
        return result;
    }

    /// <summary>The next layer's queries and keys (its input norm, the projections, RoPE when asked) of every row: fp32 [Rows, ·].</summary>
    public (ArrayView<float> Q, ArrayView<float> K) NextLayerQueryKeys(bool rope) => _g.QueryKeysOnDevice(Layer + 1, Rows, rope);

    /// <summary>The next layer's q|k|v projection of every row (its input norm and the GEMM, before RoPE): fp32 [Rows, Width].</summary>
    public ArrayView<float> NextLayerQkv() => _g.QkvOnDevice(Layer + 1, Rows);

    /// <summary>Each row's RoPE position on the device: [Rows] (one position per row; M-RoPE's several components are refused).</summary>
    public ArrayView<int> Positions => _g.Components == 1 ? _g.PositionsView(Rows)
        : throw new NotSupportedException($"The decoder's positions have {_g.Components} M-RoPE components; this device signal reads one position per row.");

    /// <summary>The RoPE tables (cos, sin) on the device.</summary>
    public (ArrayView<float> Cos, ArrayView<float> Sin) Rope => (((CudaRotary)_g.Weights.Rope).Cos.View, ((CudaRotary)_g.Weights.Rope).Sin.View);

    /// <summary>The next layer's keys without RoPE of rows [rowStart, +rows): fp32 [rows, KvHeads·HeadDim].</summary>
    public ArrayView<float> NextLayerKeys(int rowStart, int rows) => _g.KeysNoRopeOnDevice(Layer + 1, Rows, rowStart, rows);

    /// <summary>A constant table kept on the device with the model (uploaded once).</summary>
    public ArrayView<float> Constant(string key, Func<float[]> make) => _g.CudaBackend.Constant(key, make);

    /// <summary>
    /// Keeps the top k of V visual rows (scores given, or as the attention mean with <c>ScoreMode</c> 1; ties to the lower
    /// index, NaN last) and lays out the new sequence (see <see cref="PlanShape"/>). Returns the plan, the kept flags and
    /// the kept indices in order, all on the device.
    /// </summary>
    public (ArrayView<int> Plan, ArrayView<int> Kept, ArrayView<int> KeptLocal, ArrayView<float> Scores) KeepTopK(ArrayView<float> scores, ArrayView<float> attn, ArrayView<int> mask, PlanShape p)
    {
        if (scores.Length == 0) scores = Scratch<float>(p.V);
        var kept = Scratch<int>(p.V);
        var keptLocal = Scratch<int>(Math.Max(1, p.K));
        var plan = Scratch<int>(p.Prefix + p.K + p.Merged + p.Text);
        Ops.TopKPlan(scores, attn, mask, kept, keptLocal, plan, p);
        return (plan, kept, keptLocal, scores);
    }

    /// <summary>Copies a device result to the host now (one host synchronisation).</summary>
    public T[] Read<T>(ArrayView<T> src, long length) where T : unmanaged => _g.CudaBackend.Queue.Download(src, length);

    /// <summary>A buffer for a kernel's result that comes back with the prefill's final readback (no wait, no copy of its own).</summary>
    public ArrayView<T> AtEnd<T>(long length, Action<T[]> deliver) where T : unmanaged => _g.AtEnd(length, deliver);
}
