using System.Runtime.InteropServices;
using System.Numerics.Tensors;
using AutoPrune.Loading;
using ILGPU;
using ILGPU.Runtime;
using Half = System.Half;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// The GPU backend: an NVIDIA GPU through ILGPU kernels and cuBLAS (or, for checking, ILGPU's CPU accelerator with a
/// host GEMM). Weights are uploaded once as fp16 (norms and biases fp32); activations stay on the device; GEMMs run
/// through cuBLAS (fp16 inputs, fp32 accumulation), everything else in ILGPU kernels, all on one stream
/// (<see cref="Queue"/>). Pixels and token ids go up; the logits of a prompt's last position, one id per generated token,
/// the pruning report and small per-prefill scalars come back. <see cref="Counters"/> counts it all.
/// </summary>
/// <remarks>One caller at a time (<see cref="Enter"/>): the kernels share the stream.</remarks>
internal sealed class CudaBackend : Backend
{
    private readonly CudaDevice _device;
    private readonly DeviceBuffer<byte>? _blasWorkspace;
    private readonly List<IDisposable> _owned = [];
    private readonly Dictionary<string, DeviceBuffer<float>> _constants = new(StringComparer.Ordinal);
    private readonly DeviceBuffer<int> _noPositions;
    private readonly DeviceBuffer<float> _noTable;
    private bool _disposed;

    /// <summary>Opens the backend on <paramref name="device"/>, which it then owns.</summary>
    /// <param name="cudaGraphs">Replay decode steps and the vision tower as CUDA graphs (emulated on ILGPU's CPU accelerator).</param>
    public CudaBackend(CudaDevice device, bool cudaGraphs = false)
    {
        _device = device;
        UseCudaGraphs = cudaGraphs;
        var acc = device.Accelerator;
        // CUDA calls need the accelerator's context current on the calling thread: every entry point binds it (Enter).
        using var bind = acc.BindScoped();
        Queue = new DeviceQueue(acc, Counters);
        Memory = new DeviceArena(Queue);
        // On ILGPU's CPU accelerator every emulated thread and barrier costs microseconds: one thread per row group.
        Ops = new CudaOps(acc, rowGroupSize: device.IsCuda ? 0 : 1, queue: Queue);
        try
        {
            if (device.IsCuda)
            {
                _blasWorkspace = Memory.Allocate<byte>(CuBlasExecutor.WorkspaceBytes);
                Blas = new DeviceBlas(new CuBlasExecutor(Queue.NativeStream, DeviceBlas.Ptr(_blasWorkspace.View)), Queue);
            }
            else Blas = new DeviceBlas(new HostGemmExecutor(acc), Queue);
            _noPositions = Memory.Upload<int>([0]);
            _noTable = Memory.Upload<float>([0f]);
        }
        catch
        {
            Blas?.Dispose();
            _blasWorkspace?.Dispose();
            Memory.Dispose();
            Queue.Dispose();
            throw;
        }
    }

    internal object Sync { get; } = new();
    internal CudaOps Ops { get; }
    internal Accelerator Accelerator => _device.Accelerator;
    internal DeviceBlas Blas { get; }
    internal DeviceArena Memory { get; }
    internal DeviceQueue Queue { get; }
    internal bool IsCuda => _device.IsCuda;

    public override string Device => _device.Description;
    public override bool HalfActivations => true;
    public override bool Serialized => true;

    /// <summary>Host syncs, launches, cuBLAS calls, copies and allocations of everything done on this device.</summary>
    public override Diagnostics.DeviceCounterSet Counters { get; } = new();

    /// <summary>Decode steps and the vision tower replay CUDA graphs (captured on their second run).</summary>
    internal bool UseCudaGraphs { get; }

    /// <summary>Largest attention score block (heads × query rows × keys, fp32 elements); longer prompts run in query chunks.</summary>
    internal long AttentionBlockElements { get; set; } = 64L << 20;

    /// <summary>
    /// Causal attention over at least twice this many query rows runs in chunks of it, each against the keys its rows can
    /// see only (the upper triangle is never computed); shorter prompts take one block (the launches would cost more).
    /// </summary>
    internal int CausalChunkRows { get; set; } = 1024;

