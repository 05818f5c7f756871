using AutoPrune.Compute;
using AutoPrune.Loading;

namespace AutoPrune.Compute;

/// <summary>
/// Where and how a model computes: the CPU (<see cref="Cpu.CpuBackend"/>) or an NVIDIA GPU through ILGPU and cuBLAS
/// (the CUDA backend; on ILGPU's CPU accelerator for checking). A model family's forward — vision tower,
/// projector, decoder — is written once over these ops; a backend owns the weights it loaded, its memory, its kernels
/// and each request's state (<see cref="DecoderSession"/>: KV cache, scratch, graph capture, prunes).
/// </summary>
/// <remarks>
/// Precision: <see cref="TensorKind.Float"/> tensors are fp32 everywhere; <see cref="TensorKind.Half"/> tensors (GEMM
/// inputs, attention operands, the KV cache) are fp16 on a GPU and fp32 on the CPU, rounded to fp16 where they are
/// written when <see cref="HalfActivations"/> (the CPU's <see cref="CpuPrecision.MatchDevice"/>), so that the CPU then
/// computes bit for bit what the GPU code path computes on ILGPU's CPU accelerator. Every op that enqueues device work
/// runs inside <see cref="Enter"/>.
/// </remarks>
internal abstract class Backend : IDisposable
{
    /// <summary>"cpu", or the GPU it runs on ("cuda:0 NVIDIA H100 ...", "ilgpu-cpu ...").</summary>
    public abstract string Device { get; }

    /// <summary>The device's counters (host syncs, launches, copies, ...); null on the CPU.</summary>
    public virtual Diagnostics.DeviceCounterSet? Counters => null;

    /// <summary>True when <see cref="TensorKind.Half"/> values are fp16 (a GPU, or the CPU matching one).</summary>
    public abstract bool HalfActivations { get; }

    /// <summary>
    /// True when one caller computes at a time (a GPU's stream): a model may then keep working buffers between calls (the
    /// vision tower's, which a captured graph refers to). On the CPU calls run concurrently, each with its own buffers.
    /// </summary>
    public abstract bool Serialized { get; }

    /// <summary>
    /// Runs <paramref name="launches"/>, which refer only to buffers that stay where they are and read nothing from the
    /// host: on a GPU with CUDA graphs on, the second and later runs through the same <paramref name="slot"/> replay a
    /// graph captured from the launches (one launch); elsewhere the launches simply run.
    /// </summary>
    public virtual void RunReplayable(GraphSlot slot, Action launches) => launches();

    /// <summary>
    /// The backend's lock and context for a run of ops (a GPU's kernels share one stream: one caller at a time); the
    /// CPU's is free. Re-entrant.
    /// </summary>
    public abstract IDisposable Enter();

    // ---------------------------------------------------------------- weights (loaded once, freed with the backend)

    /// <summary>
    /// A linear layer y = x·Wᵀ + b of <paramref name="parts"/> stacked into one ([Σ out, input]: q|k|v, gate|up), so one
    /// GEMM computes them all; the weights stay in the checkpoint's format where the backend can compute on it.
    /// </summary>
    public abstract LinearWeight LoadLinear(ITensorSource source, IReadOnlyList<(string Prefix, int Out)> parts, int input, bool bias);

    /// <summary>One linear layer (<c>{prefix}.weight</c> [out, input], <c>{prefix}.bias</c>).</summary>
    public LinearWeight LoadLinear(ITensorSource source, string prefix, int input, int output, bool bias) => LoadLinear(source, [(prefix, output)], input, bias);

    /// <summary>
    /// A linear layer whose weight <paramref name="weightName"/> is stored in another shape of [output, input] elements
    /// (a convolution's [out, channels, kh, kw] applied as a linear over flattened patches); no bias.
    /// </summary>
    public abstract LinearWeight LoadLinear(ITensorSource source, string weightName, int input, int output, long[] storedShape);

    /// <summary>A LayerNorm (weight and bias) or an RMSNorm (weight) over <paramref name="dim"/> values.</summary>
    public abstract NormWeight LoadNorm(ITensorSource source, string prefix, int dim, float eps, NormKind kind);

