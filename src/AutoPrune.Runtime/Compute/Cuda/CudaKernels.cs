using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>Shapes of an attention launch (passed to the kernel by value).</summary>
/// <param name="Nq">Query rows in this launch.</param>
/// <param name="Nk">Valid keys in the KV buffer (the cache length including the new rows).</param>
/// <param name="QHeads">Query heads.</param>
/// <param name="KvHeads">Key/value heads (GQA: QHeads is a multiple of KvHeads).</param>
/// <param name="HeadDim">Head dimension.</param>
/// <param name="Causal">1: query i sees keys 0..(Nk - Nq + i); 0: all Nk keys.</param>
/// <param name="Scale">Score scale, 1/sqrt(HeadDim).</param>
internal readonly record struct AttentionShape(int Nq, int Nk, int QHeads, int KvHeads, int HeadDim, int Causal, float Scale)
{
    public int QStride => QHeads * HeadDim;
    public int KvStride => KvHeads * HeadDim;

    public static AttentionShape Create(int nq, int nk, int qHeads, int kvHeads, int headDim, bool causal)
    {
        if (qHeads <= 0 || kvHeads <= 0 || qHeads % kvHeads != 0)
            throw new ArgumentException($"qHeads ({qHeads}) must be a positive multiple of kvHeads ({kvHeads}).");
        if (nq < 0 || nk < 0 || (causal && nq > nk))
            throw new ArgumentException($"Invalid attention sizes: nq {nq}, nk {nk}, causal {causal}.");
        return new AttentionShape(nq, nk, qHeads, kvHeads, headDim, causal ? 1 : 0, 1f / MathF.Sqrt(headDim));
    }
}

/// <summary>
/// ILGPU kernels for the non-GEMM operations of the decoder and vision tower (fp32 on the device in this first cut).
/// Every kernel is deliberately simple (one thread per row, per (head, query row) or per element) and mirrors the
/// arithmetic order of <see cref="Cpu.CpuOps"/> / <see cref="Cpu.Attention"/> so the CPU backend is the reference.
/// </summary>
/// <remarks>
/// Tested only on ILGPU's CPU accelerator. On a GPU they are untested and not tuned: the per-row kernels
/// (norms, softmax, argmax, attention) run one thread per row and will need block-level reductions / a tiled
/// (flash-style) attention to be fast. RoPE takes host-computed cos/sin tables, so no device trigonometry
/// (PTX sin/cos are approximate for large angles) is involved. In the PTX that ILGPU 1.5.3 emits (see PtxCompileTests),
/// XMath.Exp becomes ex2.approx.f32 (≈2 ulp, relative error growing with |x|; arguments here are ≤ 0 after max
/// subtraction or bounded activations), divisions div.rn / rcp.rn and square roots sqrt.rn.
/// </remarks>
internal static class CudaKernels
{
    // ---------------------------------------------------------------- kernels (device code)

    /// <summary>dst[r, :] = table[ids[r], :]; one thread per output element.</summary>
    internal static void EmbeddingGatherKernel(Index1D i, ArrayView<float> table, ArrayView<int> ids, ArrayView<float> dst, int dim)
    {
        long r = i / dim, c = i % dim;
        dst[i] = table[(long)ids[r] * dim + c];
    }

    /// <summary>Llama RMSNorm, one thread per row: dst = (x / sqrt(mean(x²) + eps)) * weight.</summary>
    internal static void RmsNormKernel(Index1D row, ArrayView<float> src, ArrayView<float> dst, ArrayView<float> weight, int dim, float eps)
    {
        long o = (long)row.X * dim;
        float ss = 0;
        for (int c = 0; c < dim; c++) { float v = src[o + c]; ss += v * v; }
        float inv = 1f / XMath.Sqrt(ss / dim + eps);
        for (int c = 0; c < dim; c++) dst[o + c] = src[o + c] * inv * weight[c];
    }

