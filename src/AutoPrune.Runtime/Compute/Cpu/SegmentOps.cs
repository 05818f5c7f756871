using System.Numerics.Tensors;

namespace AutoPrune.Compute.Cpu;

/// <summary>
/// Attention within contiguous row segments on the CPU (a vision tower's windows and images): the attention itself, and
/// the attention each key row receives (the signal that stands in for [CLS] attention in a tower without a [CLS] token).
/// The fp32 forms are the CPU engine's; the <c>MatchDevice</c> forms repeat the device kernels' arithmetic
/// (<see cref="Cuda.SegmentKernels"/>) in their order with one thread per group, as ILGPU's CPU accelerator runs them.
/// </summary>
internal static class SegmentOps
{
    private const int BlockRows = 64;

    /// <summary>
    /// o = softmax(q kᵀ / √hd) v within each segment [offsets[s], offsets[s + 1]) of rows, q, k, v, o [rows, heads·hd]:
    /// each segment as <see cref="Attention.MultiHead"/> on its rows alone (with <paramref name="matchDevice"/>, the
    /// device's choice of kernel and arithmetic for that length).
    /// </summary>
    public static void Attend(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o, int heads, int hd,
        ReadOnlySpan<int> offsets, bool matchDevice)
    {
        int dim = heads * hd;
        for (int s = 0; s + 1 < offsets.Length; s++)
        {
            int start = offsets[s], len = offsets[s + 1] - start;
            if (len <= 0) continue;
            Attention.MultiHead(q.Slice(start * dim, len * dim), k.Slice(start * dim, len * dim), v.Slice(start * dim, len * dim),
                o.Slice(start * dim, len * dim), len, len, heads, heads, hd, causal: false, matchDevice);
        }
    }

    /// <summary>
    /// fp32: <paramref name="received"/>[j] += the attention key row j receives within its segment, softmax(q kᵀ / √hd)
    /// summed over the segment's query rows, divided by (segment length · heads), summed over heads. Scores are computed
    /// 64 query rows at a time with the blocked GEMM, so only a [64, segment] tile exists per head; heads run in parallel
    /// into their own float64 column sums, added in head order (the result does not depend on the thread count).
    /// </summary>
    public static void Received(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int heads, int hd, ReadOnlySpan<int> offsets, Span<float> received)
    {
        int dim = heads * hd;
        float scale = 1f / MathF.Sqrt(hd);
        var isa = Gemm.DetectedIsa;
        var qa = q.ToArray();
        var ka = k.ToArray();
        for (int s = 0; s + 1 < offsets.Length; s++)
        {
            int start = offsets[s], len = offsets[s + 1] - offsets[s];
            if (len <= 0) continue;
            var sums = new double[heads][];
            Parallel.For(0, heads, ComputeScheduler.Options(), h =>
            {
                var colSum = new double[len];
                var tile = System.Buffers.ArrayPool<float>.Shared.Rent(BlockRows * len);
                try
                {
                    for (int r0 = 0; r0 < len; r0 += BlockRows)
                    {
                        int rows = Math.Min(BlockRows, len - r0);
                        var sc = tile.AsSpan(0, rows * len);
                        Gemm.MatMulTransBCore(qa.AsSpan((start + r0) * dim + h * hd), dim, rows, hd, ka.AsSpan(start * dim + h * hd), dim, len,
                            sc, len, default, false, isa, 1);
                        for (int i = 0; i < rows; i++)
                        {
                            var row = sc.Slice(i * len, len);
                            TensorPrimitives.Multiply(row, scale, row);
                            CpuOps.Softmax(row);
                            for (int j = 0; j < len; j++) colSum[j] += row[j];
                        }
                    }
                }
                finally { System.Buffers.ArrayPool<float>.Shared.Return(tile); }
                sums[h] = colSum;
            });
            double norm = 1.0 / ((double)len * heads);
            for (int j = 0; j < len; j++)
            {
                double t = 0;
                for (int h = 0; h < heads; h++) t += sums[h][j];
                received[start + j] += (float)(t * norm);
            }
        }
    }

