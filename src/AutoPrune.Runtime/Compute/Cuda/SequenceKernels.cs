using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Kernels that build and reshape the prefill sequence on the device: token embeddings gathered from the fp16 table with
/// the image rows scattered in, and the rows a prune keeps (hidden states, positions, visual indices) gathered into the
/// next buffers. Only token ids go up; nothing comes back.
/// </summary>
internal static class SequenceKernels
{
    /// <summary>
    /// x[r, :] = the embedding of token src[r] (src[r] ≥ 0, fp16 table widened exactly) or image row -src[r] - 1 (fp32);
    /// positions[r] = r; vis[r] = -1 for a token, and for an image row imageVisual[image row] when hasVis, else the image row.
    /// One thread per element of x (grid-stride).
    /// </summary>
    internal static void EmbedSequenceKernel(Index1D t, ArrayView<ushort> table, ArrayView<float> images, ArrayView<int> src, ArrayView<float> x,
        ArrayView<int> positions, ArrayView<int> vis, ArrayView<int> visSource, int hidden, int hasVis, ElementRange range)
    {
        for (long e = t; e < range.Count; e += range.Stride)
        {
            long r = e / hidden, c = e % hidden;
            int s = src[r];
            x[e] = s >= 0 ? CudaKernels.HalfBitsToFloat(table[(long)s * hidden + c]) : images[(long)(-s - 1) * hidden + c];
            if (c == 0)
            {
                positions[r] = (int)r;
                vis[r] = s >= 0 ? -1 : hasVis != 0 ? visSource[-s - 1] : -s - 1;
            }
        }
    }

    /// <summary>
    /// A prune's new sequence and the next layer's input RMSNorm in one launch, one group per new row r (Grid.IdxX).
    /// Row r takes source row plan[r] (≥ 0) or merged row -plan[r] - 1 of extra; its visual index follows (-2 for a merged
    /// row); its position is r (renumber) or the source row's position (a merged row takes the position of the row before
    /// it), in every one of g.Components position components (positions [Components, rows]). When historyLength &gt; 0 the source's visual indices are also copied to history (the report reads them back
    /// at the end). The row is gathered into dstX and xn[r] = fp16(RMSNorm(row) · weight) with the reduction of
    /// <see cref="CudaKernels.RmsNormToHalfKernel"/> (same threads, same order: the same bits), so the next layer skips its
    /// norm. With QkvWidth &gt; 0 the next layer's q|k|v projection (srcQkv, [old rows, QkvWidth], computed by a prune
    /// that needed it) is gathered into dstQkv instead, and the next layer skips its norm and its q|k|v GEMM. The
    /// history copy is spread over every thread of the grid.
    /// </summary>
    internal static void GatherSequenceNormedKernel(ArrayView<float> srcX, ArrayView<float> extra, ArrayView<int> plan, ArrayView<float> dstX,
        ArrayView<int> srcPos, ArrayView<int> dstPos, ArrayView<int> srcVis, ArrayView<int> dstVis, ArrayView<int> history,
        NextLayerInput next, GatherShape g)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int r = Grid.IdxX, tid = Group.IdxX, step = Group.DimX, dim = g.Hidden;
        int p = plan[r];
        long o = (long)r * dim, so = p >= 0 ? (long)p * dim : (long)(-p - 1) * dim;
        var src = p >= 0 ? srcX : extra;
        float ss = 0;
        for (int c = tid; c < dim; c += step) { float v = src[so + c]; dstX[o + c] = v; ss += v * v; }
        if (g.QkvWidth > 0)
        {
            // The next layer's q|k|v was computed before the prune (every plan entry is a source row): gather it instead.
            long w = g.QkvWidth;
            for (long c = tid; c < w; c += step) next.DstQkv[r * w + c] = next.SrcQkv[p * w + c];
        }
        else
        {
            ss = CudaKernels.GroupSum(sh, ss);
            float inv = 1f / XMath.Sqrt(ss / dim + next.Eps);
            for (int c = tid; c < dim; c += step) next.Xn[o + c] = CudaKernels.FloatToHalfBits(dstX[o + c] * inv * next.Weight[c]);
        }
        if (tid == 0)
        {
            dstVis[r] = p >= 0 ? srcVis[p] : -2;
            if (g.Renumber != 0)
            {
                for (int c = 0; c < g.Components; c++) dstPos[(long)c * g.Rows + r] = r;
            }
            else
            {
                long j = r;
                while (j >= 0 && plan[j] < 0) j--;
                for (int c = 0; c < g.Components; c++) dstPos[(long)c * g.Rows + r] = j >= 0 ? srcPos[(long)c * g.SourceRows + plan[j]] : 0;
            }
        }
        for (long e = (long)r * step + tid; e < g.HistoryLength; e += (long)Grid.DimX * step) history[e] = srcVis[e];
    }

    /// <summary>token[0] = id (the next decode step's input, written on the device so a graph can read it).</summary>
    internal static void SetTokenKernel(Index1D t, ArrayView<int> token, int id)
    {
        if (t == 0) token[0] = id;
    }
}

/// <summary>What a prune's gather prepares for the next layer: its input norm (Xn from Weight, Eps) or its gathered q|k|v.</summary>
internal readonly record struct NextLayerInput(ArrayView<ushort> Xn, ArrayView<float> Weight, float Eps, ArrayView<float> SrcQkv, ArrayView<float> DstQkv);

