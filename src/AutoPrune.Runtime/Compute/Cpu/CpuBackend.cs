using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;

namespace AutoPrune.Compute.Cpu;

/// <summary>
/// The CPU backend: managed SIMD (<see cref="Gemm"/>, <see cref="CpuOps"/>, <see cref="Attention"/>), fp32 compute on the
/// checkpoint's own weights (fp16/bf16 stay 2 bytes per weight, mapped from its files and widened per GEMM tile), a
/// request's KV cache and working rows in unmanaged blocks from <see cref="Memory"/>. With
/// <see cref="CpuPrecision.MatchDevice"/> every op computes what the GPU code path computes (fp16 where it stores fp16,
/// its sums' order, its GEMM tiling), so the two can be compared bit for bit.
/// </summary>
internal sealed class CpuBackend(CpuPrecision precision = CpuPrecision.Fp32) : Backend
{
    private readonly bool _md = precision == CpuPrecision.MatchDevice;

    public CpuPrecision Precision { get; } = precision;
    public override string Device => "cpu";
    public override bool HalfActivations => _md;
    public override bool Serialized => false;

    /// <summary>Where requests' KV caches and working buffers come from and go back to (freed with the backend).</summary>
    public HostMemoryPool Memory { get; } = new();

    public override IDisposable Enter() => NoScope.Instance;

    private sealed class NoScope : IDisposable
    {
        public static readonly NoScope Instance = new();
        public void Dispose() { }
    }

    // ---------------------------------------------------------------- weights

    public override LinearWeight LoadLinear(ITensorSource source, IReadOnlyList<(string Prefix, int Out)> parts, int input, bool bias)
    {
        var loaded = new (WeightData Weight, float[]? Bias, int Out)[parts.Count];
        for (int i = 0; i < parts.Count; i++)
        {
            var (prefix, output) = parts[i];
            loaded[i] = (source.ReadWeight(prefix + ".weight", output, input), bias ? source.ReadFloat32(prefix + ".bias", output) : null, output);
        }
        return new CpuLinear(loaded, input);
    }

    public override LinearWeight LoadLinear(ITensorSource source, string weightName, int input, int output, long[] storedShape)
    {
        long elements = 1;
        foreach (long d in storedShape) elements *= d;
        if (elements != (long)input * output)
            throw new ArgumentException($"A [{string.Join(", ", storedShape)}] weight is not [{output}, {input}].", nameof(storedShape));
        return new CpuLinear([(source.ReadWeight(weightName, storedShape), null, output)], input);
    }

    public override NormWeight LoadNorm(ITensorSource source, string prefix, int dim, float eps, NormKind kind)
        => new CpuNorm(new NormWeights(source.ReadFloat32(prefix + ".weight", dim), kind == NormKind.LayerNorm ? source.ReadFloat32(prefix + ".bias", dim) : null, eps), kind);

    public override EmbeddingTable LoadEmbedding(ITensorSource source, string name, int rows, int width)
        => new CpuEmbedding(source.ReadWeight(name, rows, width), rows, width);

    public override LinearWeight TiedLinear(EmbeddingTable table)
    {
        var t = (CpuEmbedding)table;
        return new CpuLinear([(t.Data, null, t.Rows)], t.Width);
    }

    public override Tensor Constant(ReadOnlySpan<float> values) => HostTensor.Of(values.ToArray());

    public override RotaryTable Rotary(float[] inverseFrequencies, int maxPositions, int[]? sections = null)
        => new CpuRotary(inverseFrequencies, maxPositions, sections);

    // ---------------------------------------------------------------- memory

    public override Tensor Allocate(long length, TensorKind kind)
        => kind == TensorKind.Int ? HostTensor.OfInts(new int[Math.Max(1, length)]) : HostTensor.Owning(Memory.Rent(Math.Max(1, length)), kind);

    public override void Upload(ReadOnlySpan<float> source, Tensor destination)
    {
        var d = Host(destination).Span;
        source.CopyTo(d);
        if (_md && destination.Kind == TensorKind.Half) DeviceNumerics.RoundToHalf(d[..source.Length]);
    }

    public override void Upload(ReadOnlySpan<int> source, Tensor destination) => source.CopyTo(Host(destination).Ints);
    public override float[] Download(Tensor source) => Host(source).Span.ToArray();
    public override int[] DownloadInts(Tensor source) => Host(source).Ints.ToArray();