    /// <summary>A table of rows (a token embedding [vocab, hidden]) looked up by id.</summary>
    public abstract EmbeddingTable LoadEmbedding(ITensorSource source, string name, int rows, int width);

    /// <summary>A linear layer whose weight is <paramref name="table"/> (tied embeddings): [table rows, width], no bias.</summary>
    public abstract LinearWeight TiedLinear(EmbeddingTable table);

    /// <summary>Constant fp32 values kept with the model (embeddings added to every input, tables).</summary>
    public abstract Tensor Constant(ReadOnlySpan<float> values);

    /// <summary>Rotate-half RoPE for one head dimension (<paramref name="inverseFrequencies"/>: headDim/2 values).</summary>
    /// <param name="sections">M-RoPE: how many of the headDim/2 frequencies each position component drives (null: one component).</param>
    public abstract RotaryTable Rotary(float[] inverseFrequencies, int maxPositions, int[]? sections = null);

    /// <summary>
    /// Called once the model's weights are loaded, with the head dimensions its attention uses: a GPU compiles its kernels
    /// and checks its fastest attention there.
    /// </summary>
    public virtual void Prepare(int decoderHeadDim, params int[] otherHeadDims) { }

    // ---------------------------------------------------------------- memory

    /// <summary>A buffer of <paramref name="length"/> values from the backend's pool; disposing it gives it back.</summary>
    public abstract Tensor Allocate(long length, TensorKind kind);

    /// <summary>Named working buffers that grow as asked and keep their place (a captured graph refers to them).</summary>
    public Workspace CreateWorkspace() => new(this);

    public abstract void Upload(ReadOnlySpan<float> source, Tensor destination);
    public abstract void Upload(ReadOnlySpan<int> source, Tensor destination);

    /// <summary>The values of a Float or Half tensor on the host (on a GPU a counted copy and a wait).</summary>
    public abstract float[] Download(Tensor source);

    public abstract int[] DownloadInts(Tensor source);

    /// <summary>Copies values between tensors of the same kind.</summary>
    public abstract void Copy(Tensor source, Tensor destination);

    // ---------------------------------------------------------------- ops

    /// <summary>
    /// <paramref name="w"/>'s norm of <paramref name="rows"/> rows of <paramref name="x"/> into <paramref name="y"/> (Half:
    /// a GEMM's input; Float: may be <paramref name="x"/> itself for a norm in place).
    /// </summary>
    public abstract void Norm(NormWeight w, Tensor x, Tensor y, int rows);

    /// <summary>
    /// y[rows, Out] (+)= x[rows, In]·Wᵀ + b, x Half. A Half <paramref name="y"/> (no accumulation, no bias) takes the
    /// product rounded to the activation precision (what the next op reads).
    /// </summary>
    public abstract void Linear(LinearWeight w, Tensor x, int rows, Tensor y, bool accumulate = false);

    /// <summary>An activation applied in place to Float values.</summary>
    public abstract void Activation(ActivationFunction f, Tensor x);

    /// <summary>Float values into a Half tensor.</summary>
    public abstract void ToHalf(Tensor source, Tensor destination);

    /// <summary>x += y, element-wise over x's length (y as long).</summary>
    public abstract void Add(Tensor x, Tensor y);

    /// <summary>
    /// SwiGLU: rows of [gate | up] ([rows, 2·inter], Float or Half) into silu(gate)·up, Half [rows, inter].
    /// </summary>
    public abstract void SiluMul(Tensor gateUp, Tensor destination, int rows, int inter);

    /// <summary>
    /// Splits rows of a q|k|v projection ([rows, layout.Width]) into attention inputs: RoPE on q and k at
    /// <paramref name="positions"/> (when <paramref name="rope"/> is given), fp32 q and k into <paramref name="q32"/> and
    /// <paramref name="k32"/> when given (a pruning policy reads them), Half q into <paramref name="q"/>, Half k and v into
    /// <paramref name="cache"/>'s first rows (its length and next position then set) or into <paramref name="k"/> and
    /// <paramref name="v"/>.
    /// </summary>
    public abstract void SplitHeads(Tensor qkv, int rows, HeadLayout layout, RotaryTable? rope, Tensor? positions,
        Tensor? q32, Tensor? k32, Tensor q, Tensor? k, Tensor? v, KvLayer? cache);