    /// <summary>
    /// Attention whose queries × keys stay at or under this runs as one fused launch (<see cref="CudaOps.FusedAttention"/>)
    /// instead of two cuBLAS calls and a softmax: a pruned prefill's short layers (about 114 rows at budget 64 on
    /// LLaVA-1.5) are launch-bound. Above it the GEMMs' tensor cores win. The value (181² pairs) comes from an estimate
    /// (each group streams its keys and values through L2: at this size about as long as the two launches it saves) and
    /// wants tuning on a GPU; 0 turns the fused path off.
    /// </summary>
    internal long FusedAttentionMaxPairs { get; set; } = Cpu.DeviceNumerics.FusedAttentionMaxPairs;

    /// <summary>
    /// Longer attention runs as one tiled launch on the tensor cores (<see cref="CudaOps.TiledAttention"/>) where the head
    /// dimension and the device allow it (<see cref="CudaOps.TiledAttentionRuns"/>), instead of two cuBLAS calls and a
    /// softmax; false keeps the GEMMs (tests compare the two).
    /// </summary>
    internal bool TiledAttention { get; set; } = true;

    /// <summary>Largest difference the tiled attention may show against its host twin at load (fp16 outputs of about 1).</summary>
    internal const double TiledAttentionTolerance = 1e-2;

    /// <summary>Why long attention runs through cuBLAS on this GPU although the tiled kernel could run (null when it does not).</summary>
    public string? TiledAttentionWarning { get; private set; }

    private int _decoderHeadDim;

    /// <summary>"tiled" when long attention is the tensor-core kernel for the decoder's head dimension, else "gemm: " and why.</summary>
    public string LongAttention => TiledAttention && Ops.TiledAttentionRuns(_decoderHeadDim) ? "tiled"
        : "gemm: " + (TiledAttentionWarning ?? (TiledAttention ? $"head dimension {_decoderHeadDim} or this device does not take the tiled kernel" : "switched off"));

    /// <summary>
    /// After the weights are up: on a GPU every kernel compiled, and the tiled tensor-core attention checked against its
    /// host twin for each head dimension the model uses (past <see cref="TiledAttentionTolerance"/> long attention keeps the
    /// GEMM path and <see cref="TiledAttentionWarning"/> says why); then the device is synchronised.
    /// </summary>
    public override void Prepare(int decoderHeadDim, params int[] otherHeadDims)
    {
        using var scope = Enter();
        _decoderHeadDim = decoderHeadDim;
        if (_device.IsCuda)
        {
            Ops.CompileAll();
            foreach (int hd in otherHeadDims.Append(decoderHeadDim).Distinct())
            {
                if (!TiledAttention || !Ops.TiledAttentionRuns(hd)) continue;
                double diff = Ops.TiledAttentionSelfCheck(hd);
                if (diff <= TiledAttentionTolerance) continue;
                TiledAttention = false;
                TiledAttentionWarning = $"The tiled tensor-core attention differs from its reference by {diff:G3} (more than {TiledAttentionTolerance:G3}) " +
                    $"at head dimension {hd} on {_device.Description}; long attention runs through cuBLAS GEMMs instead (slower, 2 more launches per layer).";
            }
        }
        Queue.Synchronize();
    }

    public override IDisposable Enter() => new Scope(this);

    private sealed class Scope : IDisposable
    {
        private readonly CudaBackend _b;
        private ScopedAcceleratorBinding _bind;
        private bool _done;

        public Scope(CudaBackend b)
        {
            _b = b;
            Monitor.Enter(b.Sync);
            try { _bind = b.Accelerator.BindScoped(); }
            catch { Monitor.Exit(b.Sync); throw; }
        }

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _bind.Dispose();
            Monitor.Exit(_b.Sync);
        }
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    internal static DeviceTensor Dev(Tensor t) => t as DeviceTensor ?? throw new ArgumentException($"A {t.GetType().Name} is not a device tensor.", nameof(t));

    // ---------------------------------------------------------------- weights

    public override LinearWeight LoadLinear(ITensorSource source, IReadOnlyList<(string Prefix, int Out)> parts, int input, bool bias)
    {
        using var scope = Enter();
        return Own(DeviceLinear.LoadStacked(Memory, source, parts, input, bias));
    }