    public override void Copy(Tensor source, Tensor destination)
    {
        if (source.Kind == TensorKind.Int) Host(source).Ints.CopyTo(Host(destination).Ints);
        else Host(source).Span.CopyTo(Host(destination).Span);
    }

    internal static HostTensor Host(Tensor t) => t as HostTensor ?? throw new ArgumentException($"A {t.GetType().Name} is not a CPU tensor.", nameof(t));

    // ---------------------------------------------------------------- ops

    public override void Norm(NormWeight w, Tensor x, Tensor y, int rows)
    {
        var n = (CpuNorm)w;
        var src = Host(x).Span;
        var dst = Host(y).Span;
        int dim = n.Dim, len = rows * dim;
        bool inPlace = ReferenceEquals(x, y) || src.Overlaps(dst);
        if (n.Kind == NormKind.LayerNorm)
        {
            if (inPlace) CpuOps.LayerNorm(dst[..len], rows, dim, n.Weights.Weight, n.Weights.Bias, n.Eps, sequentialSums: _md);
            else CpuOps.LayerNorm(src, dst, rows, dim, n.Weights.Weight, n.Weights.Bias!, n.Eps, _md);
        }
        else CpuOps.RmsNorm(src, dst, rows, dim, n.Weights.Weight, n.Eps, _md);
        if (_md && y.Kind == TensorKind.Half) DeviceNumerics.RoundToHalf(dst[..len]);
    }

    public override void Linear(LinearWeight w, Tensor x, int rows, Tensor y, bool accumulate = false)
    {
        var l = (CpuLinear)w;
        var dst = Host(y).Span;
        l.Forward(Host(x).Span, rows, dst, accumulate, _md);
        if (_md && y.Kind == TensorKind.Half) DeviceNumerics.RoundToHalf(dst[..(rows * l.Out)]);
    }

    public override void Activation(ActivationFunction f, Tensor x) => CpuOps.Activation(f, Host(x).Span, _md);

    public override void ToHalf(Tensor source, Tensor destination)
    {
        var s = Host(source).Span;
        var d = Host(destination).Span;
        s.CopyTo(d);
        if (_md) DeviceNumerics.RoundToHalf(d[..s.Length]);
    }

    public override void Add(Tensor x, Tensor y)
    {
        var a = Host(x).Span;
        TensorPrimitives.Add(a, Host(y).Span[..a.Length], a);
    }

    public override void SiluMul(Tensor gateUp, Tensor destination, int rows, int inter)
    {
        var gu = Host(gateUp).Span;
        var d = Host(destination).Span;
        for (int r = 0; r < rows; r++)
        {
            var g = gu.Slice(r * 2 * inter, inter);
            var u = gu.Slice(r * 2 * inter + inter, inter);
            var o = d.Slice(r * inter, inter);
            for (int i = 0; i < inter; i++)
            {
                float v = g[i];
                o[i] = v / (1f + MathF.Exp(-v)) * u[i];
            }
        }
        if (_md) DeviceNumerics.RoundToHalf(d[..(rows * inter)]);
    }

    public override void SplitHeads(Tensor qkv, int rows, HeadLayout layout, RotaryTable? rope, Tensor? positions,
        Tensor? q32, Tensor? k32, Tensor q, Tensor? k, Tensor? v, KvLayer? cache)
    {
        var src = Host(qkv).Span;
        int qd = layout.QDim, kvd = layout.KvDim, width = layout.Width;
        var kDst = cache is not null ? Host(cache.Keys).Span : Host(k!).Span;
        var vDst = cache is not null ? Host(cache.Values).Span : Host(v!).Span;
        // q and k in fp32 first (where a policy reads them, or straight in their Half destination), RoPE on them, then the
        // Half copies: what the device's split kernel writes.
        var qf = q32 is not null ? Host(q32).Span : Host(q).Span;
        var kf = k32 is not null ? Host(k32).Span : kDst;
        for (int r = 0; r < rows; r++)
        {
            src.Slice(r * width, qd).CopyTo(qf.Slice(r * qd, qd));
            src.Slice(r * width + qd, kvd).CopyTo(kf.Slice(r * kvd, kvd));
            src.Slice(r * width + qd + kvd, kvd).CopyTo(vDst.Slice(r * kvd, kvd));
        }
        if (rope is not null)
        {
            var pos = Host(positions ?? throw new ArgumentNullException(nameof(positions))).Ints;
            ((CpuRotary)rope).Apply(qf[..(rows * qd)], rows, layout.Heads, pos);
            ((CpuRotary)rope).Apply(kf[..(rows * kvd)], rows, layout.KvHeads, pos);
        }
        var qh = Host(q).Span;
        if (q32 is not null) qf[..(rows * qd)].CopyTo(qh);
        if (k32 is not null) kf[..(rows * kvd)].CopyTo(kDst);
        if (_md)
        {
            DeviceNumerics.RoundToHalf(qh[..(rows * qd)]);
            DeviceNumerics.RoundToHalf(kDst[..(rows * kvd)]);
            DeviceNumerics.RoundToHalf(vDst[..(rows * kvd)]);
        }
        if (cache is CpuKvLayer c)
        {
            c.Count = rows;
            if (rows > 0 && positions is not null)
            {
                var pos = Host(positions).Ints;
                int components = rope?.Components ?? 1, last = int.MinValue;
                for (int comp = 0; comp < components; comp++) last = Math.Max(last, pos[comp * rows + rows - 1]);
                c.NextPosition = last + 1;
            }
            else c.NextPosition = rows;
        }
    }

