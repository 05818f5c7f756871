using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Grid-stride range of an element-wise kernel: thread t handles elements t, t + Stride, ... below Count. On a GPU
/// Stride is the launch size (up to a few million threads, so usually one element each); on ILGPU's CPU accelerator,
/// where every emulated thread is costly, a few hundred threads each take a long run of elements.
/// </summary>
internal readonly record struct ElementRange(long Count, int Stride);

/// <summary>Layout of a fused [rows, (Heads + 2·KvHeads)·HeadDim] q|k|v projection for <see cref="CudaKernels.QkvSplitRopeKernel"/>.</summary>
/// <param name="Signals">1: also write q and k in fp32 (a pruning policy reads this layer's attention); 0: fp16 only.</param>
/// <param name="StateSlot">&gt;= 0: a prefill layer; its KV cache length (<paramref name="CacheCount"/>) and next position go to that slot of the decode state.</param>
/// <param name="Components">Position components per row (positions are [Components, rows]); 1 for one position per row.</param>
/// <param name="Bound1">M-RoPE: rotary frequencies i ≥ Bound1 turn by component 1 (Bound2: 2, Bound3: 3); see <see cref="WithSections"/>.</param>
internal readonly record struct QkvShape(int Heads, int KvHeads, int HeadDim, int Rope, int Signals = 1, int StateSlot = -1, int CacheCount = 0,
    int Components = 1, int Bound1 = int.MaxValue, int Bound2 = int.MaxValue, int Bound3 = int.MaxValue)
{
    /// <summary>Most M-RoPE position components the split kernel takes.</summary>
    public const int MaxComponents = 4;

    /// <summary>
    /// This shape with M-RoPE <paramref name="sections"/> (frequencies per position component, as
    /// <see cref="RotaryTable.Sections"/>; null: one component): frequency i turns by the component whose section holds it.
    /// </summary>
    public QkvShape WithSections(int[]? sections)
    {
        if (sections is null) return this with { Components = 1, Bound1 = int.MaxValue, Bound2 = int.MaxValue, Bound3 = int.MaxValue };
        if (sections.Length < 1 || sections.Length > MaxComponents)
            throw new ArgumentException($"M-RoPE with {sections.Length} position components: the GPU split kernel takes 1 to {MaxComponents}.", nameof(sections));
        Span<int> bounds = [int.MaxValue, int.MaxValue, int.MaxValue];
        for (int c = 1, at = 0; c < sections.Length; c++) bounds[c - 1] = at += sections[c - 1];
        return this with { Components = sections.Length, Bound1 = bounds[0], Bound2 = bounds[1], Bound3 = bounds[2] };
    }

    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public int Width => QDim + 2 * KvDim;
    /// <summary>Rotation pairs (or value pairs) per row: every head contributes HeadDim / 2.</summary>
    public int PairsPerRow => (Heads + 2 * KvHeads) * (HeadDim / 2);
}

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
/// The first-cut kernels are deliberately simple (one thread per row, per (head, query row) or per element) and mirror
/// the arithmetic order of <see cref="Cpu.CpuOps"/> / <see cref="Cpu.Attention"/> so the CPU backend is the reference.
/// The kernels of the fp16 decoder path (RmsNormToHalf, LayerNormToHalf, ScaledMaskedSoftmaxToHalf, ArgMaxRows) run
/// one group per row with shared-memory reductions instead; their summation order differs from the CPU's (a tree over
/// the group), which is far below the fp16 rounding of their outputs.
/// </summary>
/// <remarks>
/// Tested only on ILGPU's CPU accelerator. On a GPU they are untested and not tuned: the first-cut per-row kernels
/// (norms, softmax, argmax, attention) run one thread per row and will need block-level reductions / a tiled
/// (flash-style) attention to be fast. RoPE takes host-computed cos/sin tables, so no device trigonometry
/// (PTX sin/cos are approximate for large angles) is involved. In the PTX that ILGPU 1.5.3 emits (see PtxCompileTests),
/// XMath.Exp becomes ex2.approx.f32 (≈2 ulp, relative error growing with |x|; arguments here are ≤ 0 after max
/// subtraction or bounded activations), divisions div.rn / rcp.rn and square roots sqrt.rn.
/// </remarks>
internal static class CudaKernels
{
    // ---------------------------------------------------------------- kernels (device code)

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