    public override LinearWeight LoadLinear(ITensorSource source, string weightName, int input, int output, long[] storedShape)
    {
        using var scope = Enter();
        var w = source.ReadFloat16(weightName, storedShape);
        if (w.LongLength != (long)input * output) throw new ArgumentException($"A [{string.Join(", ", storedShape)}] weight is not [{output}, {input}].", nameof(storedShape));
        return Own(new DeviceLinear(Memory.Upload(MemoryMarshal.Cast<Half, ushort>(w.AsSpan())), null, input, output));
    }

    public override NormWeight LoadNorm(ITensorSource source, string prefix, int dim, float eps, NormKind kind)
    {
        using var scope = Enter();
        return Own(DeviceNorm.Load(Memory, source, prefix, dim, eps, kind));
    }

    public override EmbeddingTable LoadEmbedding(ITensorSource source, string name, int rows, int width)
    {
        using var scope = Enter();
        return Own(new DeviceEmbedding(Memory.Upload(MemoryMarshal.Cast<Half, ushort>(source.ReadFloat16(name, rows, width).AsSpan())), rows, width));
    }

    /// <summary>The LM head shares the table's memory: it is not owned twice.</summary>
    public override LinearWeight TiedLinear(EmbeddingTable table)
    {
        var t = (DeviceEmbedding)table;
        return new DeviceLinear(t.Table, null, t.Width, t.Rows);
    }

    public override Tensor Constant(ReadOnlySpan<float> values)
    {
        using var scope = Enter();
        return DeviceTensor.Of(Own(Memory.Upload(values)).View.SubView(0, values.Length));
    }

    /// <summary>
    /// A small constant table kept on the device (e.g. AdaptPrune's positional prior for a grid), uploaded the first time
    /// it is asked for, so later requests upload nothing. The caller is inside <see cref="Enter"/>.
    /// </summary>
    internal ArrayView<float> Constant(string key, Func<float[]> make)
    {
        if (!_constants.TryGetValue(key, out var b)) _constants[key] = b = Memory.Upload<float>(make());
        return b.View;
    }

    public override RotaryTable Rotary(float[] inverseFrequencies, int maxPositions, int[]? sections = null)
    {
        using var scope = Enter();
        var (cos, sin) = CudaKernels.RopeTables(inverseFrequencies, maxPositions);
        return new CudaRotary(Own(Memory.Upload<float>(cos)), Own(Memory.Upload<float>(sin)), inverseFrequencies.Length * 2, maxPositions, sections);
    }

    // ---------------------------------------------------------------- memory

    public override Tensor Allocate(long length, TensorKind kind)
    {
        using var scope = Enter();
        return kind switch
        {
            TensorKind.Float => DeviceTensor.Owning(Memory.Allocate<float>(Math.Max(1, length)), length),
            TensorKind.Half => DeviceTensor.Owning(Memory.Allocate<ushort>(Math.Max(1, length)), length),
            _ => DeviceTensor.Owning(Memory.Allocate<int>(Math.Max(1, length)), length),
        };
    }

    public override void Upload(ReadOnlySpan<float> source, Tensor destination)
    {
        using var scope = Enter();
        var d = Dev(destination);
        if (source.Length == 0) return;
        if (d.Kind == TensorKind.Float) { Queue.Upload(d.F.SubView(0, source.Length), source); return; }
        var half = new Half[source.Length];
        TensorPrimitives.ConvertToHalf(source, half);
        Queue.Upload(d.H.SubView(0, source.Length), MemoryMarshal.Cast<Half, ushort>(half.AsSpan()));
    }

    public override void Upload(ReadOnlySpan<int> source, Tensor destination)
    {
        using var scope = Enter();
        if (source.Length > 0) Queue.Upload(Dev(destination).I.SubView(0, source.Length), source);
    }