    public override void Attention(Tensor q, Tensor k, Tensor v, Tensor output, AttentionShape shape, int causalOffset, Workspace work)
    {
        int nq = shape.Nq, nk = shape.Nk;
        if (causalOffset >= 0 && causalOffset != nk - nq)
            throw new NotSupportedException($"The CPU attention is causal with offset nk - nq ({nk - nq}) only, not {causalOffset}.");
        int qd = shape.QHeads * shape.HeadDim, kvd = shape.KvHeads * shape.HeadDim;
        Cpu.Attention.MultiHead(Host(q).Span[..(nq * qd)], Host(k).Span[..(nk * kvd)], Host(v).Span[..(nk * kvd)], Host(output).Span[..(nq * qd)],
            nq, nk, shape.QHeads, shape.KvHeads, shape.HeadDim, causal: causalOffset >= 0, _md);
    }

    public override void AttentionWindow(Tensor q32, Tensor k32, Tensor result, AttentionShape shape, WindowShape window)
    {
        var rows = Enumerable.Range(window.RowStart, window.RowCount).ToArray();
        var probs = Cpu.Attention.Rows(Host(q32).Span, Host(k32).Span, shape.Nq, shape.Nk, shape.QHeads, shape.KvHeads, shape.HeadDim, rows,
            causal: shape.Causal != 0, firstKey: window.ColStart);
        int full = shape.Nk - window.ColStart, cols = window.ColCount;
        var dst = Host(result).Span;
        for (int h = 0; h < shape.QHeads; h++)
            for (int r = 0; r < rows.Length; r++)
                probs.AsSpan((h * rows.Length + r) * full, cols).CopyTo(dst.Slice((h * rows.Length + r) * cols, cols));
    }

    public override void SegmentAttention(Tensor q, Tensor k, Tensor v, Tensor output, int heads, int headDim, RowSegments segments, Workspace work)
    {
        long length = (long)segments.Rows * heads * headDim;
        var o = Host(output).Span[..(int)length];
        SegmentOps.Attend(Host(q).Span[..(int)length], Host(k).Span[..(int)length], Host(v).Span[..(int)length], o, heads, headDim, segments.Offsets, _md);
    }

    public override void ReceivedAttention(Tensor q32, Tensor k32, int heads, int headDim, RowSegments segments, int groupRows, Tensor result, Workspace work)
    {
        SegmentOps.CheckGroups(segments, groupRows);
        int rows = segments.Rows, groups = rows / groupRows;
        var q = Host(q32).Span;
        var k = Host(k32).Span;
        var dst = Host(result).Span[..groups];
        if (_md)
        {
            SegmentOps.ReceivedMatchDevice(q, k, heads, headDim, segments.Offsets, groupRows, dst);
            return;
        }
        var perRow = new float[rows];
        SegmentOps.Received(q[..(rows * heads * headDim)], k[..(rows * heads * headDim)], heads, headDim, segments.Offsets, perRow);
        for (int g = 0; g < groups; g++)
        {
            float sum = 0;
            for (int c = 0; c < groupRows; c++) sum += perRow[g * groupRows + c];
            dst[g] = sum;
        }
    }