    /// <summary>CLIP quick GELU in place: x * sigmoid(1.702 x).</summary>
    internal static void QuickGeluKernel(Index1D t, ArrayView<float> x, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride)
        {
            float v = x[i];
            x[i] = v / (1f + XMath.Exp(-1.702f * v));
        }
    }

    /// <summary>
    /// Exact GELU in place, 0.5 x (1 + erf(x/√2)), with the same Chebyshev erfc fit as <see cref="Cpu.CpuOps.Erf"/>,
    /// evaluated in fp32 and in the erfc form so that 1 + erf(x) for negative x has no cancellation.
    /// </summary>
    internal static void GeluKernel(Index1D t0, ArrayView<float> x, ElementRange range)
    {
        for (long i = t0; i < range.Count; i += range.Stride) x[i] = Gelu(x[i]);
    }

    /// <summary>One value of <see cref="GeluKernel"/> (also called on the host by <see cref="Cpu.DeviceNumerics.Gelu"/>).</summary>
    internal static float Gelu(float v)
    {
        float z = XMath.Abs(v * 0.70710678118654752f);
        float t = 1f / (1f + 0.5f * z);
        float r = t * XMath.Exp(-z * z - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
            t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
            t * (-0.82215223f + t * 0.17087277f)))))))));
        // 1 + erf(y) = 2 - erfc(|y|) for y >= 0, erfc(|y|) for y < 0.
        float onePlusErf = v >= 0 ? 2f - r : r;
        return 0.5f * v * onePlusErf;
    }

    /// <summary>
    /// Where the (head, row) pair number <paramref name="t"/> = h·rows.Length + r of an attention-rows launch reads and
    /// writes: its query offset, its KV head's offset within a key row, the number of keys it sees, and the start of its
    /// output row in [QHeads, rows, Nk - firstKey].
    /// </summary>
    private static (long Qo, long Kvo, int Limit, long Dst) AttentionRowAt(int t, ArrayView<int> rows, AttentionShape s, int firstKey)
    {
        int nRows = (int)rows.Length;
        int h = t / nRows, r = t % nRows;
        int i = rows[r];
        int kvh = h / (s.QHeads / s.KvHeads);
        long qo = (long)i * s.QStride + (long)h * s.HeadDim;
        long kvo = (long)kvh * s.HeadDim;
        int limit = s.Causal != 0 ? XMath.Min(s.Nk, s.Nk - s.Nq + i + 1) : s.Nk;
        return (qo, kvo, limit, (long)t * (s.Nk - firstKey));
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

    // ---------------------------------------------------------------- element-wise kernels of the fp16 GPU decoder

    /// <summary>x[r, c] += bias[c] for x [rows, cols]; one thread per element.</summary>
    internal static void AddBiasKernel(Index1D t, ArrayView<float> x, ArrayView<float> bias, int cols, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride)
        {
            x[i] += bias[i % cols];
        }
    }

    /// <summary>x[i] += y[i] (residual add); one thread per element.</summary>
    internal static void AddKernel(Index1D t, ArrayView<float> x, ArrayView<float> y, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride)
        {
            x[i] += y[i];
        }
    }

    /// <summary>
    /// Splits a fused q|k|v projection row by row ([rows, Width]) in one pass: applies rotate-half RoPE (when
    /// s.Rope != 0) to q and k at each row's position, writes q and k in fp32 (for pruning signals) and q, k, v in fp16
    /// (q for the score GEMM, k and v into the KV cache views, which start at the cache row the first row goes to).
    /// Positions are [Components, rows]: frequency i turns by the component of its M-RoPE section (s.Bound1..3), so one
    /// component reads positions[r]. A prefill layer's next decode position is the last row's largest component + 1.
    /// One thread per (row, head, i &lt; HeadDim/2) pair.
    /// </summary>
    internal static void QkvSplitRopeKernel(Index1D t0, ArrayView<float> qkv, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<float> q, ArrayView<float> k, ArrayView<ushort> qHalf, ArrayView<ushort> kHalf, ArrayView<ushort> vHalf, QkvShape s, ElementRange range,
        ArrayView<int> layerState)
    {
        int hd = s.HeadDim, half = hd / 2, pairs = s.PairsPerRow;
        long rows = range.Count / pairs;
        // A prefill layer leaves its KV cache's length and next position on the device for decoding (stateSlot >= 0).
        if (t0 == 0 && s.StateSlot >= 0)
        {
            int last = positions[rows - 1];
            for (int c = 1; c < s.Components; c++) last = XMath.Max(last, positions[c * rows + rows - 1]);
            layerState[2 * s.StateSlot] = s.CacheCount;
            layerState[2 * s.StateSlot + 1] = last + 1;
        }
        for (long e = t0; e < range.Count; e += range.Stride)
        {
            long r = e / pairs;
            int p = (int)(e % pairs);
            int slot = p / half, i = p % half;
            int section = slot < s.Heads ? 0 : slot < s.Heads + s.KvHeads ? 1 : 2;
            int h = section == 0 ? slot : section == 1 ? slot - s.Heads : slot - s.Heads - s.KvHeads;
            long src = r * s.Width + (section == 0 ? 0 : section == 1 ? s.QDim : s.QDim + s.KvDim) + (long)h * hd + i;
            float x1 = qkv[src], x2 = qkv[src + half];
            if (section < 2 && s.Rope != 0)
            {
                int component = (i >= s.Bound1 ? 1 : 0) + (i >= s.Bound2 ? 1 : 0) + (i >= s.Bound3 ? 1 : 0);
                long tab = (long)positions[component * rows + r] * half + i;
                float c = cos[tab], sn = sin[tab];
                float y1 = x1 * c - x2 * sn, y2 = x2 * c + x1 * sn;
                x1 = y1;
                x2 = y2;
            }
            if (section == 0)
            {
                long d = r * s.QDim + (long)h * hd + i;
                if (s.Signals != 0) { q[d] = x1; q[d + half] = x2; }
                qHalf[d] = FloatToHalfBits(x1); qHalf[d + half] = FloatToHalfBits(x2);
            }
            else
            {
                long d = r * s.KvDim + (long)h * hd + i;
                if (section == 1)
                {
                    if (s.Signals != 0) { k[d] = x1; k[d + half] = x2; }
                    kHalf[d] = FloatToHalfBits(x1); kHalf[d + half] = FloatToHalfBits(x2);
                }
                else
                {
                    vHalf[d] = FloatToHalfBits(x1); vHalf[d + half] = FloatToHalfBits(x2);
                }
            }
        }
    }

    /// <summary>dst[r, c] = fp16(silu(gu[r, c]) · gu[r, inter + c]) for a fused gate|up projection gu ([rows, 2·inter]).</summary>
    internal static void SiluMulSplitToHalfKernel(Index1D t, ArrayView<float> gateUp, ArrayView<ushort> dst, int inter, ElementRange range)
    {
        for (long e = t; e < range.Count; e += range.Stride)
        {
            long r = e / inter, c = e % inter;
            float g = gateUp[r * 2 * inter + c];
            dst[e] = FloatToHalfBits(g / (1f + XMath.Exp(-g)) * gateUp[r * 2 * inter + inter + c]);
        }
    }

    /// <summary>
    /// dst[r, :] = src[index[r], :] when index[r] &gt;= 0, else extra[-index[r] - 1, :] (rows of rowLen); one thread per
    /// output element. dst must overlap neither src nor extra.
    /// </summary>
    internal static void RowGatherMixedKernel(Index1D t, ArrayView<float> src, ArrayView<float> extra, ArrayView<int> index, ArrayView<float> dst, int rowLen, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride)
        {
            long r = i / rowLen, c = i % rowLen;
            int s = index[r];
            dst[i] = s >= 0 ? src[(long)s * rowLen + c] : extra[(long)(-s - 1) * rowLen + c];
        }
    }

    // ---------------------------------------------------------------- row kernels: one group per row
    //
    // Explicitly grouped: launched with KernelConfig(rows, g), g a power of two ≤ MaxRowGroupSize (CudaOps.RowGroupSize).
    // Group Grid.IdxX handles one row; thread Group.IdxX visits columns tid, tid + g, ... and the partial results are
    // combined by a shared-memory tree reduction. Every thread of a group reaches every barrier (loops bounded by the
    // group size only), so dims smaller than or not a multiple of g just leave threads idle.

    /// <summary>Largest group size the row kernels support (size of their shared-memory reduction buffers).</summary>
    internal const int MaxRowGroupSize = 256;

    /// <summary>RMSNorm of row Grid.IdxX of src ([rows, dim]) rounded to fp16 into dst: fp16(x / sqrt(mean(x²) + eps) * weight).</summary>
    internal static void RmsNormToHalfKernel(ArrayView<float> src, ArrayView<ushort> dst, ArrayView<float> weight, int dim, float eps)
    {
        var sh = SharedMemory.Allocate<float>(MaxRowGroupSize);
        long o = (long)Grid.IdxX * dim;
        int tid = Group.IdxX, step = Group.DimX;
        float ss = 0;
        for (int c = tid; c < dim; c += step) { float v = src[o + c]; ss += v * v; }
        ss = GroupSum(sh, ss);
        float inv = 1f / XMath.Sqrt(ss / dim + eps);
        for (int c = tid; c < dim; c += step) dst[o + c] = FloatToHalfBits(src[o + c] * inv * weight[c]);
    }

    /// <summary>
    /// LayerNorm of row Grid.IdxX of src ([rows, dim]) rounded to fp16 into dst, two passes as <see cref="Cpu.CpuOps.LayerNorm(Span{float}, int, int, ReadOnlySpan{float}, ReadOnlySpan{float}, float, bool)"/>:
    /// mean, then the mean of squared deviations.
    /// </summary>
    internal static void LayerNormToHalfKernel(ArrayView<float> src, ArrayView<ushort> dst, ArrayView<float> weight, ArrayView<float> bias, int dim, float eps)
    {
        var sh = SharedMemory.Allocate<float>(MaxRowGroupSize);
        long o = (long)Grid.IdxX * dim;
        int tid = Group.IdxX, step = Group.DimX;
        float sum = 0;
        for (int c = tid; c < dim; c += step) sum += src[o + c];
        float mean = GroupSum(sh, sum) / dim;
        float ss = 0;
        for (int c = tid; c < dim; c += step) { float d = src[o + c] - mean; ss += d * d; }
        float inv = 1f / XMath.Sqrt(GroupSum(sh, ss) / dim + eps);
        for (int c = tid; c < dim; c += step) dst[o + c] = FloatToHalfBits((src[o + c] - mean) * inv * weight[c] + bias[c]);
    }

    /// <summary>
    /// Softmax of row Grid.IdxX of scores ([heads, nq, ld], raw q·k in the first nk columns; the row is (head, query
    /// i = Grid.IdxX mod nq)): s_j = scores_j * scale over the visible keys j ≤ causalOffset + i (all keys when
    /// causalOffset &lt; 0), masked keys get probability exactly 0. Writes fp16 probabilities into probs (same layout);
    /// the fp32 scores are left as they were (nothing reads probabilities in fp32).
    /// </summary>
    internal static void ScaledMaskedSoftmaxToHalfKernel(ArrayView<float> scores, ArrayView<ushort> probs, int nq, int nk, int ld, int causalOffset, float scale)
    {
        var sh = SharedMemory.Allocate<float>(MaxRowGroupSize);
        int row = Grid.IdxX;
        long o = (long)row * ld;
        int tid = Group.IdxX, step = Group.DimX;
        int limit = causalOffset >= 0 ? XMath.Min(nk, causalOffset + row % nq + 1) : nk;
        float max = float.NegativeInfinity;
        for (int j = tid; j < limit; j += step) max = XMath.Max(max, scores[o + j] * scale);
        max = GroupMax(sh, max);
        float sum = 0;
        for (int j = tid; j < limit; j += step) sum += XMath.Exp(scores[o + j] * scale - max);
        float inv = 1f / GroupSum(sh, sum);
        for (int j = tid; j < nk; j += step)
            probs[o + j] = FloatToHalfBits(j < limit ? XMath.Exp(scores[o + j] * scale - max) * inv : 0f);
    }

    /// <summary>
    /// Attention probabilities (causal softmax of the scaled scores) of one chosen query row for one head, a group per
    /// (head, row): group Grid.IdxX = h·rows.Length + r. Threads
    /// stride over the visible keys; the raw scores are kept in result (keys before firstKey are recomputed), so the
    /// row costs three passes over result instead of three passes over K. Layout [QHeads, rows, Nk - firstKey].
    /// </summary>
    internal static void AttentionRowsGroupedKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<int> rows, ArrayView<float> result, AttentionShape s, int firstKey)
    {
        var sh = SharedMemory.Allocate<float>(MaxRowGroupSize);
        var (qo, kvo, limit, dst) = AttentionRowAt(Grid.IdxX, rows, s, firstKey);
        int hd = s.HeadDim;
        int tid = Group.IdxX, step = Group.DimX;
        float max = float.NegativeInfinity;
        for (int j = tid; j < limit; j += step)
        {
            float v = Dot(q, qo, k, (long)j * s.KvStride + kvo, hd) * s.Scale;
            if (j >= firstKey) result[dst + j - firstKey] = v;
            max = XMath.Max(max, v);
        }
        max = GroupMax(sh, max);
        float sum = 0;
        for (int j = tid; j < limit; j += step)
        {
            float v = j >= firstKey ? result[dst + j - firstKey] : Dot(q, qo, k, (long)j * s.KvStride + kvo, hd) * s.Scale;
            sum += XMath.Exp(v - max);
        }
        float inv = 1f / GroupSum(sh, sum);
        for (int j = firstKey + tid; j < s.Nk; j += step)
            result[dst + j - firstKey] = j < limit ? XMath.Exp(result[dst + j - firstKey] - max) * inv : 0f;
    }

    /// <summary>result[Grid.IdxX] = index of the first maximum of that row of x ([rows, cols], cols ≥ 1).</summary>
    internal static void ArgMaxRowsKernel(ArrayView<float> x, ArrayView<int> result, int cols)
    {
        var shv = SharedMemory.Allocate<float>(MaxRowGroupSize);
        var shi = SharedMemory.Allocate<int>(MaxRowGroupSize);
        long o = (long)Grid.IdxX * cols;
        int tid = Group.IdxX, step = Group.DimX;
        // Threads without a column hold (-inf, int.MaxValue): they lose to any real column, even one holding -inf.
        float best = float.NegativeInfinity;
        int bi = int.MaxValue;
        if (tid < cols) { best = x[o + tid]; bi = tid; }
        for (int c = tid + step; c < cols; c += step)
        {
            float v = x[o + c];
            if (v > best) { best = v; bi = c; }                               // columns ascend: strict > keeps the first
        }
        shv[tid] = best;
        shi[tid] = bi;
        Group.Barrier();
        for (int s = step / 2; s > 0; s >>= 1)
        {
            if (tid < s)
            {
                float ov = shv[tid + s];
                int oi = shi[tid + s];
                float mv = shv[tid];
                if (ov > mv || (ov == mv && oi < shi[tid])) { shv[tid] = ov; shi[tid] = oi; }
            }
            Group.Barrier();
        }
        if (tid == 0) result[Grid.IdxX] = shi[0];
    }

    /// <summary>Sum of <paramref name="v"/> over the group (power-of-two size), returned to every thread; sh is reusable afterwards.</summary>
    internal static float GroupSum(ArrayView<float> sh, float v)
    {
        int tid = Group.IdxX;
        sh[tid] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (tid < s) sh[tid] += sh[tid + s];
            Group.Barrier();
        }
        float r = sh[0];
        Group.Barrier();                                                      // everyone has read sh[0] before the next use
        return r;
    }

    /// <summary>Maximum of <paramref name="v"/> over the group (power-of-two size), returned to every thread.</summary>
    internal static float GroupMax(ArrayView<float> sh, float v)
    {
        int tid = Group.IdxX;
        sh[tid] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (tid < s) sh[tid] = XMath.Max(sh[tid], sh[tid + s]);
            Group.Barrier();
        }
        float r = sh[0];
        Group.Barrier();
        return r;
    }

    /// <summary>
    /// fp32 → IEEE fp16 bits with round-to-nearest-even (as System.Half), done with integer operations so the result
    /// is identical on every accelerator (cuBLAS GEMM inputs are fp16).
    /// </summary>
    internal static void ToHalfKernel(Index1D t, ArrayView<float> src, ArrayView<ushort> dst, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride) dst[i] = FloatToHalfBits(src[i]);
    }

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

    /// <summary>IEEE fp16 bits → fp32 (exact).</summary>
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
    /// cos/sin tables [maxPositions, headDim/2] for <see cref="QkvSplitRopeKernel"/>, computed on the host exactly as
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
internal sealed partial class CudaOps
{
    private readonly Accelerator _acc;
    /// <summary>One int, 0 between launches, counting the groups that finished in a kernel whose last group carries on (freed with the accelerator).</summary>
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _ticket;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>> _layerNorm;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ElementRange>> _quickGelu, _gelu;
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionShape, int>> _attentionRowsGrouped;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int>> _argMax;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<ushort>, ElementRange>> _toHalf;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, ElementRange>> _addBias;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ElementRange>> _add;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, QkvShape, ElementRange, ArrayView<int>>> _qkvSplitRope;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<ushort>, int, ElementRange>> _siluMulSplitToHalf;
    private readonly Lazy<Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, ElementRange>> _rowGatherMixed;
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<ushort>, ArrayView<float>, int, float>> _rmsToHalf;
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, float>> _layerNormToHalf;
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<ushort>, int, int, int, int, float>> _maskedSoftmaxToHalf;
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, int>> _argMaxRows;

