using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>Sizes of DART's selection: V visual and T text rows of Dim-wide final-norm hidden states, K kept, the pivot counts.</summary>
internal readonly record struct DartShape(int V, int T, int Dim, int K, int VisualPivots, int TextPivots, int Prefix);

/// <summary>
/// DivPrune's and DART's selections on the device (ports of <c>DivPruneSelector</c> and <c>DartSelector</c>): distances
/// quantized as the host quantizes them, greedy loops in one group, ties to the lower index, NaN last.
/// </summary>
internal static class AttentionFreeKernels
{
    // MathF.Round: to nearest, halves to even.
    private static float RoundEven(float x)
    {
        float f = XMath.Floor(x), d = x - f;
        if (d > 0.5f) return f + 1;
        if (d < 0.5f) return f;
        return XMath.Rem(f, 2f) == 0 ? f : f + 1;
    }

    /// <summary>
    /// DivPrune's distances from cosines [n, n]: d[i, j] = d[j, i] = round((1 - cos[i, j]) · res) / res for i &lt; j (the
    /// upper triangle's value for both halves), 0 on the diagonal. One thread per element.
    /// </summary>
    internal static void QuantizedDistanceKernel(Index1D t, ArrayView<float> cos, ArrayView<float> dist, int n, float resolution, ElementRange range)
    {
        for (long e = t; e < range.Count; e += range.Stride)
        {
            int i = (int)(e / n), j = (int)(e % n);
            if (i == j) { dist[e] = 0f; continue; }
            int a = i < j ? i : j, b = i < j ? j : i;
            dist[e] = RoundEven((1f - cos[(long)a * n + b]) * resolution) / resolution;
        }
    }

    /// <summary>
    /// Greedy max-min in one group (<c>DivPruneSelector.GreedyMaxMin</c>): first the row whose nearest other row is
    /// farthest, then k - 1 times the row farthest from the kept ones. Kept flags and the kept rows ascending come out.
    /// toSet [n] is scratch.
    /// </summary>
    internal static void GreedyMaxMinKernel(ArrayView<float> dist, ArrayView<float> toSet, ArrayView<int> kept, ArrayView<int> keptLocal, int n, int k)
    {
        var shv = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var shi = SharedMemory.Allocate<int>(CudaKernels.MaxRowGroupSize);
        int tid = Group.IdxX, step = Group.DimX;
        int bi = -1;
        float bv = 0;
        for (int i = tid; i < n; i += step)
        {
            kept[i] = 0;
            float nearest = float.PositiveInfinity;
            for (int j = 0; j < n; j++)
                if (j != i && dist[(long)i * n + j] < nearest) nearest = dist[(long)i * n + j];
            if (n == 1) nearest = 0;
            if (bi < 0 || nearest > bv) { bi = i; bv = nearest; }
        }
        int first = SelectionKernels.GroupBest(shv, shi, tid, step, bi, bv);
        if (tid == 0) kept[first] = 1;
        for (int j = tid; j < n; j += step) toSet[j] = dist[(long)first * n + j];
        Group.Barrier();
        for (int s = 1; s < k; s++)
        {
            bi = -1;
            bv = 0;
            for (int j = tid; j < n; j += step)
                if (kept[j] == 0 && (bi < 0 || toSet[j] > bv)) { bi = j; bv = toSet[j]; }
            int best = SelectionKernels.GroupBest(shv, shi, tid, step, bi, bv);
            if (tid == 0) kept[best] = 1;
            for (int j = tid; j < n; j += step)
            {
                float d = dist[(long)best * n + j];
                if (d < toSet[j]) toSet[j] = d;
            }
            Group.Barrier();
        }
        SelectionKernels.WriteKeptPlan(kept, keptLocal, kept, n, k, 0, 0, 0, 0, tid, step);
    }

    /// <summary>out[r] = Σ |x[rowStart + r, :]| in order (DART's key L1 norm, fp32 keys); one thread per row.</summary>
    internal static void RowL1Kernel(Index1D t, ArrayView<float> x, ArrayView<float> output, int rowStart, int width, ElementRange range)
    {
        for (long r = t; r < range.Count; r += range.Stride)
        {
            long o = (rowStart + r) * width;
            float s = 0;
            for (int c = 0; c < width; c++) s += XMath.Abs(x[o + c]);
            output[r] = s;
        }
    }