    public override void GatherRows(Tensor source, Tensor index, int rows, int width, Tensor destination)
    {
        var src = Host(source).Span;
        var idx = Host(index).Ints;
        var dst = Host(destination).Span;
        int available = src.Length / Math.Max(1, width);
        for (int r = 0; r < rows; r++)
        {
            int s = idx[r];
            if ((uint)s >= (uint)available) throw new ArgumentOutOfRangeException(nameof(index), s, $"Row index {s} (entry {r}) is outside the source's {available} rows.");
            src.Slice(s * width, width).CopyTo(dst.Slice(r * width, width));
        }
    }

    public override void Embed(EmbeddingTable table, Tensor ids, int count, Tensor destination)
    {
        var t = (CpuEmbedding)table;
        var idv = Host(ids).Ints;
        var dst = Host(destination).Span;
        int h = t.Width;
        for (int i = 0; i < count; i++)
        {
            int id = idv[i];
            if ((uint)id >= (uint)t.Rows)
                throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary (size {t.Rows}).");
            t.Data.CopyTo(id * h, dst.Slice(i * h, h));
        }
    }

    public override void DecodeAttention(Tensor qkv, HeadLayout layout, RotaryTable rope, KvLayer cache, Tensor q, Tensor output, Workspace work)
    {
        var c = (CpuKvLayer)cache;
        if (c.Count >= c.Capacity) throw new InvalidOperationException($"A KV cache layer is full ({c.Capacity} tokens).");
        var src = Host(qkv).Span;
        int qd = layout.QDim, kvd = layout.KvDim;
        var qh = Host(q).Span[..qd];
        var keys = Host(c.Keys).Span;
        var values = Host(c.Values).Span;
        var k = keys.Slice(c.Count * kvd, kvd);
        var v = values.Slice(c.Count * kvd, kvd);
        src[..qd].CopyTo(qh);
        src.Slice(qd, kvd).CopyTo(k);
        src.Slice(qd + kvd, kvd).CopyTo(v);
        // A decode token has one position in every component (M-RoPE's text positions).
        Span<int> pos = stackalloc int[rope.Components];
        pos.Fill(c.NextPosition);
        ((CpuRotary)rope).Apply(qh, 1, layout.Heads, pos);
        ((CpuRotary)rope).Apply(k, 1, layout.KvHeads, pos);
        if (_md) { DeviceNumerics.RoundToHalf(qh); DeviceNumerics.RoundToHalf(k); DeviceNumerics.RoundToHalf(v); }
        int n = c.Count + 1;
        Cpu.Attention.MultiHead(qh, keys[..(n * kvd)], values[..(n * kvd)], Host(output).Span[..qd], 1, n, layout.Heads, layout.KvHeads, layout.HeadDim, causal: false, _md);
    }

    public override void ArgMax(Tensor x, int rows, int cols, Tensor result)
    {
        var src = Host(x).Span;
        var dst = Host(result).Ints;
        for (int r = 0; r < rows; r++) dst[r] = TensorPrimitives.IndexOfMax<float>(src.Slice(r * cols, cols));
    }

    public override VisionFeatures KeepVision(Tensor features, Tensor? clsAttention, Tensor? patchKeys, int tokens, int hidden, int heads, int patches)
    {
        var f = Host(features).Span.ToArray();
        return new()
        {
            Features = f,
            FeaturesTensor = HostTensor.Of(f),
            Tokens = tokens,
            Hidden = hidden,
            ClsAttention = clsAttention is null ? null : Host(clsAttention).Span.ToArray(),
            PatchKeys = patchKeys is null ? null : Host(patchKeys).Span.ToArray(),
            Heads = heads,
            Patches = patches,
            MatchDevice = _md,
        };
    }

    public override BuiltSequence BuildSequence(EmbeddingTable table, Tensor? imageRows, ReadOnlySpan<int> source, int[]? visual, Tensor? imageVisual,
        PositionIds? positions, OriginalPositionRun? originalPositions = null)
    {
        var t = (CpuEmbedding)table;
        int n = source.Length, h = t.Width;
        var hidden = new float[(long)n * h];
        var images = imageRows is null ? default : Host(imageRows).Span;
        var imageVis = imageVisual is null ? default : Host(imageVisual).Ints;
        var vis = new int[n];
        for (int r = 0; r < n; r++)
        {
            int s = source[r];
            var dst = hidden.AsSpan(r * h, h);
            if (s >= 0)
            {
                if ((uint)s >= (uint)t.Rows) throw new ArgumentOutOfRangeException(nameof(source), $"Token id {s} is outside the vocabulary (size {t.Rows}).");
                t.Data.CopyTo(s * h, dst);
                vis[r] = SequenceState.TextRow;
            }
            else
            {
                images.Slice((-s - 1) * h, h).CopyTo(dst);
                vis[r] = visual?[r] ?? (imageVisual is not null ? imageVis[-s - 1] : -s - 1);
            }
        }
        if (originalPositions is not null) throw new NotSupportedException("The CPU builds positions from visual indices on the host.");
        var pos = positions ?? PositionIds.Sequential(n);
        return new BuiltSequence(HostTensor.Of(hidden), HostTensor.OfInts(pos.Values.ToArray()), HostTensor.OfInts(vis), n) { LastPosition = n == 0 ? -1 : pos.MaxAt(n - 1) };
    }