    /// <summary>
    /// Multi-head attention: softmax(q·kᵀ/√d)·v for <paramref name="shape"/>'s queries and keys (GQA by head groups), q,
    /// k, v and the output Half. <paramref name="causalOffset"/> ≥ 0: query i sees keys ≤ causalOffset + i; -1: all.
    /// </summary>
    public abstract void Attention(Tensor q, Tensor k, Tensor v, Tensor output, Cuda.AttentionShape shape, int causalOffset, Workspace work);

    /// <summary>Attention probabilities of query rows over a window of key columns (from fp32 q and k): [heads, rows, cols].</summary>
    public abstract void AttentionWindow(Tensor q32, Tensor k32, Tensor result, Cuda.AttentionShape shape, Cuda.WindowShape window);

    /// <summary>
    /// Non-causal multi-head attention within each of <paramref name="segments"/> (a vision tower's windows or images):
    /// the rows of a segment attend to each other only. q, k, v and the output Half [rows, heads·headDim]. Each segment
    /// computes what <see cref="Attention"/> on its rows alone computes (the same kernel choice and arithmetic), but on a
    /// GPU every segment short enough for the fused kernel runs in one launch together.
    /// </summary>
    public abstract void SegmentAttention(Tensor q, Tensor k, Tensor v, Tensor output, int heads, int headDim, RowSegments segments, Workspace work);

    /// <summary>
    /// The attention each key row receives within its segment, summed over groups of <paramref name="groupRows"/>
    /// consecutive rows (a merged token's patches; no group crosses a segment boundary): Float
    /// <paramref name="result"/>[g] = Σ_(j in g) Σ_h Σ_(i in seg(j)) softmax_i(q_i·k_j/√d) / (len(seg)·heads), from fp32
    /// q and k after RoPE ([rows, heads·headDim]). Each segment's values sum to 1. Deterministic: on a GPU row maxima and
    /// sums first, then each group's sum in a fixed order (no atomics).
    /// </summary>
    public abstract void ReceivedAttention(Tensor q32, Tensor k32, int heads, int headDim, RowSegments segments, int groupRows, Tensor result, Workspace work);

    /// <summary>Float rows by index: <paramref name="destination"/> row r = <paramref name="source"/> row index[r] (Int), [rows, width].</summary>
    public abstract void GatherRows(Tensor source, Tensor index, int rows, int width, Tensor destination);

    /// <summary>
    /// Row segments [offsets[s], offsets[s + 1]) for <see cref="SegmentAttention"/> and <see cref="ReceivedAttention"/>:
    /// the offsets on the host (planning) and on the backend (kernels), uploaded once here. Checked: they start at 0 and
    /// never decrease.
    /// </summary>
    public RowSegments Segments(int[] offsets)
    {
        ArgumentNullException.ThrowIfNull(offsets);
        if (offsets.Length < 1 || offsets[0] != 0)
            throw new ArgumentException($"Segment offsets must start at 0 (got [{string.Join(", ", offsets.Take(4))}{(offsets.Length > 4 ? ", ..." : "")}]).", nameof(offsets));
        int max = 0;
        for (int s = 1; s < offsets.Length; s++)
        {
            int len = offsets[s] - offsets[s - 1];
            if (len < 0) throw new ArgumentException($"Segment offset {s} ({offsets[s]}) is below the one before it ({offsets[s - 1]}).", nameof(offsets));
            max = Math.Max(max, len);
        }
        using var scope = Enter();
        var t = Allocate(offsets.Length, TensorKind.Int);
        try { Upload(offsets, t); }
        catch { t.Dispose(); throw; }
        return new RowSegments((int[])offsets.Clone(), t, max);
    }

    /// <summary>Rows of <paramref name="table"/> for the ids in <paramref name="ids"/> (Int) into Float <paramref name="destination"/>.</summary>
    public abstract void Embed(EmbeddingTable table, Tensor ids, int count, Tensor destination);