    /// <summary>LayerNorm, one thread per row (src may equal dst).</summary>
    internal static void LayerNormKernel(Index1D row, ArrayView<float> src, ArrayView<float> dst, ArrayView<float> weight, ArrayView<float> bias, int dim, float eps)
    {
        long o = (long)row.X * dim;
        float sum = 0;
        for (int c = 0; c < dim; c++) sum += src[o + c];
        float mean = sum / dim;
        float ss = 0;
        for (int c = 0; c < dim; c++) { float d = src[o + c] - mean; ss += d * d; }
        float inv = 1f / XMath.Sqrt(ss / dim + eps);
        for (int c = 0; c < dim; c++) dst[o + c] = (src[o + c] - mean) * inv * weight[c] + bias[c];
    }

    /// <summary>
    /// Rotate-half RoPE in place on x ([rows, heads*headDim]); one thread per (row, head, i &lt; headDim/2).
    /// cos/sin: [maxPositions, headDim/2] tables (<see cref="RopeTables"/>), positions: one id per row.
    /// </summary>
    internal static void RopeKernel(Index1D t, ArrayView<float> x, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, int heads, int headDim)
    {
        int half = headDim / 2;
        long perRow = (long)heads * half;
        long r = t / perRow;
        long rem = t % perRow;
        long h = rem / half, i = rem % half;
        long tab = (long)positions[r] * half + i;
        float c = cos[tab], s = sin[tab];
        long b = r * heads * headDim + h * headDim + i;
        float x1 = x[b], x2 = x[b + half];
        x[b] = x1 * c - x2 * s;
        x[b + half] = x2 * c + x1 * s;
    }

    /// <summary>CLIP quick GELU in place: x * sigmoid(1.702 x).</summary>
    internal static void QuickGeluKernel(Index1D i, ArrayView<float> x)
    {
        float v = x[i];
        x[i] = v / (1f + XMath.Exp(-1.702f * v));
    }