    public override DecoderSession StartSession(IDecoderWeights weights, DecoderShape shape, int extraCapacity)
        => new CpuDecoderSession(this, weights, shape, extraCapacity);

    public override void Dispose() => Memory.Dispose();
}

/// <summary>A CPU tensor: a managed array, an unmanaged block from the pool, or ints; a view shares its memory.</summary>
internal sealed class HostTensor : Tensor
{
    private readonly float[]? _array;
    private readonly NativeFloats? _native;
    private readonly int[]? _ints;
    private readonly int _start, _length;
    private readonly TensorKind _kind;
    private readonly bool _owns;

    private HostTensor(float[]? array, NativeFloats? native, int[]? ints, int start, int length, TensorKind kind, bool owns)
    {
        _array = array; _native = native; _ints = ints; _start = start; _length = length; _kind = kind; _owns = owns;
    }

    /// <summary>A managed array's values as a tensor (nothing copied).</summary>
    public static HostTensor Of(float[] values, TensorKind kind = TensorKind.Float) => new(values, null, null, 0, values.Length, kind, false);

    /// <summary>The first <paramref name="length"/> values of a managed array.</summary>
    public static HostTensor Of(float[] values, int length, TensorKind kind = TensorKind.Float) => new(values, null, null, 0, length, kind, false);

    public static HostTensor OfInts(int[] values) => new(null, null, values, 0, values.Length, TensorKind.Int, false);

    /// <summary>A pooled block this tensor gives back when disposed.</summary>
    public static HostTensor Owning(NativeFloats block, TensorKind kind) => new(null, block, null, 0, block.Length, kind, true);

    public override long Length => _length;
    public override TensorKind Kind => _kind;

    public Span<float> Span => _array is not null ? _array.AsSpan(_start, _length)
        : _native is not null ? _native.Span.Slice(_start, _length)
        : throw new InvalidOperationException("An integer tensor has no float values.");

    public Span<int> Ints => _ints is not null ? _ints.AsSpan(_start, _length) : throw new InvalidOperationException("A float tensor has no integer values.");

    /// <summary>The managed array behind this tensor when it is one and starts at 0 (a layer view keeps it), else null.</summary>
    public float[]? Array => _array is not null && _start == 0 && _length == _array.Length ? _array : null;

    public override Tensor Slice(long start, long length)
    {
        if (start < 0 || length < 0 || start + length > _length)
            throw new ArgumentOutOfRangeException(nameof(start), $"Slice [{start}, {start + length}) of a {_length}-value tensor.");
        return new HostTensor(_array, _native, _ints, _start + (int)start, (int)length, _kind, false);
    }

    public override void Dispose()
    {
        if (_owns) _native!.Dispose();
    }
}

/// <summary>
/// A linear layer on the CPU: one or more stacked parts (q|k|v, gate|up) in the checkpoint's format, each computed into
/// its own columns of the output; a bias per part.
/// </summary>
internal sealed class CpuLinear : LinearWeight
{
    public CpuLinear((WeightData Weight, float[]? Bias, int Out)[] parts, int input)
        : base(input, parts.Sum(p => p.Out), parts.Length > 0 && parts[0].Bias is not null)
    {
        Parts = parts;
    }

    public (WeightData Weight, float[]? Bias, int Out)[] Parts { get; }