    /// <summary>
    /// One decode token's attention at every layer's cache: RoPE at the cache's next position, its key and value appended,
    /// attention over the cache, Half output. The cache's length and position advance with <see cref="DecoderSession.AdvanceDecode"/>.
    /// </summary>
    public abstract void DecodeAttention(Tensor qkv, HeadLayout layout, RotaryTable rope, KvLayer cache, Tensor q, Tensor output, Workspace work);

    /// <summary>The index of each row's first largest value into Int <paramref name="result"/>.</summary>
    public abstract void ArgMax(Tensor x, int rows, int cols, Tensor result);

    /// <summary>
    /// What a vision tower hands on, kept where the backend computes (on a GPU in buffers of its own, counted so the vision
    /// cache and the requests using them share them): the selected features [tokens, hidden], the [CLS] attention
    /// [heads, patches] and the patch keys [patches, hidden] (both null when no attention layer ran).
    /// </summary>
    public abstract VisionFeatures KeepVision(Tensor features, Tensor? clsAttention, Tensor? patchKeys, int tokens, int hidden, int heads, int patches);

    /// <summary>
    /// A prompt's rows for the decoder: the embedding of each token id (<paramref name="source"/>[r] ≥ 0) or image row
    /// -source[r] - 1 of <paramref name="imageRows"/> ([rows, Hidden] Float), each row's visual index
    /// (<paramref name="visual"/>: the host's, or, for image rows, <paramref name="imageVisual"/> on the backend) and
    /// positions (<paramref name="positions"/>, or 0..n-1).
    /// </summary>
    /// <param name="originalPositions">Positions computed where the rows are from their visual indices (a selection before the LLM only the backend knows), instead of <paramref name="positions"/>.</param>
    public abstract BuiltSequence BuildSequence(EmbeddingTable table, Tensor? imageRows, ReadOnlySpan<int> source, int[]? visual, Tensor? imageVisual,
        PositionIds? positions, OriginalPositionRun? originalPositions = null);

    /// <summary>Starts one request's decoder state: a KV cache with room for <paramref name="extraCapacity"/> generated tokens per layer.</summary>
    public abstract DecoderSession StartSession(IDecoderWeights weights, DecoderShape shape, int extraCapacity);

    public abstract void Dispose();
}

/// <summary>
/// Contiguous row segments [Offsets[s], Offsets[s + 1]) (from <see cref="Backend.Segments"/>): the offsets on the host and,
/// as an Int tensor of the same values, where the backend computes.
/// </summary>
internal sealed class RowSegments(int[] offsets, Tensor onBackend, int maxLength) : IDisposable
{
    public int[] Offsets { get; } = offsets;
    public Tensor OnBackend { get; } = onBackend;

    /// <summary>Segments.</summary>
    public int Count => Offsets.Length - 1;

    /// <summary>Rows covered (the last offset).</summary>
    public int Rows => Offsets[^1];

    /// <summary>The longest segment's rows.</summary>
    public int MaxLength { get; } = maxLength;

    public int Start(int segment) => Offsets[segment];
    public int Length(int segment) => Offsets[segment + 1] - Offsets[segment];

    public void Dispose() => OnBackend.Dispose();
}

/// <summary>Which norm a <see cref="NormWeight"/> computes.</summary>
internal enum NormKind { LayerNorm, RmsNorm }

/// <summary>A linear layer's weights on a backend: y = x·Wᵀ + b with W [Out, In].</summary>
internal abstract class LinearWeight(int input, int output, bool bias)
{
    public int In { get; } = input;
    public int Out { get; } = output;
    public bool HasBias { get; } = bias;
}

/// <summary>A norm's weights on a backend.</summary>
internal abstract class NormWeight(int dim, float eps, NormKind kind)
{
    public int Dim { get; } = dim;
    public float Eps { get; } = eps;
    public NormKind Kind { get; } = kind;
}

/// <summary>A table of rows on a backend (a token embedding).</summary>
internal abstract class EmbeddingTable(int rows, int width)
{
    public int Rows { get; } = rows;
    public int Width { get; } = width;
}

/// <summary>RoPE tables on a backend.</summary>
internal abstract class RotaryTable(int headDim, int maxPositions, int[]? sections)
{
    public int HeadDim { get; } = headDim;
    public int MaxPositions { get; } = maxPositions;

