using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>Rows [RowStart, RowStart + RowCount) and columns [ColStart, ColStart + ColCount) of an attention matrix.</summary>
internal readonly record struct WindowShape(int RowStart, int RowCount, int ColStart, int ColCount);

/// <summary>
/// A deterministic top-k (<see cref="SignalKernels.TopKPlanKernel"/>): keep <see cref="K"/> of <see cref="V"/> scores and
/// lay out the new sequence: <see cref="Prefix"/> rows, the kept visual rows in order, <see cref="Merged"/> merged rows,
/// <see cref="Text"/> text rows. ScoreMode 1 takes the scores as the mean over <see cref="Heads"/> × <see cref="Rows"/>
/// attention rows (only rows whose mask is non-zero when UseMask is 1); WritePlan 0 only selects.
/// </summary>
internal readonly record struct PlanShape(int V, int K, int Prefix, int Text, int Merged, int ScoreMode, int Heads, int Rows, int UseMask, int WritePlan);

/// <summary>
/// The building blocks of pruning on the device. Each mirrors the host computation it replaces in arithmetic and
/// order where the host's result decides which tokens are kept (means, ranks), so that on ILGPU's CPU accelerator the
/// keep decisions are bit-for-bit those of the host code on the same inputs; reductions that only feed a value
/// (norms, mutual information) use group reductions, deterministic but in tree order.
/// </summary>
internal static class SignalKernels
{
    /// <summary>
    /// Attention probabilities of query rows w.RowStart.. (causal, softmax over all visible keys) kept only for key
    /// columns in the window: result [QHeads, RowCount, ColCount]. One group per (head, row), arithmetic as
    /// <see cref="CudaKernels.AttentionRowsGroupedKernel"/>, so the same probabilities come out.
    /// </summary>
    internal static void AttentionWindowKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<float> result, AttentionShape s, WindowShape w,
        ArrayView<float> qkv, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, int fromQkv)
        => AttentionWindowRow(SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize), q, k, result, s, w, qkv, positions, cos, sin, fromQkv,
            Grid.IdxX, Group.IdxX, Group.DimX);

    /// <summary>
    /// <see cref="AttentionWindowKernel"/>'s (head, row) pair number <paramref name="t"/> = h·w.RowCount + r by one group
    /// (thread tid of step; sh its reduction buffer), for kernels that compute a few rows themselves.
    /// </summary>
    internal static void AttentionWindowRow(ArrayView<float> sh, ArrayView<float> q, ArrayView<float> k, ArrayView<float> result, AttentionShape s, WindowShape w,
        ArrayView<float> qkv, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, int fromQkv, int t, int tid, int step)
    {
        int h = t / w.RowCount, r = t % w.RowCount;
        int i = w.RowStart + r;
        int kvh = h / (s.QHeads / s.KvHeads);
        int limit = s.Causal != 0 ? XMath.Min(s.Nk, s.Nk - s.Nq + i + 1) : s.Nk;
        long dst = (long)t * w.ColCount;
        int colEnd = w.ColStart + w.ColCount;
        float max = float.NegativeInfinity;
        for (int j = tid; j < limit; j += step)
        {
            float v = WindowDot(q, k, qkv, positions, cos, sin, s, fromQkv, i, h, kvh, j) * s.Scale;
            if (j >= w.ColStart && j < colEnd) result[dst + j - w.ColStart] = v;
            max = XMath.Max(max, v);
        }
        max = CudaKernels.GroupMax(sh, max);
        float sum = 0;
        for (int j = tid; j < limit; j += step)
        {
            float v = j >= w.ColStart && j < colEnd ? result[dst + j - w.ColStart] : WindowDot(q, k, qkv, positions, cos, sin, s, fromQkv, i, h, kvh, j) * s.Scale;
            sum += XMath.Exp(v - max);
        }
        float inv = 1f / CudaKernels.GroupSum(sh, sum);
        for (int j = w.ColStart + tid; j < colEnd; j += step)
            result[dst + j - w.ColStart] = j < limit ? XMath.Exp(result[dst + j - w.ColStart] - max) * inv : 0f;
    }

    /// <summary>
    /// q_i · k_j for head h (kv head kvh): from the fp32 q and k, or (fromQkv) straight from the projection q|k|v
    /// ([rows, QStride + 2·KvStride], before RoPE) with each element rotated at its row's position as
    /// <see cref="CudaKernels.QkvSplitRopeKernel"/> rotates it: the same values summed in the same order.
    /// </summary>
    private static float WindowDot(ArrayView<float> q, ArrayView<float> k, ArrayView<float> qkv, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin,
        AttentionShape s, int fromQkv, int i, int h, int kvh, int j)
    {
        int hd = s.HeadDim;
        if (fromQkv == 0) return Dot(q, (long)i * s.QStride + (long)h * hd, k, (long)j * s.KvStride + (long)kvh * hd, hd);
        long width = s.QStride + 2L * s.KvStride, half = hd / 2;
        long qo = i * width + (long)h * hd, ko = j * width + s.QStride + (long)kvh * hd;
        long qt = positions[i] * half, kt = positions[j] * half;
        float sum = 0;
        for (int d = 0; d < hd; d++) sum += Rotated(qkv, qo, d, half, qt, cos, sin) * Rotated(qkv, ko, d, half, kt, cos, sin);
        return sum;
    }

    /// <summary>Element d of the head slice at o after rotate-half RoPE with table row tab (y1 = x1·c − x2·s, y2 = x2·c + x1·s).</summary>
    internal static float Rotated(ArrayView<float> x, long o, int d, long half, long tab, ArrayView<float> cos, ArrayView<float> sin)
    {
        if (d < half)
        {
            float x1 = x[o + d], x2 = x[o + d + half], c = cos[tab + d], sn = sin[tab + d];
            return x1 * c - x2 * sn;
        }
        long p = d - half;
        float y1 = x[o + p], y2 = x[o + d], c2 = cos[tab + p], s2 = sin[tab + p];
        return y2 * c2 + y1 * s2;
    }

    /// <summary>
    /// The score of column j: the mean over heads and (masked) rows of attn [heads, rows, cols], summed head-major then
    /// row by row and multiplied by 1 / (heads · rows), as <c>AttentionScores.MeanOverHeadsAndRows</c> does.
    /// </summary>
    private static float ColumnMean(ArrayView<float> attn, ArrayView<int> mask, int heads, int rows, int cols, int useMask, int j)
    {
        int used = 0;
        for (int r = 0; r < rows; r++) if (useMask == 0 || mask[r] != 0) used++;
        float sum = 0;
        for (int h = 0; h < heads; h++)
            for (int r = 0; r < rows; r++)
                if (useMask == 0 || mask[r] != 0) sum += attn[((long)h * rows + r) * cols + j];
        return sum * (1f / (heads * used));
    }

    /// <summary>out[j] = the mean over heads and rows of column j (see <see cref="ColumnMean"/>); one thread per column.</summary>
    internal static void ColumnMeanKernel(Index1D t, ArrayView<float> attn, ArrayView<int> mask, ArrayView<float> output, PlanShape p, ElementRange range)
    {
        for (long j = t; j < range.Count; j += range.Stride)
            output[j] = ColumnMean(attn, mask, p.Heads, p.Rows, p.V, p.UseMask, (int)j);
    }

    /// <summary>Whether score b outranks score a: higher first, NaN last, ties to the lower index (as <c>TopK.RankDescending</c>).</summary>
    internal static bool Beats(float sb, int b, float sa, int a)
    {
        bool nb = XMath.IsNaN(sb), na = XMath.IsNaN(sa);
        float kb = nb ? float.NegativeInfinity : sb, ka = na ? float.NegativeInfinity : sa;
        if (kb > ka) return true;
        if (kb < ka) return false;
        if (nb != na) return na;
        return b < a;
    }

    /// <summary>
    /// Top-k selection in one group and the new sequence's plan (see <see cref="PlanShape"/>): the scores (given, or
    /// the attention means written into <paramref name="scores"/>), each one's rank by <see cref="Beats"/>, the kept
    /// flags, the kept indices in ascending order (keptLocal) and, with WritePlan, the plan. O(V²) comparisons spread
    /// over the group's threads.
    /// </summary>
    internal static void TopKPlanKernel(ArrayView<float> scores, ArrayView<float> attn, ArrayView<int> mask, ArrayView<int> kept,
        ArrayView<int> keptLocal, ArrayView<int> plan, PlanShape p)
        => TopKPlan(scores, attn, mask, kept, keptLocal, plan, p, Group.IdxX, Group.DimX);

    /// <summary><see cref="TopKPlanKernel"/>'s work by one group (thread tid of step), for kernels that go on after it.</summary>
    internal static void TopKPlan(ArrayView<float> scores, ArrayView<float> attn, ArrayView<int> mask, ArrayView<int> kept,
        ArrayView<int> keptLocal, ArrayView<int> plan, PlanShape p, int tid, int step)
    {
        if (p.ScoreMode == 1)
        {
            for (int j = tid; j < p.V; j += step) scores[j] = ColumnMean(attn, mask, p.Heads, p.Rows, p.V, p.UseMask, j);
            Group.Barrier();
        }
        for (int i = tid; i < p.V; i += step)
        {
            float si = scores[i];
            int rank = 0;
            for (int j = 0; j < p.V; j++)
                if (j != i && Beats(scores[j], j, si, i)) rank++;
            kept[i] = rank < p.K ? 1 : 0;
        }
        Group.Barrier();
        SelectionKernels.WriteKeptPlan(kept, keptLocal, plan, p.V, p.K, p.Prefix, p.Merged, p.Text, p.WritePlan, tid, step);
    }

    /// <summary>
    /// Mutual information of one head (group Grid.IdxX) between T text rows and the visual columns of attn
    /// [heads, T, cols] (softmax over all keys, not renormalised): p(x) = 1/T, p(x,y) = a/T, p(y) = Σx p(x,y),
    /// MI = Σ p(x,y) log2(max(p(x,y) / (p(x)p(y) + 1e-6), 1e-6)); perHead[2h] = MI, perHead[2h + 1] = the head's mass on
    /// the visual columns (Σ p(x,y)). py: scratch [heads, cols]. The last head to finish sums them into result [2]
    /// (<see cref="SelectionKernels.LastGroup"/>: ticket 0 at the launch, and again after it).
    /// </summary>
    internal static void MutualInformationKernel(ArrayView<float> attn, ArrayView<float> py, ArrayView<float> perHead, ArrayView<float> result, ArrayView<int> ticket,
        int T, int cols)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var last = SharedMemory.Allocate<int>(1);
        int h = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        float invT = 1f / T;
        long head = (long)h * T * cols, pyo = (long)h * cols;
        for (int j = tid; j < cols; j += step)
        {
            float s = 0;
            for (int x = 0; x < T; x++) s += attn[head + (long)x * cols + j] * invT;
            py[pyo + j] = s;
        }
        Group.Barrier();
        float mi = 0, mass = 0;
        long cells = (long)T * cols;
        for (long e = tid; e < cells; e += step)
        {
            int j = (int)(e % cols);
            float pxy = attn[head + e] * invT;
            mass += pxy;
            if (pxy <= 0f) continue;
            float ratio = XMath.Max(pxy / (invT * py[pyo + j] + 1e-6f), 1e-6f);
            mi += pxy * XMath.Log2(ratio);
        }
        mi = CudaKernels.GroupSum(sh, mi);
        mass = CudaKernels.GroupSum(sh, mass);
        if (tid == 0)
        {
            perHead[2 * h] = mi;
            perHead[2 * h + 1] = mass;
        }
        // The last head to finish sums them (SelectionKernels.LastGroup): result[0] = Σ_h MI_h, result[1] = its bound
        // Σ_h m_h · log2 T (m_h: the head's mass on the visual columns), in head order.
        if (!SelectionKernels.LastGroup(ticket, last) || tid != 0) return;
        float total = 0, bound = 0, log2T = XMath.Log2((float)T);
        for (int hh = 0; hh < Grid.DimX; hh++)
        {
            total += perHead[2 * hh];
            bound += perHead[2 * hh + 1] * log2T;
        }
        result[0] = total;
        result[1] = bound;
    }

    /// <summary>out[r] = Σ |k[rowStart + r, :]| over the fp16 key row (all KV heads concatenated, after RoPE as cached); a group per row.</summary>
    internal static void KeyL1NormsKernel(ArrayView<ushort> keys, ArrayView<float> output, int rowStart, int width)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int r = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long o = (long)(rowStart + r) * width;
        float s = 0;
        for (int c = tid; c < width; c += step) s += XMath.Abs(CudaKernels.HalfBitsToFloat(keys[o + c]));
        s = CudaKernels.GroupSum(sh, s);
        if (tid == 0) output[r] = s;
    }

    /// <summary>dst[r, :] = RMSNorm(src[rowStart + r, :]) · weight in fp32 (e.g. the model's final norm on chosen rows); a group per row.</summary>
    internal static void RmsNormRowsKernel(ArrayView<float> src, ArrayView<float> dst, ArrayView<float> weight, int rowStart, int dim, float eps)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int r = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long o = (long)(rowStart + r) * dim, d = (long)r * dim;
        float ss = 0;
        for (int c = tid; c < dim; c += step) { float v = src[o + c]; ss += v * v; }
        ss = CudaKernels.GroupSum(sh, ss);
        float inv = 1f / XMath.Sqrt(ss / dim + eps);
        for (int c = tid; c < dim; c += step) dst[d + c] = src[o + c] * inv * weight[c];
    }

    /// <summary>
    /// dstH[r, :] = fp16(src[rowStart + r, :] / |src row|) and norms[r] = |src row| (0 rows stay 0): rows ready for a
    /// cosine-similarity GEMM. A group per row.
    /// </summary>
    internal static void L2NormalizeRowsToHalfKernel(ArrayView<float> src, ArrayView<ushort> dstH, ArrayView<float> norms, int rowStart, int dim)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int r = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long o = (long)(rowStart + r) * dim, d = (long)r * dim;
        float ss = 0;
        for (int c = tid; c < dim; c += step) { float v = src[o + c]; ss += v * v; }
        float norm = XMath.Sqrt(CudaKernels.GroupSum(sh, ss));
        float inv = norm > 0 ? 1f / norm : 0f;
        for (int c = tid; c < dim; c += step) dstH[d + c] = CudaKernels.FloatToHalfBits(src[o + c] * inv);
        if (tid == 0) norms[r] = norm;
    }

    /// <summary>
    /// dst[r, :] = src[rowStart + r, :] / sqrt(Σ src²) with the sum taken element by element in order (the host's
    /// feature normalisation, <c>FeatureNorms.Normalize</c>); one thread per row.
    /// </summary>
    internal static void L2NormalizeRowsKernel(Index1D t, ArrayView<float> src, ArrayView<float> dst, int rowStart, int dim, ElementRange range)
    {
        for (long r = t; r < range.Count; r += range.Stride) NormalizeRow(src, (rowStart + r) * dim, dst, r * dim, dim);
    }

    /// <summary>dst[d..] = src[o..] / sqrt(Σ src²) over dim values, the sum in order by one thread (the host's order).</summary>
    internal static void NormalizeRow(ArrayView<float> src, long o, ArrayView<float> dst, long d, int dim)
    {
        float ss = 0;
        for (int c = 0; c < dim; c++) { float v = src[o + c]; ss += v * v; }
        float norm = XMath.Sqrt(ss);
        float inv = norm > 0 ? 1f / norm : 0f;
        for (int c = 0; c < dim; c++) dst[d + c] = src[o + c] * inv;
    }

    /// <summary>
    /// out[r] = cos(x[rowStart + r], x[pivot]) in fp32, the pivot row read from pivots[pivotSlot] (a row index on the
    /// device); a group per row.
    /// </summary>
    internal static void CosineToPivotKernel(ArrayView<float> x, ArrayView<int> pivots, ArrayView<float> output, int pivotSlot, int rowStart, int dim)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int r = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long a = (long)(rowStart + r) * dim, b = (long)pivots[pivotSlot] * dim;
        float dot = 0, na = 0, nb = 0;
        for (int c = tid; c < dim; c += step)
        {
            float u = x[a + c], v = x[b + c];
            dot += u * v;
            na += u * u;
            nb += v * v;
        }
        dot = CudaKernels.GroupSum(sh, dot);
        na = CudaKernels.GroupSum(sh, na);
        nb = CudaKernels.GroupSum(sh, nb);
        if (tid == 0)
        {
            float den = XMath.Sqrt(na) * XMath.Sqrt(nb);
            output[r] = den > 0 ? dot / den : 0f;
        }
    }

    internal static float Dot(ArrayView<float> a, long ao, ArrayView<float> b, long bo, int n)
    {
        float s = 0;
        for (int d = 0; d < n; d++) s += a[ao + d] * b[bo + d];
        return s;
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int>? _attentionWindow;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, PlanShape, ElementRange>? _columnMean;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, PlanShape>? _topKPlan;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>? _mi;
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<float>, int, int>? _keyL1;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>? _rmsRows;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<ushort>, ArrayView<float>, int, int>? _l2Half;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>? _l2Rows;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int>? _cosPivot;

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int> AttentionWindowK
        => _attentionWindow ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int>(SignalKernels.AttentionWindowKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, PlanShape, ElementRange> ColumnMeanK
        => _columnMean ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, PlanShape, ElementRange>(SignalKernels.ColumnMeanKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, PlanShape> TopKPlanK
        => _topKPlan ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, PlanShape>(SignalKernels.TopKPlanKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> MiK
        => _mi ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(SignalKernels.MutualInformationKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<float>, int, int> KeyL1K
        => _keyL1 ??= _acc.LoadKernel<ArrayView<ushort>, ArrayView<float>, int, int>(SignalKernels.KeyL1NormsKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float> RmsRowsK
        => _rmsRows ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(SignalKernels.RmsNormRowsKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<ushort>, ArrayView<float>, int, int> L2HalfK
        => _l2Half ??= _acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, int, int>(SignalKernels.L2NormalizeRowsToHalfKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange> L2RowsK
        => _l2Rows ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>(SignalKernels.L2NormalizeRowsKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int> CosPivotK
        => _cosPivot ??= _acc.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int>(SignalKernels.CosineToPivotKernel);

    private object[] SignalKernelsLoaded() =>
    [
        AttentionWindowK, ColumnMeanK, TopKPlanK, MiK, KeyL1K, RmsRowsK, L2HalfK, L2RowsK, CosPivotK,
        .. SelectionKernelsLoaded(),
    ];

    /// <summary>Threads of the single-group selection kernels: the row group size (up to 256 on a GPU, 1 on the CPU accelerator).</summary>
    private KernelConfig OneGroup() => new(1, RowGroupSize);

    /// <summary>Attention probabilities of a block of query rows kept for a window of key columns ([heads, rows, cols]).</summary>
    public void AttentionWindow(ArrayView<float> q, ArrayView<float> k, ArrayView<float> result, AttentionShape shape, WindowShape window)
    {
        Require(window.RowStart >= 0 && window.RowCount >= 0 && window.RowStart + window.RowCount <= shape.Nq, $"rows [{window.RowStart}, +{window.RowCount}) outside the {shape.Nq} queries.");
        Require(window.ColStart >= 0 && window.ColCount >= 0 && window.ColStart + window.ColCount <= shape.Nk, $"columns [{window.ColStart}, +{window.ColCount}) outside the {shape.Nk} keys.");
        long groups = (long)shape.QHeads * window.RowCount;
        Require(result.Length >= groups * window.ColCount, $"result has {result.Length} elements, fewer than heads × rows × columns ({groups * window.ColCount}).");
        if (groups == 0 || window.ColCount == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => AttentionWindowK(Stream, RowConfig((int)groups), q, k, result, shape, window, q, q.Cast<int>(), q, q, 0)); // (the q|k|v views unused)
    }

    /// <summary>
    /// <see cref="AttentionWindow"/> straight from a q|k|v projection ([Nq rows, QStride + 2·KvStride] fp32, before
    /// RoPE), rotating q and k at <paramref name="positions"/> on the fly: the probabilities the split-and-rotate launch
    /// followed by <see cref="AttentionWindow"/> give, bit for bit, in one launch.
    /// </summary>
    public void AttentionWindowFromQkv(ArrayView<float> qkv, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, ArrayView<float> result,
        AttentionShape shape, WindowShape window)
    {
        Require(window.RowStart >= 0 && window.RowCount >= 0 && window.RowStart + window.RowCount <= shape.Nq, $"rows [{window.RowStart}, +{window.RowCount}) outside the {shape.Nq} queries.");
        Require(window.ColStart >= 0 && window.ColCount >= 0 && window.ColStart + window.ColCount <= shape.Nk, $"columns [{window.ColStart}, +{window.ColCount}) outside the {shape.Nk} keys.");
        Require(shape.HeadDim % 2 == 0, $"Head dimension {shape.HeadDim} must be even.");
        Require(qkv.Length >= (long)Math.Max(shape.Nq, shape.Nk) * (shape.QStride + 2L * shape.KvStride) && positions.Length >= Math.Max(shape.Nq, shape.Nk),
            "qkv or positions too short.");
        long groups = (long)shape.QHeads * window.RowCount;
        Require(result.Length >= groups * window.ColCount, $"result has {result.Length} elements, fewer than heads × rows × columns ({groups * window.ColCount}).");
        if (groups == 0 || window.ColCount == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => AttentionWindowK(Stream, RowConfig((int)groups), qkv, qkv, result, shape, window, qkv, positions, cos, sin, 1));
    }

    /// <summary>Column means of attention rows (see <see cref="SignalKernels.ColumnMeanKernel"/>): output [p.V].</summary>
    public void ColumnMean(ArrayView<float> attn, ArrayView<int> mask, ArrayView<float> output, PlanShape p)
    {
        Require(attn.Length >= (long)p.Heads * p.Rows * p.V && output.Length >= p.V && (p.UseMask == 0 || mask.Length >= p.Rows), "attention, mask or output too short.");
        if (p.V == 0) return;
        if (p.UseMask == 0) mask = output.Cast<int>();
        var r = Range(p.V);
        Counters.Launch();
        Queue.Enqueue(() => ColumnMeanK(Stream, Extent(r.Stride), attn, mask, output, p, r));
    }

    /// <summary>
    /// Deterministic top-k and the pruned sequence's plan in one single-group launch (see <see cref="PlanShape"/>).
    /// scores: [V] (input, or scratch written when ScoreMode is 1); kept: [V] scratch; keptLocal: [K]; plan: the new rows.
    /// </summary>
    public void TopKPlan(ArrayView<float> scores, ArrayView<float> attn, ArrayView<int> mask, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, PlanShape p)
    {
        Require(p.K >= 0 && p.K <= p.V, $"k ({p.K}) must be within 0..{p.V}.");
        Require(scores.Length >= p.V && kept.Length >= p.V && keptLocal.Length >= Math.Max(1, p.K), "scores, kept or keptLocal too short.");
        Require(p.ScoreMode == 0 || attn.Length >= (long)p.Heads * p.Rows * p.V, "attention too short for the scores.");
        Require(p.UseMask == 0 || mask.Length >= p.Rows, "mask too short.");
        Require(p.WritePlan == 0 || plan.Length >= p.Prefix + p.K + p.Merged + p.Text, $"plan ({plan.Length}) shorter than the new sequence.");
        if (p.UseMask == 0) mask = kept;
        if (p.ScoreMode == 0) attn = scores;
        if (p.WritePlan == 0) plan = kept;
        Counters.Launch();
        Queue.Enqueue(() => TopKPlanK(Stream, OneGroup(), scores, attn, mask, kept, keptLocal, plan, p));
    }

    /// <summary>
    /// Mutual information of text rows × visual columns (attn [heads, T, cols]) summed over heads into result[0], and its
    /// bound Σ_h m_h · log2 T into result[1]; perHead [2·heads] and py [heads·cols] are scratch. One launch: one group per
    /// head, the last to finish sums them.
    /// </summary>
    public void MutualInformation(ArrayView<float> attn, int heads, int T, int cols, ArrayView<float> py, ArrayView<float> perHead, ArrayView<float> result)
    {
        Require(heads > 0 && T > 0 && cols > 0, $"heads ({heads}), T ({T}) and cols ({cols}) must be positive.");
        Require(attn.Length >= (long)heads * T * cols && py.Length >= (long)heads * cols && perHead.Length >= 2 * heads && result.Length >= 2, "a view is too short.");
        Counters.Launch();
        Queue.Enqueue(() => MiK(Stream, RowConfig(heads), attn, py, perHead, result, _ticket.View, T, cols));
    }

    /// <summary>L1 norms of fp16 key rows [rowStart, rowStart + rows) of a cache ([*, width]).</summary>
    public void KeyL1Norms(ArrayView<ushort> keys, int rowStart, int rows, int width, ArrayView<float> output)
    {
        Require(keys.Length >= (long)(rowStart + rows) * width && output.Length >= rows, "keys or output too short.");
        if (rows == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => KeyL1K(Stream, RowConfig(rows), keys, output, rowStart, width));
    }

    /// <summary>RMSNorm (fp32 out) of rows [rowStart, rowStart + rows) of src into dst [rows, dim].</summary>
    public void RmsNormRows(ArrayView<float> src, int rowStart, int rows, int dim, ArrayView<float> weight, float eps, ArrayView<float> dst)
    {
        Require(src.Length >= (long)(rowStart + rows) * dim && dst.Length >= (long)rows * dim && weight.Length >= dim, "src, dst or weight too short.");
        if (rows == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => RmsRowsK(Stream, RowConfig(rows), src, dst, weight, rowStart, dim, eps));
    }

    /// <summary>fp16 unit rows and their norms from rows [rowStart, rowStart + rows) of src (for a cosine-similarity GEMM).</summary>
    public void L2NormalizeRowsToHalf(ArrayView<float> src, int rowStart, int rows, int dim, ArrayView<ushort> dstH, ArrayView<float> norms)
    {
        Require(src.Length >= (long)(rowStart + rows) * dim && dstH.Length >= (long)rows * dim && norms.Length >= rows, "src, dst or norms too short.");
        if (rows == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => L2HalfK(Stream, RowConfig(rows), src, dstH, norms, rowStart, dim));
    }

    /// <summary>Unit rows in fp32 from rows [rowStart, rowStart + rows) of src, summed in order (as the host's feature normalisation).</summary>
    public void L2NormalizeRows(ArrayView<float> src, int rowStart, int rows, int dim, ArrayView<float> dst)
    {
        Require(src.Length >= (long)(rowStart + rows) * dim && dst.Length >= (long)rows * dim, "src or dst too short.");
        if (rows == 0) return;
        var r = Range(rows);
        Counters.Launch();
        Queue.Enqueue(() => L2RowsK(Stream, Extent(r.Stride), src, dst, rowStart, dim, r));
    }

    /// <summary>Cosine of rows [rowStart, rowStart + rows) of x to the row named by pivots[pivotSlot].</summary>
    public void CosineToPivot(ArrayView<float> x, ArrayView<int> pivots, int pivotSlot, int rowStart, int rows, int dim, ArrayView<float> output)
    {
        Require(x.Length >= (long)(rowStart + rows) * dim && output.Length >= rows && pivots.Length > pivotSlot, "x, pivots or output too short.");
        if (rows == 0) return;
        Counters.Launch();
        Queue.Enqueue(() => CosPivotK(Stream, RowConfig(rows), x, pivots, output, pivotSlot, rowStart, dim));
    }
}