    public override float[] Download(Tensor source)
    {
        using var scope = Enter();
        var s = Dev(source);
        if (s.Kind == TensorKind.Float) return Queue.Download(s.F, s.Length);
        var bits = Queue.Download(s.H, s.Length);
        var result = new float[bits.Length];
        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(bits.AsSpan()), result);
        return result;
    }

    public override int[] DownloadInts(Tensor source)
    {
        using var scope = Enter();
        var s = Dev(source);
        return Queue.Download(s.I, s.Length);
    }

    public override void Copy(Tensor source, Tensor destination)
    {
        var s = Dev(source);
        var d = Dev(destination);
        if (s.Length == 0) return;
        switch (s.Kind)
        {
            case TensorKind.Float: Queue.Copy(s.F, d.F.SubView(0, s.Length)); break;
            case TensorKind.Half: Queue.Copy(s.H, d.H.SubView(0, s.Length)); break;
            default: Queue.Copy(s.I, d.I.SubView(0, s.Length)); break;
        }
    }

    // ---------------------------------------------------------------- ops

    public override void Norm(NormWeight w, Tensor x, Tensor y, int rows)
    {
        var n = (DeviceNorm)w;
        var src = Dev(x);
        var dst = Dev(y);
        if (dst.Kind == TensorKind.Half)
        {
            if (n.Kind == NormKind.LayerNorm) Ops.LayerNormToHalf(src.F, dst.H, rows, n.Dim, n.Weight.View, n.Bias!.View, n.Eps);
            else Ops.RmsNormToHalf(src.F, dst.H, rows, n.Dim, n.Weight.View, n.Eps);
            return;
        }
        if (n.Kind == NormKind.LayerNorm) Ops.LayerNorm(src.F, dst.F, rows, n.Dim, n.Weight.View, n.Bias!.View, n.Eps);
        else Ops.RmsNormRows(src.F, 0, rows, n.Dim, n.Weight.View, n.Eps, dst.F);
    }

    public override void Linear(LinearWeight w, Tensor x, int rows, Tensor y, bool accumulate = false)
    {
        var l = (DeviceLinear)w;
        var input = Dev(x).H;
        var dst = Dev(y);
        if (dst.Kind == TensorKind.Half)
        {
            if (l.Bias is not null || accumulate) throw new ArgumentException("A linear layer with a bias, or accumulating, writes Float.", nameof(y));
            Blas.LinearToHalf(input, rows, l.In, l.Weight.View, l.Out, dst.H);
            return;
        }
        Blas.Linear(input, rows, l.In, l.Weight.View, l.Out, dst.F, accumulate);
        if (l.Bias is not null && rows > 0) Ops.AddBias(dst.F, rows, l.Out, l.Bias.View);
    }

    public override void Activation(ActivationFunction f, Tensor x) => Ops.Activation(f, Dev(x).F);

    public override void ToHalf(Tensor source, Tensor destination)
    {
        var s = Dev(source);
        if (s.Length > 0) Ops.ToHalf(s.F, Dev(destination).H.SubView(0, s.Length));
    }

    public override void Add(Tensor x, Tensor y) => Ops.Add(Dev(x).F, Dev(y).F);

    public override void SiluMul(Tensor gateUp, Tensor destination, int rows, int inter)
    {
        var gu = Dev(gateUp);
        if (gu.Kind == TensorKind.Half) Ops.SiluMulSplitToHalf(gu.H, Dev(destination).H, rows, inter);
        else Ops.SiluMulSplitToHalf(gu.F, Dev(destination).H, rows, inter);
    }

    public override void SplitHeads(Tensor qkv, int rows, HeadLayout layout, RotaryTable? rope, Tensor? positions,
        Tensor? q32, Tensor? k32, Tensor q, Tensor? k, Tensor? v, KvLayer? cache)
    {
        var c = cache as CudaKvLayer;
        bool signals = q32 is not null;
        var shape = new QkvShape(layout.Heads, layout.KvHeads, layout.HeadDim, rope is null ? 0 : 1, signals ? 1 : 0,
            StateSlot: c?.Slot ?? -1, CacheCount: c is null ? 0 : rows).WithSections(rope?.Sections);
        var r = rope as CudaRotary;
        var kv = layout.KvDim;
        var kh = c is not null ? c.K.Slice(0, (long)rows * kv) : Dev(k!).H;
        var vh = c is not null ? c.V.Slice(0, (long)rows * kv) : Dev(v!).H;
        Ops.QkvSplitRope(Dev(qkv).F, rows, positions is null ? _noPositions.View : Dev(positions).I, r?.Cos.View ?? _noTable.View, r?.Sin.View ?? _noTable.View,
            signals ? Dev(q32!).F : _noTable.View, signals ? Dev(k32!).F : _noTable.View, Dev(q).H, kh, vh, shape, c?.State ?? default);
        if (c is not null) c.Count = rows;
    }

    /// <summary>Score rows are padded to a multiple of 8 keys, so the attention GEMMs keep 16-byte aligned rows (tensor cores).</summary>
    internal static int PaddedKeys(int nk) => (nk + 7) & ~7;

    /// <summary>
    /// Multi-head attention in one launch: short attention (at most <see cref="FusedAttentionMaxPairs"/> query × key pairs)
    /// fused, longer attention tiled on the tensor cores where the head dimension and the device allow. Otherwise through
    /// cuBLAS: scores = q·kᵀ per head (batched GEMM), scaled masked softmax to fp16, out = p·v (batched GEMM, fp16 out),
    /// queries in chunks so the score block stays under <see cref="AttentionBlockElements"/> (and, for long causal prompts,
    /// of <see cref="CausalChunkRows"/>), each chunk computing only the keys its rows can see.
    /// </summary>
    public override void Attention(Tensor q, Tensor k, Tensor v, Tensor output, AttentionShape shape, int causalOffset, Workspace work)
    {
        int nq = shape.Nq, nk = shape.Nk, heads = shape.QHeads, kvHeads = shape.KvHeads, hd = shape.HeadDim;
        var qv = Dev(q).H;
        var kview = Dev(k).H;
        var vview = Dev(v).H;
        var ov = Dev(output).H;
        if (nq == 0) return;
        if ((long)nq * nk <= FusedAttentionMaxPairs)
        {
            var fused = AttentionShape.Create(nq, nk, heads, kvHeads, hd, causal: false);
            Ops.FusedAttention(qv, kview, vview, Dev(work.Get("att.scores", (long)heads * nq * nk, TensorKind.Float)).F, ov, fused, causalOffset);
            return;
        }
        if (TiledAttention && Ops.TiledAttentionRuns(hd))
        {
            Ops.TiledAttention(qv, kview, vview, ov, AttentionShape.Create(nq, nk, heads, kvHeads, hd, causal: false), causalOffset);
            return;
        }
        int group = heads / kvHeads, qd = heads * hd, kvd = kvHeads * hd;
        int block = (int)Math.Clamp(AttentionBlockElements / ((long)heads * PaddedKeys(nk)), 1, nq);
        if (causalOffset >= 0 && nq >= 2 * CausalChunkRows) block = Math.Min(block, CausalChunkRows);
        float scale = 1f / MathF.Sqrt(hd);
        for (int i0 = 0; i0 < nq; i0 += block)
        {
            int b = Math.Min(block, nq - i0);
            int visible = causalOffset < 0 ? nk : Math.Min(nk, causalOffset + i0 + b);
            int ld = PaddedKeys(visible);
            long per = (long)b * ld;
            var s = Dev(work.Get("att.scores", heads * per, TensorKind.Float)).F;
            var p = Dev(work.Get("att.probs", heads * per, TensorKind.Half)).H;
            for (int g = 0; g < group; g++)
            {
                // Query heads kvh·group + g, for every kv head kvh: one strided batch over kv heads.
                Blas.BatchedTransB(b, hd, visible, kvHeads,
                    qv.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd,
                    kview.SubView(0, (long)(visible - 1) * kvd + kvd), kvd, hd,
                    s.SubView(g * per, (kvHeads - 1) * group * per + per), ld, group * per);
            }
            Ops.ScaledMaskedSoftmaxToHalf(s, p, heads, b, visible, causalOffset < 0 ? -1 : causalOffset + i0, scale, ld);
            for (int g = 0; g < group; g++)
            {
                Blas.BatchedNN(b, visible, hd, kvHeads,
                    p.SubView(g * per, (kvHeads - 1) * group * per + per), ld, group * per,
                    vview.SubView(0, (long)(visible - 1) * kvd + kvd), kvd, hd,
                    ov.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd);
            }
        }
    }

    /// <summary>
    /// Every segment of at most <see cref="FusedAttentionMaxPairs"/> query × key pairs (a vision tower's windows, small
    /// images) in one variable-length fused launch (in row chunks when its scores would pass
    /// <see cref="AttentionBlockElements"/>); each longer segment as its own <see cref="Attention"/> (tiled, or the GEMMs).
    /// </summary>
    public override void SegmentAttention(Tensor q, Tensor k, Tensor v, Tensor output, int heads, int headDim, RowSegments segments, Workspace work)
    {
        int n = segments.Rows, dim = heads * headDim, shortest = 0;
        bool anyShort = false;
        for (int s = 0; s < segments.Count; s++)
        {
            long len = segments.Length(s);
            if (len > 0 && len * len <= FusedAttentionMaxPairs) { anyShort = true; shortest = Math.Max(shortest, (int)len); }
        }
        var qv = Dev(q).H;
        var kv = Dev(k).H;
        var vv = Dev(v).H;
        var ov = Dev(output).H;
        if (anyShort)
        {
            int chunk = (int)Math.Clamp(AttentionBlockElements / ((long)heads * shortest), 1, n);
            var scores = Dev(work.Get("seg.scores", (long)heads * Math.Min(chunk, n) * shortest, TensorKind.Float)).F;
            for (int first = 0; first < n; first += chunk)
            {
                int rows = Math.Min(chunk, n - first);
                Ops.VarlenFusedAttention(qv, kv, vv, Dev(segments.OnBackend).I, scores, ov,
                    new SegmentShape(n, heads, headDim, 1f / MathF.Sqrt(headDim), segments.Count, first, rows, shortest, FusedAttentionMaxPairs, 1));
            }
        }
        for (int s = 0; s < segments.Count; s++)
        {
            int start = segments.Start(s), len = segments.Length(s);
            if (len == 0 || (long)len * len <= FusedAttentionMaxPairs) continue;
            Attention(q.Rows(start, len, dim), k.Rows(start, len, dim), v.Rows(start, len, dim), output.Rows(start, len, dim),
                AttentionShape.Create(len, len, heads, heads, headDim, causal: false), -1, work);
        }
    }

    public override void ReceivedAttention(Tensor q32, Tensor k32, int heads, int headDim, RowSegments segments, int groupRows, Tensor result, Workspace work)
    {
        Cpu.SegmentOps.CheckGroups(segments, groupRows);
        int n = segments.Rows;
        var stats = Dev(work.Get("recv.stats", 2L * heads * n, TensorKind.Float)).F;
        Ops.ReceivedAttention(Dev(q32).F, Dev(k32).F, Dev(segments.OnBackend).I, stats, Dev(result).F,
            new SegmentShape(n, heads, headDim, 1f / MathF.Sqrt(headDim), segments.Count, 0, n, 0, 0, groupRows));
    }

    public override void GatherRows(Tensor source, Tensor index, int rows, int width, Tensor destination)
    {
        if (rows == 0) return;
        var src = Dev(source).F;
        Ops.RowGatherMixed(src, src, Dev(index).I.SubView(0, rows), Dev(destination).F, width);
    }

    public override void AttentionWindow(Tensor q32, Tensor k32, Tensor result, AttentionShape shape, WindowShape window)
        => Ops.AttentionWindow(Dev(q32).F, Dev(k32).F, Dev(result).F, shape, window);

    public override void Embed(EmbeddingTable table, Tensor ids, int count, Tensor destination)
    {
        var t = (DeviceEmbedding)table;
        var idv = Dev(ids).I;
        var dst = Dev(destination).F;
        for (int i = 0; i < count; i++) Ops.EmbedToken(t.Table.View, idv.SubView(i, 1), dst.SubView((long)i * t.Width, t.Width), t.Width);
    }

    public override void DecodeAttention(Tensor qkv, HeadLayout layout, RotaryTable rope, KvLayer cache, Tensor q, Tensor output, Workspace work)
    {
        // A decode token has one position in every component: M-RoPE reduces to RoPE there (the tables are the same).
        var c = (CudaKvLayer)cache;
        var r = (CudaRotary)rope;
        var shape = new QkvShape(layout.Heads, layout.KvHeads, layout.HeadDim, 1, 0);
        var scores = Dev(work.Get("d.scores", (long)layout.Heads * c.SessionCapacity, TensorKind.Float)).F;
        Ops.DecodeRopeAttention(Dev(qkv).F, c.State, c.Slot, r.Cos.View, r.Sin.View, Dev(q).H, c.K.View, c.V.View, scores, Dev(output).H,
            AttentionShape.Create(1, 1, layout.Heads, layout.KvHeads, layout.HeadDim, causal: false), shape, c.Capacity);
    }

    public override void ArgMax(Tensor x, int rows, int cols, Tensor result) => Ops.ArgMaxRows(Dev(x).F, rows, cols, Dev(result).I);

    public override VisionFeatures KeepVision(Tensor features, Tensor? clsAttention, Tensor? patchKeys, int tokens, int hidden, int heads, int patches)
    {
        var f = Memory.Allocate<float>((long)tokens * hidden);
        DeviceBuffer<float>? cls = null, keys = null;
        try
        {
            Queue.Copy(Dev(features).F.SubView(0, (long)tokens * hidden), f.View);
            if (clsAttention is not null && patchKeys is not null)
            {
                cls = Memory.Allocate<float>((long)heads * patches);
                keys = Memory.Allocate<float>((long)patches * hidden);
                Queue.Copy(Dev(clsAttention).F.SubView(0, (long)heads * patches), cls.View);
                Queue.Copy(Dev(patchKeys).F.SubView(0, (long)patches * hidden), keys.View);
            }
        }
        catch
        {
            f.Dispose(); cls?.Dispose(); keys?.Dispose();
            throw;
        }
        var device = new DeviceVisionFeatures(this, f, cls, keys, tokens, hidden, heads, patches);
        return new VisionFeatures { Device = device, FeaturesTensor = DeviceTensor.Of(f.View.SubView(0, (long)tokens * hidden)), Tokens = tokens, Hidden = hidden, Heads = heads, Patches = patches };
    }

    public override BuiltSequence BuildSequence(EmbeddingTable table, Tensor? imageRows, ReadOnlySpan<int> source, int[]? visual, Tensor? imageVisual,
        PositionIds? positions, OriginalPositionRun? originalPositions = null)
    {
        var t = (DeviceEmbedding)table;
        int n = source.Length, h = t.Width, components = positions?.Components ?? 1;
        if (positions is not null && positions.Count != n) throw new ArgumentException($"{positions.Count} positions for a sequence of {n} rows.", nameof(positions));
        if (components > 1 && originalPositions is not null) throw new NotSupportedException("Original positions computed on the device are one component per row.");
        var x = Memory.Allocate<float>((long)n * h);
        var pos = Memory.Allocate<int>((long)components * n);
        var vis = Memory.Allocate<int>(n);
        using var src = Memory.Allocate<int>(n);
        try
        {
            Queue.Upload(src.View, source);
            Ops.EmbedSequence(t.Table.View, imageRows is null ? _noTable.View : Dev(imageRows).F, src.View, n, h, x.View, pos.View, vis.View,
                imageVisual is null ? default : Dev(imageVisual).I);
            // Original positions after a selection before the LLM: n ints go up with the token ids, or, when only the
            // device knows the chosen patches, they are computed there.
            if (positions is not null) Queue.Upload(pos.View, positions.Values);
            else if (originalPositions is { } o)
                Ops.OriginalPositions(pos.View, vis.View, n, o.FirstImageRow, o.ImageRows, o.TokensPerImage, o.ClsRows, o.TokensPerImage - o.ClsRows);
        }
        catch
        {
            x.Dispose(); pos.Dispose(); vis.Dispose();
            throw;
        }
        return new BuiltSequence(DeviceTensor.Owning(x, (long)n * h), DeviceTensor.Owning(pos, (long)components * n), DeviceTensor.Owning(vis, n), n)
        {
            LastPosition = positions is null || n == 0 ? n - 1 : positions.MaxAt(n - 1),
        };
    }

    public override void RunReplayable(GraphSlot slot, Action launches)
    {
        if (UseCudaGraphs && slot.Runs > 0)
        {
            slot.Graph ??= CudaGraph.Capture(Queue, launches);
            ((CudaGraph)slot.Graph).Launch();
        }
        else launches();
        slot.Runs++;
    }

    public override DecoderSession StartSession(IDecoderWeights weights, DecoderShape shape, int extraCapacity)
        => new CudaDecoderSession(this, weights, shape, extraCapacity);

    public override void Dispose()
    {
        lock (Sync)
        {
            if (_disposed) return;
            _disposed = true;
            using var bind = _device.Accelerator.BindScoped();
            foreach (var c in _constants.Values) c.Dispose();
            _constants.Clear();
            for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
            _owned.Clear();
            _noPositions.Dispose();
            _noTable.Dispose();
            Blas.Dispose();
            _blasWorkspace?.Dispose();
            Memory.Dispose();
            Queue.Dispose();
            _device.Dispose();
        }
    }
}