    /// <summary>
    /// DART in one group (<c>DartSelector.Select</c>): visual pivots (largest key L1 norm) are kept; for each pivot in turn
    /// (visual ones largest first, then text ones) the not-yet-kept visual rows least similar to it (cosine of the
    /// final-norm hidden states) are kept, quota (K - pivots_v) / pivots each, the last pivot filling to exactly K. Kept
    /// flags, kept rows ascending and the plan (prefix, kept, text) come out. norms [V], sim [V], pivots [pv + pt] and
    /// textKept [T] are scratch.
    /// </summary>
    internal static void DartKernel(ArrayView<float> visualNorms, ArrayView<float> textNorms, ArrayView<float> visualHidden, ArrayView<float> textHidden,
        ArrayView<float> norms, ArrayView<float> sim, ArrayView<int> pivots, ArrayView<int> textKept, ArrayView<int> kept, ArrayView<int> keptLocal,
        ArrayView<int> plan, DartShape p)
    {
        var shv = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var shi = SharedMemory.Allocate<int>(CudaKernels.MaxRowGroupSize);
        int tid = Group.IdxX, step = Group.DimX, V = p.V, T = p.T, D = p.Dim;
        int pv = XMath.Min(XMath.Max(0, p.VisualPivots), p.K), pt = XMath.Min(XMath.Max(0, p.TextPivots), T);
        for (int i = tid; i < V; i += step)
        {
            kept[i] = 0;
            float ss = 0;
            for (int c = 0; c < D; c++) { float x = visualHidden[(long)i * D + c]; ss += x * x; }
            norms[i] = XMath.Sqrt(ss);
        }
        Group.Barrier();
        for (int i = tid; i < T; i += step) textKept[i] = 0;
        Group.Barrier();
        // Visual pivots: the largest key norms, kept at once; text pivots likewise among the text rows.
        for (int m = 0; m < pv; m++)
        {
            int best = SelectionKernels.KeepBest(visualNorms, kept, V, shv, shi, tid, step);
            if (tid == 0) pivots[m] = best;
        }
        for (int m = 0; m < pt; m++)
        {
            int best = SelectionKernels.KeepBest(textNorms, textKept, T, shv, shi, tid, step);
            if (tid == 0) pivots[pv + m] = best;
        }
        Group.Barrier();
        int count = pv, total = pv + pt;
        if (total == 0)
        {
            // No pivot at all: the largest key norms (TopK.SelectInOrder).
            for (int m = 0; m < p.K; m++) SelectionKernels.KeepBest(visualNorms, kept, V, shv, shi, tid, step);
            count = p.K;
        }
        int quota = total == 0 ? 0 : (p.K - pv) / total;
        for (int pi = 0; pi < total; pi++)
        {
            int take = pi == total - 1 ? p.K - count : quota;
            if (take <= 0) continue;
            bool visualPivot = pi < pv;
            int row = pivots[pi];
            long po = (long)row * D;
            float pn2 = 0;
            for (int c = 0; c < D; c++) { float x = visualPivot ? visualHidden[po + c] : textHidden[po + c]; pn2 += x * x; }
            float pn = XMath.Sqrt(pn2);
            for (int i = tid; i < V; i += step)
            {
                if (kept[i] != 0) { sim[i] = float.NegativeInfinity; continue; }
                float denom = pn * norms[i], dot = 0;
                for (int c = 0; c < D; c++) dot += (visualPivot ? visualHidden[po + c] : textHidden[po + c]) * visualHidden[(long)i * D + c];
                sim[i] = -(denom > 0 ? dot / denom : 0f);
            }
            Group.Barrier();
            for (int m = 0; m < take; m++) SelectionKernels.KeepBest(sim, kept, V, shv, shi, tid, step);
            count += take;
        }
        SelectionKernels.WriteKeptPlan(kept, keptLocal, plan, V, p.K, p.Prefix, 0, T, 1, tid, step);
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, float, ElementRange>? _quantizedDistance;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>? _greedyMaxMin;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>? _rowL1;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, DartShape>? _dart;

    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, float, ElementRange> QuantizedDistanceK
        => _quantizedDistance ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, float, ElementRange>(AttentionFreeKernels.QuantizedDistanceKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int> GreedyMaxMinK
        => _greedyMaxMin ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>(AttentionFreeKernels.GreedyMaxMinKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange> RowL1K
        => _rowL1 ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>(AttentionFreeKernels.RowL1Kernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, DartShape> DartK
        => _dart ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, DartShape>(AttentionFreeKernels.DartKernel);

    private object[] AttentionFreeKernelsLoaded() => [QuantizedDistanceK, GreedyMaxMinK, RowL1K, DartK];

    /// <summary>DivPrune's symmetric quantized distance matrix from cosines (see <see cref="AttentionFreeKernels.QuantizedDistanceKernel"/>).</summary>
    public void QuantizedDistances(ArrayView<float> cos, ArrayView<float> dist, int n, float resolution)
    {
        Require(cos.Length >= (long)n * n && dist.Length >= (long)n * n && resolution > 0, "cos or dist too short.");
        if (n == 0) return;
        var r = Range((long)n * n);
        Counters.Launch();
        Queue.Enqueue(() => QuantizedDistanceK(Stream, Extent(r.Stride), cos, dist, n, resolution, r));
    }

    /// <summary>DivPrune's greedy max-min in one group: k of n rows, ascending in keptLocal.</summary>
    public void GreedyMaxMin(ArrayView<float> dist, ArrayView<float> toSet, ArrayView<int> kept, ArrayView<int> keptLocal, int n, int k)
    {
        Require(k >= 1 && k <= n, $"k ({k}) must be within 1..{n}.");
        Require(dist.Length >= (long)n * n && toSet.Length >= n && kept.Length >= n && keptLocal.Length >= k, "a view is too short for the greedy max-min.");
        Counters.Launch();
        Queue.Enqueue(() => GreedyMaxMinK(Stream, OneGroup(), dist, toSet, kept, keptLocal, n, k));
    }

    /// <summary>L1 norm of each of rows [rowStart, +rows) of fp32 x ([*, width]).</summary>
    public void RowL1(ArrayView<float> x, int rowStart, int rows, int width, ArrayView<float> output)
    {
        Require(x.Length >= (long)(rowStart + rows) * width && output.Length >= rows, "x or output too short.");
        if (rows == 0) return;
        var r = Range(rows);
        Counters.Launch();
        Queue.Enqueue(() => RowL1K(Stream, Extent(r.Stride), x, output, rowStart, width, r));
    }

    /// <summary>DART's selection and plan in one single-group launch (see <see cref="AttentionFreeKernels.DartKernel"/>).</summary>
    public void Dart(ArrayView<float> visualNorms, ArrayView<float> textNorms, ArrayView<float> visualHidden, ArrayView<float> textHidden, ArrayView<float> norms,
        ArrayView<float> sim, ArrayView<int> pivots, ArrayView<int> textKept, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, DartShape p)
    {
        Require(p.K >= 0 && p.K <= p.V, $"k ({p.K}) must be within 0..{p.V}.");
        Require(visualNorms.Length >= p.V && textNorms.Length >= p.T && visualHidden.Length >= (long)p.V * p.Dim && textHidden.Length >= (long)p.T * p.Dim
            && norms.Length >= p.V && sim.Length >= p.V && pivots.Length >= Math.Max(1, p.VisualPivots + p.TextPivots) && textKept.Length >= p.T
            && kept.Length >= p.V && keptLocal.Length >= Math.Max(1, p.K) && plan.Length >= p.Prefix + p.K + p.T, "a view is too short for DART.");
        Counters.Launch();
        Queue.Enqueue(() => DartK(Stream, OneGroup(), visualNorms, textNorms, visualHidden, textHidden, norms, sim, pivots, textKept, kept, keptLocal, plan, p));
    }
}