    /// <summary>
    /// Exact GELU in place, 0.5 x (1 + erf(x/√2)), with the same Chebyshev erfc fit as <see cref="Cpu.CpuOps.Erf"/>,
    /// evaluated in fp32 and in the erfc form so that 1 + erf(x) for negative x has no cancellation.
    /// </summary>
    internal static void GeluKernel(Index1D i, ArrayView<float> x)
    {
        float v = x[i];
        float z = XMath.Abs(v * 0.70710678118654752f);
        float t = 1f / (1f + 0.5f * z);
        float r = t * XMath.Exp(-z * z - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
            t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
            t * (-0.82215223f + t * 0.17087277f)))))))));
        // 1 + erf(y) = 2 - erfc(|y|) for y >= 0, erfc(|y|) for y < 0.
        float onePlusErf = v >= 0 ? 2f - r : r;
        x[i] = 0.5f * v * onePlusErf;
    }

    /// <summary>SiLU in place: x * sigmoid(x).</summary>
    internal static void SiluKernel(Index1D i, ArrayView<float> x)
    {
        float v = x[i];
        x[i] = v / (1f + XMath.Exp(-v));
    }

    /// <summary>gate = silu(gate) * up, in place in gate.</summary>
    internal static void SiluMulKernel(Index1D i, ArrayView<float> gate, ArrayView<float> up)
    {
        float g = gate[i];
        gate[i] = g / (1f + XMath.Exp(-g)) * up[i];
    }

    /// <summary>Numerically stable softmax over each row of x ([rows, cols]) in place; one thread per row.</summary>
    internal static void SoftmaxKernel(Index1D row, ArrayView<float> x, int cols)
    {
        long o = (long)row.X * cols;
        float max = float.NegativeInfinity;
        for (int c = 0; c < cols; c++) max = XMath.Max(max, x[o + c]);
        float sum = 0;
        for (int c = 0; c < cols; c++) { float e = XMath.Exp(x[o + c] - max); x[o + c] = e; sum += e; }
        float inv = 1f / sum;
        for (int c = 0; c < cols; c++) x[o + c] *= inv;
    }

    /// <summary>
    /// o = softmax(q kᵀ · scale) v with causal mask and GQA; one thread per (head, query row), three passes over the
    /// visible keys (max, sum, weighted sum of v written straight into o). q, o: [Nq, QHeads*HeadDim]; k, v: rows
    /// 0..Nk-1 of a [capacity, KvHeads*HeadDim] buffer.
    /// </summary>
    internal static void AttentionKernel(Index1D t, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> o, AttentionShape s)
    {
        int h = t / s.Nq, i = t % s.Nq;
        int kvh = h / (s.QHeads / s.KvHeads);
        int hd = s.HeadDim;
        long qo = (long)i * s.QStride + (long)h * hd;
        long kvo = (long)kvh * hd;
        int limit = s.Causal != 0 ? XMath.Min(s.Nk, s.Nk - s.Nq + i + 1) : s.Nk;
        float max = RowMaxScore(q, qo, k, kvo, s, limit);
        float inv = 1f / RowSumExp(q, qo, k, kvo, s, limit, max);
        for (int d = 0; d < hd; d++) o[qo + d] = 0f;
        for (int j = 0; j < limit; j++)
        {
            float p = XMath.Exp(Dot(q, qo, k, (long)j * s.KvStride + kvo, hd) * s.Scale - max) * inv;
            long vo = (long)j * s.KvStride + kvo;
            for (int d = 0; d < hd; d++) o[qo + d] += v[vo + d] * p;
        }
    }

    /// <summary>Largest scaled score q·k_j over the first <paramref name="limit"/> keys (softmax's shift).</summary>
    private static float RowMaxScore(ArrayView<float> q, long qo, ArrayView<float> k, long kvo, AttentionShape s, int limit)
    {
        float max = float.NegativeInfinity;
        for (int j = 0; j < limit; j++)
            max = XMath.Max(max, Dot(q, qo, k, (long)j * s.KvStride + kvo, s.HeadDim) * s.Scale);
        return max;
    }

    /// <summary>Softmax denominator: sum of exp(score - max) over the first <paramref name="limit"/> keys.</summary>
    private static float RowSumExp(ArrayView<float> q, long qo, ArrayView<float> k, long kvo, AttentionShape s, int limit, float max)
    {
        float sum = 0;
        for (int j = 0; j < limit; j++)
            sum += XMath.Exp(Dot(q, qo, k, (long)j * s.KvStride + kvo, s.HeadDim) * s.Scale - max);
        return sum;
    }

    /// <summary>
    /// Attention probabilities of chosen query rows (as <see cref="Cpu.Attention.Rows"/>): result
    /// [QHeads, rows.Length, Nk - firstKey], softmax over all visible keys, masked keys 0. One thread per (head, row).
    /// </summary>
    internal static void AttentionRowsKernel(Index1D t, ArrayView<float> q, ArrayView<float> k, ArrayView<int> rows, ArrayView<float> result, AttentionShape s, int firstKey)
    {
        int nRows = (int)rows.Length;
        int h = t / nRows, r = t % nRows;
        int i = rows[r];
        int kvh = h / (s.QHeads / s.KvHeads);
        int hd = s.HeadDim, cols = s.Nk - firstKey;
        long qo = (long)i * s.QStride + (long)h * hd;
        long kvo = (long)kvh * hd;
        int limit = s.Causal != 0 ? XMath.Min(s.Nk, s.Nk - s.Nq + i + 1) : s.Nk;
        float max = RowMaxScore(q, qo, k, kvo, s, limit);
        float inv = 1f / RowSumExp(q, qo, k, kvo, s, limit, max);
        long dst = (long)t.X * cols;
        for (int j = firstKey; j < s.Nk; j++)
            result[dst + j - firstKey] = j < limit ? XMath.Exp(Dot(q, qo, k, (long)j * s.KvStride + kvo, hd) * s.Scale - max) * inv : 0f;
    }

    /// <summary>dst[r, :] = src[keep[r], :] ([rows, rowLen]); dst must not overlap src.</summary>
    internal static void RowGatherKernel(Index1D i, ArrayView<float> src, ArrayView<int> keep, ArrayView<float> dst, int rowLen)
    {
        long r = i / rowLen, c = i % rowLen;
        dst[i] = src[(long)keep[r] * rowLen + c];
    }

    /// <summary>cache[startRow + r, :] = src[r, :] (rows of length rowLen).</summary>
    internal static void KvAppendKernel(Index1D i, ArrayView<float> cache, ArrayView<float> src, int startRow, int rowLen)
    {
        cache[(long)startRow * rowLen + i] = src[i];
    }

    /// <summary>result[r] = index of the first maximum of row r of x ([rows, cols]); one thread per row.</summary>
    internal static void ArgMaxKernel(Index1D row, ArrayView<float> x, ArrayView<int> result, int cols)
    {
        long o = (long)row.X * cols;
        float best = x[o];
        int bi = 0;
        for (int c = 1; c < cols; c++)
        {
            float v = x[o + c];
            if (v > best) { best = v; bi = c; }
        }
        result[row] = bi;
    }

    /// <summary>
    /// fp32 → IEEE fp16 bits with round-to-nearest-even (as System.Half), done with integer operations so the result
    /// is identical on every accelerator (cuBLAS GEMM inputs are fp16).
    /// </summary>
    internal static void ToHalfKernel(Index1D i, ArrayView<float> src, ArrayView<ushort> dst) => dst[i] = FloatToHalfBits(src[i]);

    /// <summary>IEEE fp16 bits → fp32 (exact).</summary>
    internal static void ToFloatKernel(Index1D i, ArrayView<ushort> src, ArrayView<float> dst) => dst[i] = HalfBitsToFloat(src[i]);

    internal static ushort FloatToHalfBits(float x)
    {
        uint f = Interop.FloatAsInt(x);
        uint sign = (f >> 16) & 0x8000u;
        uint abs = f & 0x7FFFFFFFu;
        uint h;
        if (abs >= 0x7F800000u) h = abs > 0x7F800000u ? 0x7E00u : 0x7C00u;        // NaN, ±inf
        else if (abs >= 0x477FF000u) h = 0x7C00u;                                    // ≥ 65520 rounds to inf
        else if (abs < 0x38800000u)                                                  // below 2^-14: half subnormal or 0
        {
            uint e = abs >> 23;
            if (e < 102u) h = 0;
            else
            {
                uint m = (abs & 0x7FFFFFu) | 0x800000u;
                int shift = 126 - (int)e;                                            // 14..24
                uint h0 = m >> shift;
                uint rem = m & ((1u << shift) - 1u);
                uint halfway = 1u << (shift - 1);
                if (rem > halfway || (rem == halfway && (h0 & 1u) != 0)) h0++;
                h = h0;
            }
        }
        else
        {
            uint v = abs - 0x38000000u;                                              // rebias exponent 127 → 15
            uint h0 = v >> 13;
            uint rem = v & 0x1FFFu;
            if (rem > 0x1000u || (rem == 0x1000u && (h0 & 1u) != 0)) h0++;
            h = h0;
        }
        return (ushort)(sign | h);
    }

    internal static float HalfBitsToFloat(ushort bits)
    {
        uint hb = bits;
        uint s = (hb & 0x8000u) << 16;
        uint e = (hb >> 10) & 0x1Fu;
        uint m = hb & 0x3FFu;
        if (e == 0)
        {
            float v = m * 5.9604644775390625e-8f;                                    // m · 2^-24, exact
            return s != 0 ? -v : v;
        }
        if (e == 31) return Interop.IntAsFloat(s | 0x7F800000u | (m << 13));
        return Interop.IntAsFloat(s | ((e + 112u) << 23) | (m << 13));
    }

    private static float Dot(ArrayView<float> a, long ao, ArrayView<float> b, long bo, int n)
    {
        float s = 0;
        for (int d = 0; d < n; d++) s += a[ao + d] * b[bo + d];
        return s;
    }

    // ---------------------------------------------------------------- host helpers

    /// <summary>
    /// cos/sin tables [maxPositions, headDim/2] for <see cref="RopeKernel"/>, computed on the host exactly as
    /// <see cref="Cpu.CpuOps.ApplyRope"/> does (fp32 angle = position * invFreq).
    /// </summary>
    public static (float[] Cos, float[] Sin) RopeTables(ReadOnlySpan<float> invFreq, int maxPositions)
    {
        int half = invFreq.Length;
        var cos = new float[maxPositions * half];
        var sin = new float[maxPositions * half];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < half; i++)
            {
                float a = (float)p * invFreq[i];
                cos[p * half + i] = MathF.Cos(a);
                sin[p * half + i] = MathF.Sin(a);
            }
        return (cos, sin);
    }
}