    /// <summary>M-RoPE: frequencies per position component (summing to HeadDim/2); null for one component.</summary>
    public int[]? Sections { get; } = sections;

    public int Components => Sections?.Length ?? 1;
}

/// <summary>Attention heads of a q|k|v projection: [q (Heads·HeadDim) | k (KvHeads·HeadDim) | v (KvHeads·HeadDim)] per row.</summary>
internal readonly record struct HeadLayout(int Heads, int KvHeads, int HeadDim)
{
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public int Width => QDim + 2 * KvDim;
}

/// <summary>The decoder a <see cref="DecoderSession"/> runs: its layers, width, heads and vocabulary.</summary>
internal sealed record DecoderShape(int Layers, int Hidden, HeadLayout Heads, int Intermediate, int Vocab, int MaxPositions);

/// <summary>
/// One layer's KV cache on a backend: Half keys and values [Capacity, KvDim], of which the first <see cref="Count"/>
/// rows are held (the host's mirror of the device's decode state on a GPU).
/// </summary>
internal abstract class KvLayer(int capacity, int kvDim)
{
    public int Capacity { get; } = capacity;
    public int KvDim { get; } = kvDim;
    public abstract Tensor Keys { get; }
    public abstract Tensor Values { get; }

    /// <summary>Rows held.</summary>
    public int Count { get; set; }
}

/// <summary>
/// Named working buffers of one forward (a vision batch, a request's prefill and decode): each name keeps one buffer
/// that grows to the largest length asked for and otherwise stays where it is, so a captured CUDA graph's pointers stay
/// valid. Everything goes back to the backend's pool on <see cref="Dispose"/>.
/// </summary>
internal sealed class Workspace(Backend backend) : IDisposable
{
    private readonly Dictionary<string, Tensor> _buffers = new(StringComparer.Ordinal);

    /// <summary>The first <paramref name="length"/> values of the buffer named <paramref name="name"/> (grown when shorter).</summary>
    public Tensor Get(string name, long length, TensorKind kind)
    {
        length = Math.Max(1, length);
        if (!_buffers.TryGetValue(name, out var b) || b.Length < length || b.Kind != kind)
        {
            b?.Dispose();
            _buffers[name] = b = backend.Allocate(length, kind);
        }
        return b.First(length);
    }

    public void Dispose()
    {
        foreach (var b in _buffers.Values) b.Dispose();
        _buffers.Clear();
    }
}

/// <summary>Where a backend keeps the CUDA graph captured from one piece of replayable work (see <see cref="Backend.RunReplayable"/>).</summary>
internal sealed class GraphSlot : IDisposable
{
    /// <summary>Runs so far through this slot.</summary>
    public int Runs { get; set; }

    /// <summary>The backend's captured graph, if any.</summary>
    public IDisposable? Graph { get; set; }

    public void Dispose()
    {
        Graph?.Dispose();
        Graph = null;
    }
}

/// <summary>
/// One image's run of selected rows whose original positions follow from their visual indices: a [CLS] row at the run's
/// start, patch v at FirstImageRow + ClsRows + v mod patches, a merged row at the position before it, and the text after
/// at FirstImageRow + TokensPerImage + j.
/// </summary>
internal sealed record OriginalPositionRun(int FirstImageRow, int ImageRows, int TokensPerImage, int ClsRows);

/// <summary>
/// A prompt's rows built on a backend (<see cref="Backend.BuildSequence"/>): hidden states [Rows, Hidden] Float,
/// positions Int [components, Rows], visual indices Int [Rows]; a decoder session takes them over.
/// </summary>
internal sealed class BuiltSequence(Tensor hidden, Tensor positions, Tensor visual, int rows) : IDisposable
{
    public Tensor Hidden { get; } = hidden;
    public Tensor Positions { get; } = positions;
    public Tensor Visual { get; } = visual;
    public int Rows { get; } = rows;

    /// <summary>The largest position of the last row, known on the host (n - 1, or more when the rows keep original positions).</summary>
    public int LastPosition { get; init; } = rows - 1;

    public void Dispose()
    {
        Hidden.Dispose();
        Positions.Dispose();
        Visual.Dispose();
    }
}
