using ILGPU;
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
    /// A prune's new sequence: row r of the destination takes source row plan[r] (≥ 0) or merged row -plan[r] - 1 of
    /// extra; its visual index follows (-2 for a merged row); its position is r (renumber) or the source row's position
    /// (a merged row takes the position of the row before it). When historyLength &gt; 0 the source's visual indices are
    /// also copied to history (the report reads them back at the end). One thread per element of the new hidden states.
    /// </summary>
    internal static void GatherSequenceKernel(Index1D t, ArrayView<float> srcX, ArrayView<float> extra, ArrayView<int> plan, ArrayView<float> dstX,
        ArrayView<int> srcPos, ArrayView<int> dstPos, ArrayView<int> srcVis, ArrayView<int> dstVis, ArrayView<int> history,
        GatherShape g, ElementRange range)
    {
        long cells = (long)g.Rows * g.Hidden;
        for (long e = t; e < range.Count; e += range.Stride)
        {
            if (e < cells)
            {
                long r = e / g.Hidden, c = e % g.Hidden;
                int p = plan[r];
                dstX[e] = p >= 0 ? srcX[(long)p * g.Hidden + c] : extra[(long)(-p - 1) * g.Hidden + c];
                if (c == 0)
                {
                    dstVis[r] = p >= 0 ? srcVis[p] : -2;
                    if (g.Renumber != 0) dstPos[r] = (int)r;
                    else
                    {
                        long j = r;
                        while (j >= 0 && plan[j] < 0) j--;
                        dstPos[r] = j >= 0 ? srcPos[plan[j]] : 0;
                    }
                }
            }
            if (e < g.HistoryLength) history[e] = srcVis[e];
        }
    }

    /// <summary>token[0] = id (the next decode step's input, written on the device so a graph can read it).</summary>
    internal static void SetTokenKernel(Index1D t, ArrayView<int> token, int id)
    {
        if (t == 0) token[0] = id;
    }
}

/// <summary>Sizes of a <see cref="SequenceKernels.GatherSequenceKernel"/> launch.</summary>
/// <param name="Rows">Rows of the new sequence.</param>
/// <param name="Hidden">Hidden size.</param>
/// <param name="Renumber">1: positions 0..Rows-1; 0: the kept rows' own positions.</param>
/// <param name="HistoryLength">Visual indices of the old sequence copied to history (0: none).</param>
internal readonly record struct GatherShape(int Rows, int Hidden, int Renumber, int HistoryLength);

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange>? _embedSequence;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, GatherShape, ElementRange>? _gatherSequence;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int>? _setToken;

    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange> EmbedSequenceK
        => _embedSequence ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, ElementRange>(SequenceKernels.EmbedSequenceKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, GatherShape, ElementRange> GatherSequenceK
        => _gatherSequence ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, GatherShape, ElementRange>(SequenceKernels.GatherSequenceKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int> SetTokenK
        => _setToken ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int>(SequenceKernels.SetTokenKernel);

    private object[] SequenceKernelsLoaded() => [EmbedSequenceK, GatherSequenceK, SetTokenK];

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
        EmbedSequenceK(Stream, Extent(r.Stride), table, images, src, x, positions, vis, visSource, hidden, hasVis, r);
    }

    /// <summary>Gathers a pruned sequence (see <see cref="SequenceKernels.GatherSequenceKernel"/>); one launch.</summary>
    public void GatherSequence(ArrayView<float> srcX, ArrayView<float> extra, ArrayView<int> plan, ArrayView<float> dstX,
        ArrayView<int> srcPos, ArrayView<int> dstPos, ArrayView<int> srcVis, ArrayView<int> dstVis, ArrayView<int> history, GatherShape shape)
    {
        CheckRows(shape.Rows, shape.Hidden, dstX.Length, nameof(dstX));
        Require(plan.Length >= shape.Rows && dstPos.Length >= shape.Rows && dstVis.Length >= shape.Rows, $"plan, positions and visual indices must hold {shape.Rows} rows.");
        Require(shape.HistoryLength <= Math.Min(history.Length, srcVis.Length), $"history ({history.Length}) must hold {shape.HistoryLength} visual indices.");
        long n = Math.Max((long)shape.Rows * shape.Hidden, shape.HistoryLength);
        if (n == 0) return;
        if (history.Length == 0) history = dstVis;
        var r = Range(n);
        Counters.Launch();
        GatherSequenceK(Stream, Extent(r.Stride), srcX, extra, plan, dstX, srcPos, dstPos, srcVis, dstVis, history, shape, r);
    }

    /// <summary>Writes a token id into device memory (one single-thread launch; no copy).</summary>
    public void SetToken(ArrayView<int> token, int id)
    {
        Counters.Launch();
        SetTokenK(Stream, Extent(1), token, id);
    }
}