    /// <summary>
    /// y[rows, Out] (+)= x[rows, In]·Wᵀ + b. With <paramref name="matchDevice"/> (see <see cref="DeviceNumerics"/>) an
    /// fp16 weight always goes through the tiled kernel, and a bias is added after accumulating, (y + x·Wᵀ) + b, as the
    /// device does; the GEMM's own order is (x·Wᵀ + b) + y.
    /// </summary>
    public void Forward(ReadOnlySpan<float> x, int rows, Span<float> y, bool accumulate, bool matchDevice)
    {
        int col = 0, ld = Out;
        foreach (var (w, bias, output) in Parts)
        {
            var gemmBias = matchDevice && accumulate ? null : bias;
            var dst = y[col..];
            switch (w.Type)
            {
                case DType.F16:
                    Gemm.MatMulTransBCore(x, In, rows, In, w.F16.Span, In, output, dst, ld, gemmBias, accumulate, Gemm.DetectedIsa, Gemm.MaxThreads, tiled: matchDevice);
                    break;
                case DType.BF16:
                    Gemm.MatMulTransBBFloat16Core(x, In, rows, In, w.BFloat16.Span, In, output, dst, ld, gemmBias, accumulate, Gemm.DetectedIsa, Gemm.MaxThreads);
                    break;
                default:
                    Gemm.MatMulTransBCore(x, In, rows, In, w.F32.Span, In, output, dst, ld, gemmBias, accumulate, Gemm.DetectedIsa, Gemm.MaxThreads);
                    break;
            }
            if (gemmBias is null && bias is not null)
                for (int r = 0; r < rows; r++) TensorPrimitives.Add(dst.Slice(r * ld, output), bias, dst.Slice(r * ld, output));
            col += output;
        }
    }

    /// <summary>Bytes of the weights as stored.</summary>
    public long Bytes => Parts.Sum(p => p.Weight.Bytes);
}

/// <summary>A norm's weight (and bias for LayerNorm) as host arrays.</summary>
internal sealed record NormWeights(float[] Weight, float[]? Bias, float Eps);

/// <summary>A norm's weights on the CPU.</summary>
internal sealed class CpuNorm(NormWeights weights, NormKind kind) : NormWeight(weights.Weight.Length, weights.Eps, kind)
{
    public NormWeights Weights { get; } = weights;
}

/// <summary>A token embedding on the CPU, in the checkpoint's format.</summary>
internal sealed class CpuEmbedding(WeightData data, int rows, int width) : EmbeddingTable(rows, width)
{
    public WeightData Data { get; } = data;
}

/// <summary>RoPE on the CPU: the angles computed per position from the inverse frequencies.</summary>
internal sealed class CpuRotary(float[] inverseFrequencies, int maxPositions, int[]? sections)
    : RotaryTable(inverseFrequencies.Length * 2, maxPositions, sections)
{
    public float[] InverseFrequencies { get; } = inverseFrequencies;

    /// <summary>
    /// Rotate-half RoPE in place on <paramref name="rows"/> rows of <paramref name="heads"/> heads, at
    /// <paramref name="positions"/> (Int [components, rows]); with M-RoPE sections, frequency i turns by the position
    /// component of the section it falls in.
    /// </summary>
    public void Apply(Span<float> x, int rows, int heads, ReadOnlySpan<int> positions)
    {
        if (Sections is null)
        {
            CpuOps.ApplyRope(x, rows, heads, HeadDim, positions[..rows], InverseFrequencies);
            return;
        }
        int half = HeadDim / 2;
        Span<float> cos = stackalloc float[half];
        Span<float> sin = stackalloc float[half];
        Span<int> componentOf = stackalloc int[half];
        for (int s = 0, i = 0; s < Sections.Length; s++)
            for (int j = 0; j < Sections[s] && i < half; j++) componentOf[i++] = s;
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < half; i++)
            {
                float a = positions[componentOf[i] * rows + r] * InverseFrequencies[i];
                cos[i] = MathF.Cos(a);
                sin[i] = MathF.Sin(a);
            }
            var row = x.Slice(r * heads * HeadDim, heads * HeadDim);
            for (int h = 0; h < heads; h++)
            {
                var v = row.Slice(h * HeadDim, HeadDim);
                for (int i = 0; i < half; i++)
                {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cos[i] - x2 * sin[i];
                    v[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }
}

/// <summary>One layer's KV cache on the CPU: unmanaged blocks from the backend's pool.</summary>
internal sealed class CpuKvLayer(HostTensor keys, HostTensor values, int capacity, int kvDim) : KvLayer(capacity, kvDim), IDisposable
{
    public override Tensor Keys => keys;
    public override Tensor Values => values;

    /// <summary>Position id the next appended token gets (last position + 1).</summary>
    public int NextPosition { get; set; }

    public void Dispose()
    {
        keys.Dispose();
        values.Dispose();
    }
}