/// <summary>
/// A device tensor: a view of device memory, Float (fp32), Half (fp16 bits) or Int; an allocated one gives its buffer
/// back to the pool when disposed.
/// </summary>
internal sealed class DeviceTensor : Tensor
{
    private readonly IDisposable? _owner;
    private readonly long _length;
    private readonly TensorKind _kind;

    private DeviceTensor(ArrayView<float> f, ArrayView<ushort> h, ArrayView<int> i, long length, TensorKind kind, IDisposable? owner)
    {
        F = f; H = h; I = i; _length = length; _kind = kind; _owner = owner;
    }

    public ArrayView<float> F { get; }
    public ArrayView<ushort> H { get; }
    public ArrayView<int> I { get; }

    public static DeviceTensor Of(ArrayView<float> v) => new(v, default, default, v.Length, TensorKind.Float, null);
    public static DeviceTensor Of(ArrayView<ushort> v) => new(default, v, default, v.Length, TensorKind.Half, null);
    public static DeviceTensor Of(ArrayView<int> v) => new(default, default, v, v.Length, TensorKind.Int, null);
    public static DeviceTensor Owning(DeviceBuffer<float> b, long length) => new(b.View.SubView(0, Math.Max(1, length)), default, default, length, TensorKind.Float, b);
    public static DeviceTensor Owning(DeviceBuffer<ushort> b, long length) => new(default, b.View.SubView(0, Math.Max(1, length)), default, length, TensorKind.Half, b);
    public static DeviceTensor Owning(DeviceBuffer<int> b, long length) => new(default, default, b.View.SubView(0, Math.Max(1, length)), length, TensorKind.Int, b);