    /// <param name="accelerator">The accelerator the kernels are compiled for.</param>
    /// <param name="rowGroupSize">
    /// Threads per group of the one-group-per-row kernels; 0 picks <see cref="DefaultRowGroupSize"/>. Otherwise a power
    /// of two no larger than <see cref="CudaKernels.MaxRowGroupSize"/> and the accelerator's MaxNumThreadsPerGroup
    /// (tests use this to exercise the reductions at several sizes).
    /// </param>
    public CudaOps(Accelerator accelerator, int rowGroupSize = 0, int maxElementThreads = 0, DeviceQueue? queue = null)
    {
        _acc = accelerator;
        Queue = queue ?? new DeviceQueue(accelerator);
        if (maxElementThreads < 0) throw new ArgumentOutOfRangeException(nameof(maxElementThreads), maxElementThreads, "Must be positive (0: the accelerator's default).");
        MaxElementThreads = maxElementThreads > 0 ? maxElementThreads
            : accelerator.AcceleratorType == AcceleratorType.CPU ? 64 : 1 << 22;
        int limit = DefaultRowGroupSize(accelerator);
        if (rowGroupSize == 0) rowGroupSize = limit;
        if (rowGroupSize < 1 || rowGroupSize > limit || (rowGroupSize & (rowGroupSize - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(rowGroupSize), rowGroupSize, $"Row group size must be a power of two in 1..{limit} on this accelerator.");
        RowGroupSize = rowGroupSize;
        _ticket = accelerator.Allocate1D(new int[1]); // 0: the last-group ticket (SelectionKernels.LastGroup)
        _layerNorm = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(CudaKernels.LayerNormKernel));
        _quickGelu = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ElementRange>(CudaKernels.QuickGeluKernel));
        _gelu = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ElementRange>(CudaKernels.GeluKernel));
        _attentionRowsGrouped = new(() => _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionShape, int>(CudaKernels.AttentionRowsGroupedKernel));
        _argMax = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int>(CudaKernels.ArgMaxKernel));
        _toHalf = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<ushort>, ElementRange>(CudaKernels.ToHalfKernel));
        _addBias = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, ElementRange>(CudaKernels.AddBiasKernel));
        _add = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ElementRange>(CudaKernels.AddKernel));
        _qkvSplitRope = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, QkvShape, ElementRange, ArrayView<int>>(CudaKernels.QkvSplitRopeKernel));
        _siluMulSplitToHalf = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<ushort>, int, ElementRange>(CudaKernels.SiluMulSplitToHalfKernel));
        _rowGatherMixed = new(() => _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, ElementRange>(CudaKernels.RowGatherMixedKernel));
        _rmsToHalf = new(() => _acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, int, float>(CudaKernels.RmsNormToHalfKernel));
        _layerNormToHalf = new(() => _acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, float>(CudaKernels.LayerNormToHalfKernel));
        _maskedSoftmaxToHalf = new(() => _acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, int, int, int, int, float>(CudaKernels.ScaledMaskedSoftmaxToHalfKernel));
        _argMaxRows = new(() => _acc.LoadKernel<ArrayView<float>, ArrayView<int>, int>(CudaKernels.ArgMaxRowsKernel));
    }

    /// <summary>
    /// Compiles and loads every kernel now (PTX generation and the driver's JIT take a moment each), so a model's
    /// first request is not slowed by it and a kernel the device cannot load fails at load time.
    /// </summary>
    /// <returns>How many kernels were loaded.</returns>
    public int CompileAll()
    {
        object[] all =
        [
            _layerNorm.Value, _quickGelu.Value, _gelu.Value, _attentionRowsGrouped.Value, _argMax.Value, _toHalf.Value, _addBias.Value, _add.Value, _rowGatherMixed.Value, _qkvSplitRope.Value, _siluMulSplitToHalf.Value,
            _rmsToHalf.Value, _layerNormToHalf.Value, _maskedSoftmaxToHalf.Value, _argMaxRows.Value,
            .. SequenceKernelsLoaded(), .. DecodeKernelsLoaded(), .. FusedAttentionKernelsLoaded(), .. TiledAttentionKernelsLoaded(), .. SegmentKernelsLoaded(), .. HalfMlpKernelsLoaded(), .. SignalKernelsLoaded(), .. CoverageKernelsLoaded(),
        ];
        return all.Count(k => k is not null);
    }

    public Accelerator Accelerator => _acc;

    /// <summary>The stream every kernel is launched on, and where launches are counted.</summary>
    public DeviceQueue Queue { get; }
    public Diagnostics.DeviceCounterSet Counters => Queue.Counters;
    private AcceleratorStream Stream => Queue.Stream;

    /// <summary>Threads per group of the one-group-per-row kernels (RmsNormToHalf, LayerNormToHalf, ScaledMaskedSoftmaxToHalf, ArgMaxRows).</summary>
    public int RowGroupSize { get; }

    /// <summary>min(<see cref="CudaKernels.MaxRowGroupSize"/>, MaxNumThreadsPerGroup) rounded down to a power of two (256 on NVIDIA GPUs).</summary>
    public static int DefaultRowGroupSize(Accelerator accelerator)
    {
        int n = Math.Min(CudaKernels.MaxRowGroupSize, accelerator.MaxNumThreadsPerGroup);
        if (n < 1) throw new NotSupportedException($"Accelerator reports {accelerator.MaxNumThreadsPerGroup} threads per group.");
        return 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)n));
    }

    public void LayerNorm(ArrayView<float> src, ArrayView<float> dst, int rows, int dim, ArrayView<float> weight, ArrayView<float> bias, float eps)
        => Launch(_layerNorm.Value, rows, src, dst, weight, bias, dim, eps);

    public void QuickGelu(ArrayView<float> x) => LaunchElements(_quickGelu.Value, x.Length, x);
    public void Gelu(ArrayView<float> x) => LaunchElements(_gelu.Value, x.Length, x);

    /// <summary>Applies <paramref name="activation"/> to <paramref name="x"/> in place.</summary>
    public void Activation(ActivationFunction activation, ArrayView<float> x)
    {
        switch (activation)
        {
            case ActivationFunction.QuickGelu: QuickGelu(x); break;
            case ActivationFunction.Gelu: Gelu(x); break;
            default: throw new ArgumentOutOfRangeException(nameof(activation), activation, "Unknown activation.");
        }
    }

    /// <summary>
    /// The attention probabilities of the chosen query <paramref name="rows"/> ([QHeads, rows, Nk - firstKey]), one group
    /// per (head, row) with threads over the keys (a single thread walking every key of a long prompt three times is slow).
    /// </summary>
    public void AttentionRowsGrouped(ArrayView<float> q, ArrayView<float> k, ArrayView<int> rows, ArrayView<float> result, AttentionShape shape, int firstKey = 0)
    {
        if (rows.Length == 0 || shape.QHeads == 0) return;
        Require(firstKey >= 0 && firstKey <= shape.Nk, $"firstKey ({firstKey}) must be in 0..Nk ({shape.Nk}).");
        long groups = shape.QHeads * rows.Length;
        Require(groups <= int.MaxValue, $"{groups} (head, row) pairs exceed a grid of 2^31 - 1 groups.");
        Require(result.Length >= groups * (shape.Nk - firstKey), $"result has {result.Length} elements, fewer than heads × rows × keys ({groups * (shape.Nk - firstKey)}).");
        Counters.Launch();
        Queue.Enqueue(() => _attentionRowsGrouped.Value(Stream, RowConfig((int)groups), q, k, rows, result, shape, firstKey));
    }

    public void ArgMax(ArrayView<float> x, int rows, int cols, ArrayView<int> result) => Launch(_argMax.Value, rows, x, result, cols);

    public void ToHalf(ArrayView<float> src, ArrayView<ushort> dst) => LaunchElements(_toHalf.Value, src.Length, src, dst);

    // ---------------------------------------------------------------- fp16 decoder ops
    // Element-wise ops cover the first view; the other views must be at least as long. Row ops check their views hold
    // rows × dim elements. rows = 0 (or an empty view) launches nothing.

    /// <summary>x[r, c] += bias[c] for x [rows, cols].</summary>
    public void AddBias(ArrayView<float> x, int rows, int cols, ArrayView<float> bias)
    {
        CheckRows(rows, cols, x.Length, nameof(x));
        Require(rows == 0 || bias.Length >= cols, $"bias has {bias.Length} elements, fewer than cols {cols}.");
        LaunchElements(_addBias.Value, (long)rows * cols, x, bias, cols);
    }

    /// <summary>x[i] += y[i] over x (y at least as long as x).</summary>
    public void Add(ArrayView<float> x, ArrayView<float> y)
    {
        Require(y.Length >= x.Length, $"y has {y.Length} elements, fewer than x ({x.Length}).");
        LaunchElements(_add.Value, x.Length, x, y);
    }

    /// <summary>
    /// Splits the fused q|k|v projection of <paramref name="rows"/> rows (see <see cref="CudaKernels.QkvSplitRopeKernel"/>):
    /// q, k fp32 [rows, QDim] / [rows, KvDim]; qHalf [rows, QDim]; kHalf, vHalf [rows, KvDim] (views into a KV cache).
    /// </summary>
    public void QkvSplitRope(ArrayView<float> qkv, int rows, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<float> q, ArrayView<float> k, ArrayView<ushort> qHalf, ArrayView<ushort> kHalf, ArrayView<ushort> vHalf, QkvShape shape,
        ArrayView<int> layerState = default)
    {
        Require(shape.HeadDim % 2 == 0 && shape.HeadDim > 0, $"Head dimension {shape.HeadDim} must be even.");
        CheckRows(rows, shape.Width, qkv.Length, nameof(qkv));
        CheckRows(rows, shape.QDim, qHalf.Length, nameof(qHalf));
        if (shape.Signals != 0)
        {
            CheckRows(rows, shape.QDim, q.Length, nameof(q));
            CheckRows(rows, shape.KvDim, k.Length, nameof(k));
        }
        Require(shape.StateSlot < 0 || (layerState.Length >= 2 * shape.StateSlot + 2 && positions.Length >= (long)shape.Components * rows),
            $"layer state ({layerState.Length}) must hold slot {shape.StateSlot} and positions ({positions.Length}) every row.");
        if (shape.StateSlot < 0 && layerState.Length == 0) layerState = positions; // never written
        CheckRows(rows, shape.KvDim, kHalf.Length, nameof(kHalf));
        CheckRows(rows, shape.KvDim, vHalf.Length, nameof(vHalf));
        Require(shape.Rope == 0 || positions.Length >= (long)shape.Components * rows, $"positions has {positions.Length} elements, fewer than {shape.Components} component(s) × rows ({rows}).");
        long n = (long)rows * shape.PairsPerRow;
        if (n > 0)
        {
            var r = Range(n);
            Counters.Launch();
            Queue.Enqueue(() => _qkvSplitRope.Value(Stream, Extent(r.Stride), qkv, positions, cos, sin, q, k, qHalf, kHalf, vHalf, shape, r, layerState));
        }
    }

    /// <summary>dst [rows, inter] = fp16(silu(gate) · up) from a fused gate|up projection [rows, 2·inter].</summary>
    public void SiluMulSplitToHalf(ArrayView<float> gateUp, ArrayView<ushort> dst, int rows, int inter)
    {
        CheckRows(rows, 2 * inter, gateUp.Length, nameof(gateUp));
        CheckRows(rows, inter, dst.Length, nameof(dst));
        LaunchElements(_siluMulSplitToHalf.Value, (long)rows * inter, gateUp, dst, inter);
    }

    /// <summary>
    /// dst row r = src row index[r] when index[r] &gt;= 0, else extra row -index[r] - 1 (rows of rowLen; index.Length
    /// rows written). extra may be a 1-element dummy view when no index is negative.
    /// </summary>
    public void RowGatherMixed(ArrayView<float> src, ArrayView<float> extra, ArrayView<int> index, ArrayView<float> dst, int rowLen)
    {
        CheckRows((int)Math.Min(index.Length, int.MaxValue), rowLen, dst.Length, nameof(dst));
        LaunchElements(_rowGatherMixed.Value, index.Length * rowLen, src, extra, index, dst, rowLen);
    }

    /// <summary>Llama RMSNorm of each row of src ([rows, dim]), rounded to fp16 into dst; one group per row.</summary>
    public void RmsNormToHalf(ArrayView<float> src, ArrayView<ushort> dst, int rows, int dim, ArrayView<float> weight, float eps)
    {
        CheckRowOp(rows, dim, src.Length, dst.Length, weight.Length);
        if (rows > 0) { Counters.Launch(); Queue.Enqueue(() => _rmsToHalf.Value(Stream, RowConfig(rows), src, dst, weight, dim, eps)); }
    }

    /// <summary>LayerNorm (two-pass mean / variance) of each row of src ([rows, dim]), rounded to fp16 into dst; one group per row.</summary>
    public void LayerNormToHalf(ArrayView<float> src, ArrayView<ushort> dst, int rows, int dim, ArrayView<float> weight, ArrayView<float> bias, float eps)
    {
        CheckRowOp(rows, dim, src.Length, dst.Length, weight.Length);
        Require(rows == 0 || bias.Length >= dim, $"bias has {bias.Length} elements, fewer than dim {dim}.");
        if (rows > 0) { Counters.Launch(); Queue.Enqueue(() => _layerNormToHalf.Value(Stream, RowConfig(rows), src, dst, weight, bias, dim, eps)); }
    }

    /// <summary>
    /// Softmax of scale · scores for each (head, query) row of scores ([heads, nq, ld], raw q·k in the first nk columns;
    /// ld ≥ nk, a multiple of 8 keeps the GEMMs on tensor cores). With causalOffset &gt;= 0, query i sees keys
    /// 0..causalOffset + i only (the rest get probability exactly 0; causalOffset = nk - nq for a KV cache);
    /// causalOffset &lt; 0 means no mask. fp16 probabilities go to probs (same layout). One group per row.
    /// </summary>
    public void ScaledMaskedSoftmaxToHalf(ArrayView<float> scores, ArrayView<ushort> probs, int heads, int nq, int nk, int causalOffset, float scale, int ld = 0)
    {
        if (ld == 0) ld = nk;
        Require(heads >= 0 && nq >= 0 && ld >= nk, $"heads ({heads}) and nq ({nq}) must not be negative and ld ({ld}) at least nk ({nk}).");
        long rows = (long)heads * nq;
        Require(rows <= int.MaxValue, $"{rows} softmax rows exceed a grid of 2^31 - 1 groups.");
        CheckRows((int)rows, ld, scores.Length + ld - nk, nameof(scores));
        CheckRows((int)rows, ld, probs.Length + ld - nk, nameof(probs));
        if (rows > 0 && nk > 0) { Counters.Launch(); Queue.Enqueue(() => _maskedSoftmaxToHalf.Value(Stream, RowConfig((int)rows), scores, probs, nq, nk, ld, causalOffset, scale)); }
    }

    /// <summary>
    /// result[r] = index of the first maximum of row r of x ([rows, cols], cols ≥ 1); one group per row (ties go to
    /// the smallest index, as <see cref="ArgMax"/>). Rows containing NaN give an unspecified index.
    /// </summary>
    public void ArgMaxRows(ArrayView<float> x, int rows, int cols, ArrayView<int> result)
    {
        CheckRows(rows, cols, x.Length, nameof(x));
        Require(rows == 0 || cols >= 1, $"cols ({cols}) must be at least 1.");
        Require(result.Length >= rows, $"result has {result.Length} elements, fewer than rows ({rows}).");
        if (rows > 0) { Counters.Launch(); Queue.Enqueue(() => _argMaxRows.Value(Stream, RowConfig(rows), x, result, cols)); }
    }

    private KernelConfig RowConfig(int rows) => new(rows, RowGroupSize);

    private static void CheckRowOp(int rows, int dim, long srcLength, long dstLength, long weightLength)
    {
        CheckRows(rows, dim, srcLength, "src");
        CheckRows(rows, dim, dstLength, "dst");
        Require(rows == 0 || weightLength >= dim, $"weight has {weightLength} elements, fewer than dim {dim}.");
    }

    private static void CheckRows(int rows, int rowLen, long length, string name)
    {
        Require(rows >= 0 && rowLen >= 0, $"rows ({rows}) and row length ({rowLen}) must not be negative.");
        Require((long)rows * rowLen <= length, $"{name} has {length} elements, fewer than {rows} × {rowLen}.");
    }

    private static void Require(bool condition, string message)
    {
        if (!condition) throw new ArgumentException(message);
    }

    private void Launch<T1>(Action<AcceleratorStream, Index1D, T1> k, long n, T1 a) where T1 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a)); } }
    private void Launch<T1, T2>(Action<AcceleratorStream, Index1D, T1, T2> k, long n, T1 a, T2 b) where T1 : struct where T2 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a, b)); } }
    private void Launch<T1, T2, T3>(Action<AcceleratorStream, Index1D, T1, T2, T3> k, long n, T1 a, T2 b, T3 c) where T1 : struct where T2 : struct where T3 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a, b, c)); } }
    private void Launch<T1, T2, T3, T4>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4> k, long n, T1 a, T2 b, T3 c, T4 d)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a, b, c, d)); } }
    private void Launch<T1, T2, T3, T4, T5>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4, T5> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a, b, c, d, e)); } }
    private void Launch<T1, T2, T3, T4, T5, T6>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4, T5, T6> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e, T6 f)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    { if (n > 0) { Counters.Launch(); Queue.Enqueue(() => k(Stream, Extent(n), a, b, c, d, e, f)); } }

    /// <summary>Threads for an element-wise launch of n elements (grid-stride beyond <see cref="MaxElementThreads"/>).</summary>
    private ElementRange Range(long n) => new(n, (int)Math.Min(n, MaxElementThreads));

    /// <summary>
    /// Most threads an element-wise kernel is launched with: 4M on a GPU (one element per thread for any tensor here),
    /// a few per core on ILGPU's CPU accelerator, where each emulated thread costs microseconds.
    /// </summary>
    public int MaxElementThreads { get; }

    private void LaunchElements<T1>(Action<AcceleratorStream, Index1D, T1, ElementRange> k, long n, T1 a) where T1 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, r)); } }
    private void LaunchElements<T1, T2>(Action<AcceleratorStream, Index1D, T1, T2, ElementRange> k, long n, T1 a, T2 b) where T1 : struct where T2 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, b, r)); } }
    private void LaunchElements<T1, T2, T3>(Action<AcceleratorStream, Index1D, T1, T2, T3, ElementRange> k, long n, T1 a, T2 b, T3 c) where T1 : struct where T2 : struct where T3 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, b, c, r)); } }
    private void LaunchElements<T1, T2, T3, T4>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4, ElementRange> k, long n, T1 a, T2 b, T3 c, T4 d)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, b, c, d, r)); } }
    private void LaunchElements<T1, T2, T3, T4, T5>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4, T5, ElementRange> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, b, c, d, e, r)); } }
    private void LaunchElements<T1, T2, T3, T4, T5, T6>(Action<AcceleratorStream, Index1D, T1, T2, T3, T4, T5, T6, ElementRange> k, long n, T1 a, T2 b, T3 c, T4 d, T5 e, T6 f)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    { if (n > 0) { Counters.Launch(); var r = Range(n); Queue.Enqueue(() => k(Stream, Extent(r.Stride), a, b, c, d, e, f, r)); } }

    private static Index1D Extent(long n)
    {
        if (n > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(n), n, "Launch larger than 2^31 threads.");
        return new Index1D((int)n);
    }
}