/// <summary>Sizes of a <see cref="SequenceKernels.GatherSequenceNormedKernel"/> launch.</summary>
/// <param name="Rows">Rows of the new sequence.</param>
/// <param name="Hidden">Hidden size.</param>
/// <param name="Renumber">1: positions 0..Rows-1; 0: the kept rows' own positions.</param>
/// <param name="HistoryLength">Visual indices of the old sequence copied to history (0: none).</param>
/// <param name="QkvWidth">Width of a q|k|v projection gathered with the rows (0: none; the next layer's norm is written instead).</param>
/// <param name="Components">Position components per row (positions [Components, rows]).</param>
/// <param name="SourceRows">Rows of the old sequence (the stride of its position components; only read when Components &gt; 1).</param>
internal readonly record struct GatherShape(int Rows, int Hidden, int Renumber, int HistoryLength, int QkvWidth = 0, int Components = 1, int SourceRows = 0);

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange>? _embedSequence;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int>? _setToken;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NextLayerInput, GatherShape>? _gatherSequenceNormed;

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NextLayerInput, GatherShape> GatherSequenceNormedK
        => _gatherSequenceNormed ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NextLayerInput, GatherShape>(SequenceKernels.GatherSequenceNormedKernel);

    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange> EmbedSequenceK
        => _embedSequence ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange>(SequenceKernels.EmbedSequenceKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int> SetTokenK
        => _setToken ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int>(SequenceKernels.SetTokenKernel);

    private object[] SequenceKernelsLoaded() => [EmbedSequenceK, GatherSequenceNormedK, SetTokenK];

    /// <summary>
    /// Builds the prefill sequence (see <see cref="SequenceKernels.EmbedSequenceKernel"/>): x [rows, hidden] fp32 from
    /// the fp16 embedding table and the image rows; positions 0..rows-1; image rows' visual indices from
    /// <paramref name="imageVisual"/> (one per image row), or the image row itself when that view is empty.
    /// </summary>
    public void EmbedSequence(ArrayView<ushort> table, ArrayView<float> images, ArrayView<int> src, int rows, int hidden,
        ArrayView<float> x, ArrayView<int> positions, ArrayView<int> vis, ArrayView<int> imageVisual)
    {
        CheckRows(rows, hidden, x.Length, nameof(x));
        Require(src.Length >= rows && positions.Length >= rows && vis.Length >= rows, $"src, positions and vis must hold {rows} rows.");
        int hasVis = imageVisual.Length > 0 ? 1 : 0;
        var visSource = hasVis != 0 ? imageVisual : src;
        if (rows == 0) return;
        var r = Range((long)rows * hidden);
        Counters.Launch();
        Queue.Enqueue(() => EmbedSequenceK(Stream, Extent(r.Stride), table, images, src, x, positions, vis, visSource, hidden, hasVis, r));
    }

    /// <summary>
    /// Gathers a pruned sequence and normalizes it for the next layer (see <see cref="SequenceKernels.GatherSequenceNormedKernel"/>):
    /// xn [rows, hidden] = fp16(RMSNorm(new rows) · weight), bit for bit what <see cref="RmsNormToHalf"/> would give; one launch.
    /// </summary>
    public void GatherSequenceNormed(ArrayView<float> srcX, ArrayView<float> extra, ArrayView<int> plan, ArrayView<float> dstX,
        ArrayView<int> srcPos, ArrayView<int> dstPos, ArrayView<int> srcVis, ArrayView<int> dstVis, ArrayView<int> history,
        ArrayView<ushort> xn, ArrayView<float> weight, float eps, GatherShape shape, ArrayView<float> srcQkv = default, ArrayView<float> dstQkv = default)
    {
        CheckRows(shape.Rows, shape.Hidden, dstX.Length, nameof(dstX));
        if (shape.QkvWidth > 0) CheckRows(shape.Rows, shape.QkvWidth, dstQkv.Length, nameof(dstQkv));
        else srcQkv = dstQkv = dstX; // (unused)
        CheckRows(shape.Rows, shape.Hidden, xn.Length, nameof(xn));
        Require(weight.Length >= shape.Hidden, $"weight has {weight.Length} elements, fewer than hidden ({shape.Hidden}).");
        Require(plan.Length >= shape.Rows && dstPos.Length >= (long)shape.Components * shape.Rows && dstVis.Length >= shape.Rows, $"plan, positions and visual indices must hold {shape.Rows} rows.");
        Require(shape.Components == 1 || (shape.SourceRows > 0 && srcPos.Length >= (long)shape.Components * shape.SourceRows), $"source positions must hold {shape.Components} components of {shape.SourceRows} rows.");
        Require(shape.HistoryLength <= Math.Min(history.Length, srcVis.Length), $"history ({history.Length}) must hold {shape.HistoryLength} visual indices.");
        if (shape.Rows == 0) return;
        if (history.Length == 0) history = dstVis;
        Counters.Launch();
        Queue.Enqueue(() => GatherSequenceNormedK(Stream, RowConfig(shape.Rows), srcX, extra, plan, dstX, srcPos, dstPos, srcVis, dstVis, history, new NextLayerInput(xn, weight, eps, srcQkv, dstQkv), shape));
    }

    /// <summary>Writes a token id into device memory (one single-thread launch; no copy).</summary>
    public void SetToken(ArrayView<int> token, int id)
    {
        Counters.Launch();
        Queue.Enqueue(() => SetTokenK(Stream, Extent(1), token, id));
    }
}