    /// <summary>
    /// The device's received attention (<see cref="Cuda.SegmentKernels.ReceivedRowStatsKernel"/> then
    /// <see cref="Cuda.SegmentKernels.ReceivedColumnsKernel"/>, one thread per group): per head h and query row i, over
    /// its segment's keys j in order, s_ij = (Σ_d q·k in d order)·scale, m = max s_ij, inv = 1 / Σ_j exp(s_ij − m);
    /// then for each group g of <paramref name="groupRows"/> rows, acc = Σ over its columns j, heads h and the segment's
    /// rows i (in that nesting, in order) of exp(s_ij − m_hi)·inv_hi, and result[g] = acc · (1 / (len · heads)).
    /// </summary>
    public static void ReceivedMatchDevice(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int heads, int hd, ReadOnlySpan<int> offsets, int groupRows, Span<float> result)
    {
        int dim = heads * hd, rows = offsets[^1];
        float scale = 1f / MathF.Sqrt(hd);
        var qa = q[..(rows * dim)].ToArray();
        var ka = k[..(rows * dim)].ToArray();
        var segmentOf = new int[rows];
        for (int s = 0; s + 1 < offsets.Length; s++)
            for (int r = offsets[s]; r < offsets[s + 1]; r++) segmentOf[r] = s;
        var offs = offsets.ToArray();
        var max = new float[heads * rows];
        var inv = new float[heads * rows];
        Parallel.For(0, heads * rows, ComputeScheduler.Options(), t =>
        {
            int h = t / rows, i = t % rows, s = segmentOf[i], start = offs[s], end = offs[s + 1];
            float m = float.NegativeInfinity;
            for (int j = start; j < end; j++) m = MathF.Max(m, Dot(qa, i * dim + h * hd, ka, j * dim + h * hd, hd) * scale);
            float sum = 0;
            for (int j = start; j < end; j++) sum += MathF.Exp(Dot(qa, i * dim + h * hd, ka, j * dim + h * hd, hd) * scale - m);
            max[t] = m;
            inv[t] = 1f / sum;
        });
        int groups = rows / groupRows;
        var res = new float[groups];
        Parallel.For(0, groups, ComputeScheduler.Options(), g =>
        {
            int j0 = g * groupRows, s = segmentOf[j0], start = offs[s], len = offs[s + 1] - start;
            float acc = 0;
            for (int c = 0; c < groupRows; c++)
            {
                int j = j0 + c;
                for (int h = 0; h < heads; h++)
                    for (int i = start; i < start + len; i++)
                        acc += MathF.Exp(Dot(qa, i * dim + h * hd, ka, j * dim + h * hd, hd) * scale - max[h * rows + i]) * inv[h * rows + i];
            }
            res[g] = acc * (1f / (len * heads));
        });
        res.CopyTo(result);
    }

    /// <summary>Σ_d a[ao + d]·b[bo + d] added in d order (the kernels' dot product).</summary>
    private static float Dot(float[] a, int ao, float[] b, int bo, int n)
    {
        float s = 0;
        for (int d = 0; d < n; d++) s += a[ao + d] * b[bo + d];
        return s;
    }

    /// <summary>
    /// Checks what <see cref="Backend.ReceivedAttention"/> requires of its segments: every offset a multiple of
    /// <paramref name="groupRows"/> (no group crosses a segment boundary) and no empty segment.
    /// </summary>
    public static void CheckGroups(RowSegments segments, int groupRows)
    {
        if (groupRows < 1) throw new ArgumentOutOfRangeException(nameof(groupRows), groupRows, "Rows per group must be at least 1.");
        for (int s = 0; s < segments.Count; s++)
        {
            if (segments.Offsets[s + 1] % groupRows != 0)
                throw new ArgumentException($"Segment {s} ends at row {segments.Offsets[s + 1]}, not a multiple of {groupRows} rows per group: a group would cross it.", nameof(segments));
            if (segments.Length(s) == 0) throw new ArgumentException($"Segment {s} is empty.", nameof(segments));
        }
    }
}