    public override long Length => _length;
    public override TensorKind Kind => _kind;

    public override Tensor Slice(long start, long length)
    {
        if (start < 0 || length < 0 || start + length > _length)
            throw new ArgumentOutOfRangeException(nameof(start), $"Slice [{start}, {start + length}) of a {_length}-value device tensor.");
        return _kind switch
        {
            TensorKind.Float => new DeviceTensor(F.SubView(start, length), default, default, length, _kind, null),
            TensorKind.Half => new DeviceTensor(default, H.SubView(start, length), default, length, _kind, null),
            _ => new DeviceTensor(default, default, I.SubView(start, length), length, _kind, null),
        };
    }

    public override void Dispose() => _owner?.Dispose();
}

/// <summary>One layer's KV cache on the device: fp16 keys and values, and its slot in the session's decode state.</summary>
internal sealed class CudaKvLayer(DeviceBuffer<ushort> k, DeviceBuffer<ushort> v, int capacity, int kvDim, int slot, ArrayView<int> state, int sessionCapacity)
    : KvLayer(capacity, kvDim), IDisposable
{
    public DeviceBuffer<ushort> K { get; } = k;
    public DeviceBuffer<ushort> V { get; } = v;
    public int Slot { get; } = slot;

    /// <summary>The session's decode state: per layer its cache length and next position.</summary>
    public ArrayView<int> State { get; } = state;

    /// <summary>The largest capacity of any layer in the session (the decode step's score scratch).</summary>
    public int SessionCapacity { get; } = sessionCapacity;

    public override Tensor Keys => DeviceTensor.Of(K.View);
    public override Tensor Values => DeviceTensor.Of(V.View);

    public void Dispose()
    {
        K.Dispose();
        V.Dispose();
    }
}

/// <summary>The embedding table on the device (fp16, also the tied LM head's weight).</summary>
internal sealed class DeviceEmbedding(DeviceBuffer<ushort> table, int rows, int width) : EmbeddingTable(rows, width), IDisposable
{
    public DeviceBuffer<ushort> Table { get; } = table;
    public void Dispose() => Table.Dispose();
}

/// <summary>The RoPE cos/sin tables on the device ([maxPositions, headDim/2] each).</summary>
internal sealed class CudaRotary(DeviceBuffer<float> cos, DeviceBuffer<float> sin, int headDim, int maxPositions, int[]? sections)
    : RotaryTable(headDim, maxPositions, sections)
{
    public DeviceBuffer<float> Cos { get; } = cos;
    public DeviceBuffer<float> Sin { get; } = sin;
}