/// <summary>
/// The kernels of <see cref="CudaKernels"/> loaded (compiled) once for one accelerator, with launch helpers that
/// compute the extents. Launches are asynchronous on the accelerator's default stream; call
/// <c>Accelerator.Synchronize()</c> before reading results on the host.
/// </summary>
internal sealed class CudaOps
{
    private readonly Accelerator _acc;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>> _embedding;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>> _rms;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>> _layerNorm;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>> _rope;
    private readonly Lazy<Action<Index1D, ArrayView<float>>> _quickGelu, _gelu, _silu;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>>> _siluMul;
    private readonly Lazy<Action<Index1D, ArrayView<float>, int>> _softmax;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>> _attention;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionShape, int>> _attentionRows;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>> _rowGather;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, int, int>> _kvAppend;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<int>, int>> _argMax;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<ushort>>> _toHalf;
    private readonly Lazy<Action<Index1D, ArrayView<ushort>, ArrayView<float>>> _toFloat;

    public CudaOps(Accelerator accelerator)
    {
        _acc = accelerator;
        _embedding = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>(CudaKernels.EmbeddingGatherKernel));
        _rms = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(CudaKernels.RmsNormKernel));
        _layerNorm = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(CudaKernels.LayerNormKernel));
        _rope = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>(CudaKernels.RopeKernel));
        _quickGelu = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(CudaKernels.QuickGeluKernel));
        _gelu = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(CudaKernels.GeluKernel));
        _silu = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(CudaKernels.SiluKernel));
        _siluMul = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(CudaKernels.SiluMulKernel));
        _softmax = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, int>(CudaKernels.SoftmaxKernel));
        _attention = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(CudaKernels.AttentionKernel));
        _attentionRows = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionShape, int>(CudaKernels.AttentionRowsKernel));
        _rowGather = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>(CudaKernels.RowGatherKernel));
        _kvAppend = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int>(CudaKernels.KvAppendKernel));
        _argMax = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, int>(CudaKernels.ArgMaxKernel));
        _toHalf = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(CudaKernels.ToHalfKernel));
        _toFloat = new(() => _acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<float>>(CudaKernels.ToFloatKernel));
    }

    public Accelerator Accelerator => _acc;

    public void EmbeddingGather(ArrayView<float> table, ArrayView<int> ids, ArrayView<float> dst, int dim)
        => Launch(_embedding.Value, ids.Length * dim, table, ids, dst, dim);

    public void RmsNorm(ArrayView<float> src, ArrayView<float> dst, int rows, int dim, ArrayView<float> weight, float eps)
        => Launch(_rms.Value, rows, src, dst, weight, dim, eps);

    public void LayerNorm(ArrayView<float> src, ArrayView<float> dst, int rows, int dim, ArrayView<float> weight, ArrayView<float> bias, float eps)
        => Launch(_layerNorm.Value, rows, src, dst, weight, bias, dim, eps);

    public void Rope(ArrayView<float> x, int rows, int heads, int headDim, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin)
        => Launch(_rope.Value, (long)rows * heads * (headDim / 2), x, positions, cos, sin, heads, headDim);

    public void QuickGelu(ArrayView<float> x) => Launch(_quickGelu.Value, x.Length, x);
    public void Gelu(ArrayView<float> x) => Launch(_gelu.Value, x.Length, x);
    public void Silu(ArrayView<float> x) => Launch(_silu.Value, x.Length, x);
    public void SiluMul(ArrayView<float> gate, ArrayView<float> up) => Launch(_siluMul.Value, gate.Length, gate, up);

    /// <summary>The activations the CPU backend supports through the GPU kernels; others throw.</summary>
    public void Activation(string name, ArrayView<float> x)
    {
        switch (name)
        {
            case "quick_gelu": QuickGelu(x); break;
            case "gelu": Gelu(x); break;
            case "silu": Silu(x); break;
            default: throw new NotSupportedException($"Activation '{name}' has no CUDA kernel yet (supported: quick_gelu, gelu, silu).");
        }
    }

    public void Softmax(ArrayView<float> x, int rows, int cols) => Launch(_softmax.Value, rows, x, cols);

    /// <summary>Attention of a block of queries against rows 0..Nk-1 of the K/V buffers (see <see cref="CudaKernels.AttentionKernel"/>).</summary>
    public void Attention(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> o, AttentionShape shape)
    {
        if (shape.Nq == 0) return;
        Launch(_attention.Value, (long)shape.QHeads * shape.Nq, q, k, v, o, shape);
    }

    /// <summary>Probabilities of query rows <paramref name="rows"/> into result ([QHeads, rows, Nk - firstKey]).</summary>
    public void AttentionRows(ArrayView<float> q, ArrayView<float> k, ArrayView<int> rows, ArrayView<float> result, AttentionShape shape, int firstKey = 0)
    {
        if (rows.Length == 0) return;
        Launch(_attentionRows.Value, shape.QHeads * rows.Length, q, k, rows, result, shape, firstKey);
    }

    /// <summary>dst[r] = src[keep[r]] for rows of rowLen (pruning hidden states, compacting a KV cache into a second buffer).</summary>
    public void RowGather(ArrayView<float> src, ArrayView<int> keep, ArrayView<float> dst, int rowLen)
        => Launch(_rowGather.Value, keep.Length * rowLen, src, keep, dst, rowLen);

    /// <summary>Writes the rows of src into cache from row <paramref name="startRow"/> on.</summary>
    public void KvAppend(ArrayView<float> cache, ArrayView<float> src, int startRow, int rowLen)
    {
        if ((startRow + src.Length / rowLen) * (long)rowLen > cache.Length)
            throw new ArgumentException($"KV append of {src.Length / rowLen} rows at row {startRow} overflows a cache of {cache.Length / rowLen} rows.");
        Launch(_kvAppend.Value, src.Length, cache, src, startRow, rowLen);
    }

    public void ArgMax(ArrayView<float> x, int rows, int cols, ArrayView<int> result) => Launch(_argMax.Value, rows, x, result, cols);

    public void ToHalf(ArrayView<float> src, ArrayView<ushort> dst) => Launch(_toHalf.Value, src.Length, src, dst);
    public void ToFloat(ArrayView<ushort> src, ArrayView<float> dst) => Launch(_toFloat.Value, src.Length, src, dst);

    private static void Launch<T1>(Action<Index1D, T1> k, long n, T1 a) where T1 : struct
    { if (n > 0) k(Extent(n), a); }
    private static void Launch<T1, T2>(Action<Index1D, T1, T2> k, long n, T1 a, T2 b) where T1 : struct where T2 : struct
    { if (n > 0) k(Extent(n), a, b); }
    private static void Launch<T1, T2, T3>(Action<Index1D, T1, T2, T3> k, long n, T1 a, T2 b, T3 c) where T1 : struct where T2 : struct where T3 : struct
    { if (n > 0) k(Extent(n), a, b, c); }
    private static void Launch<T1, T2, T3, T4>(Action<Index1D, T1, T2, T3, T4> k, long n, T1 a, T2 b, T3 c, T4 d)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    { if (n > 0) k(Extent(n), a, b, c, d); }
    private static void Launch<T1, T2, T3, T4, T5>(Action<Index1D, T1, T2, T3, T4, T5> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    { if (n > 0) k(Extent(n), a, b, c, d, e); }
    private static void Launch<T1, T2, T3, T4, T5, T6>(Action<Index1D, T1, T2, T3, T4, T5, T6> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e, T6 f)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    { if (n > 0) k(Extent(n), a, b, c, d, e, f); }

    private static Index1D Extent(long n)
    {
        if (n > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(n), n, "Launch larger than 2^31 threads.");
        return new Index1D((int)n);
    }
}
