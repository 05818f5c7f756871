using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Sizes of a segment kernel launch: q, k, v [Rows, Heads·HeadDim] split into segments by the offsets
/// cu[0..Segments] (cu[0] = 0, cu[Segments] = Rows).
/// </summary>
/// <param name="FirstRow">The first query row of this launch (the fused attention runs in row chunks so its scores stay bounded).</param>
/// <param name="LaunchRows">Query rows of this launch: groups = Heads × LaunchRows.</param>
/// <param name="ScoreStride">Scores each group may write (the longest short segment).</param>
/// <param name="MaxPairs">Segments of more query × key pairs are left to another launch (the fused attention only).</param>
/// <param name="GroupRows">Key rows summed into one result (the received attention only).</param>
internal readonly record struct SegmentShape(int Rows, int Heads, int HeadDim, float Scale, int Segments, int FirstRow, int LaunchRows,
    int ScoreStride, long MaxPairs, int GroupRows)
{
    public int Dim => Heads * HeadDim;
}

/// <summary>
/// Attention within contiguous row segments (a vision tower's windows and images) in one launch for all segments, and
/// the attention each key row receives within its segment, with no atomics: every sum has a fixed order, so the result
/// is the same every run. The host twins are <see cref="Cpu.SegmentOps"/> (bit for bit with one thread per group, as on
/// ILGPU's CPU accelerator).
/// </summary>
internal static class SegmentKernels
{
    /// <summary>The segment s with cu[s] ≤ row &lt; cu[s + 1] (the last such s when empty segments share an offset).</summary>
    internal static int SegmentOf(ArrayView<int> cu, int segments, int row)
    {
        int lo = 0, hi = segments - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (cu[mid] <= row) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>
    /// Variable-length fused attention, one group per (head h, query row i), group index h·LaunchRows + (i − FirstRow):
    /// row i's segment [start, start + len) from cu, then <see cref="FusedAttentionKernels.ScoresSoftmaxValues"/> over
    /// that segment's keys (the fused kernel's arithmetic on the segment alone, so each segment gets exactly what
    /// <see cref="FusedAttentionKernels.FusedAttentionKernel"/> gives it). Rows of segments longer than MaxPairs allows
    /// are left alone (the caller runs those segments separately).
    /// </summary>
    internal static void VarlenFusedAttentionKernel(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<int> cu,
        ArrayView<float> scores, ArrayView<ushort> output, SegmentShape s)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int group = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int h = group / s.LaunchRows, i = s.FirstRow + group % s.LaunchRows;
        int seg = SegmentOf(cu, s.Segments, i);
        int start = cu[seg], len = cu[seg + 1] - start;
        if ((long)len * len > s.MaxPairs) return;                              // the whole group leaves together
        int dim = s.Dim, hd = s.HeadDim;
        long qo = (long)i * dim + (long)h * hd;
        FusedAttentionKernels.ScoresSoftmaxValues(sh, q, qo, k, v, (long)start * dim + (long)h * hd, dim, hd, s.Scale, len,
            scores, (long)group * s.ScoreStride, output, qo, tid, step);
    }

    /// <summary>
    /// Received attention, pass 1: one group per (head h, query row i), group index h·Rows + i: over row i's segment's
    /// keys j, s_ij = (Σ_d q·k in d order)·Scale, then stats[2·group] = max_j s_ij and stats[2·group + 1] =
    /// 1 / Σ_j exp(s_ij − max). q and k fp32 after RoPE.
    /// </summary>
    internal static void ReceivedRowStatsKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<int> cu, ArrayView<float> stats, SegmentShape s)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int group = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int h = group / s.Rows, i = group % s.Rows;
        int seg = SegmentOf(cu, s.Segments, i);
        int start = cu[seg], end = cu[seg + 1], dim = s.Dim, hd = s.HeadDim;
        long qo = (long)i * dim + (long)h * hd;
        float max = float.NegativeInfinity;
        for (int j = start + tid; j < end; j += step) max = XMath.Max(max, Dot(q, qo, k, (long)j * dim + (long)h * hd, hd) * s.Scale);
        max = CudaKernels.GroupMax(sh, max);
        float sum = 0;
        for (int j = start + tid; j < end; j += step) sum += XMath.Exp(Dot(q, qo, k, (long)j * dim + (long)h * hd, hd) * s.Scale - max);
        float inv = 1f / CudaKernels.GroupSum(sh, sum);
        if (tid == 0)
        {
            stats[2L * group] = max;
            stats[2L * group + 1] = inv;
        }
    }

    /// <summary>
    /// Received attention, pass 2: one group per g of GroupRows consecutive key rows (all in one segment of length len):
    /// result[g] = (Σ over its columns j, heads h and the segment's query rows i, in that nesting, of
    /// exp(s_ij − max_hi)·inv_hi) · (1 / (len·Heads)). Each thread adds a strided share of that index space in order; the
    /// shares are combined by the group's tree (one thread per group adds everything in order).
    /// </summary>
    internal static void ReceivedColumnsKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<int> cu, ArrayView<float> stats, ArrayView<float> result, SegmentShape s)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        int g = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int j0 = g * s.GroupRows;
        int seg = SegmentOf(cu, s.Segments, j0);
        int start = cu[seg], len = cu[seg + 1] - start, dim = s.Dim, hd = s.HeadDim;
        long perColumn = (long)s.Heads * len, total = s.GroupRows * perColumn;
        float acc = 0;
        for (long e = tid; e < total; e += step)
        {
            int c = (int)(e / perColumn), rem = (int)(e % perColumn);
            int h = rem / len, i = start + rem % len, j = j0 + c;
            long stat = 2L * ((long)h * s.Rows + i);
            acc += XMath.Exp(Dot(q, (long)i * dim + (long)h * hd, k, (long)j * dim + (long)h * hd, hd) * s.Scale - stats[stat]) * stats[stat + 1];
        }
        acc = CudaKernels.GroupSum(sh, acc);
        if (tid == 0) result[g] = acc * (1f / (len * s.Heads));
    }

    /// <summary>Σ_d a[ao + d]·b[bo + d] added in d order.</summary>
    private static float Dot(ArrayView<float> a, long ao, ArrayView<float> b, long bo, int n)
    {
        float r = 0;
        for (int d = 0; d < n; d++) r += a[ao + d] * b[bo + d];
        return r;
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, SegmentShape>? _varlenFused;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, SegmentShape>? _receivedStats;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SegmentShape>? _receivedColumns;

    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, SegmentShape> VarlenFusedK
        => _varlenFused ??= _acc.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, ArrayView<ushort>, SegmentShape>(SegmentKernels.VarlenFusedAttentionKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, SegmentShape> ReceivedStatsK
        => _receivedStats ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, SegmentShape>(SegmentKernels.ReceivedRowStatsKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SegmentShape> ReceivedColumnsK
        => _receivedColumns ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SegmentShape>(SegmentKernels.ReceivedColumnsKernel);

    private object[] SegmentKernelsLoaded() => [VarlenFusedK, ReceivedStatsK, ReceivedColumnsK];

    private bool? _segmentKernelsOnHost;

    /// <summary>
    /// On ILGPU's CPU accelerator (the default there) the segment kernels run their host twins
    /// (<see cref="Cpu.SegmentOps"/>) on the device memory in the kernels' place, counted as the same launches, as
    /// <see cref="TiledAttentionOnHost"/> does: the emulator spends about 0.2 ms on each one-thread group's barriers, so a
    /// vision tower's windowed block (a group per head and patch) would take most of a second. Tests set false to run the
    /// kernels themselves and compare them with the twins.
    /// </summary>
    public bool SegmentKernelsOnHost
    {
        get => _segmentKernelsOnHost ?? _acc.AcceleratorType == AcceleratorType.CPU;
        set
        {
            if (value && _acc.AcceleratorType != AcceleratorType.CPU)
                throw new ArgumentException("The host twins read device memory directly and run only on ILGPU's CPU accelerator.", nameof(value));
            _segmentKernelsOnHost = value;
        }
    }

    private static unsafe Span<T> HostSpan<T>(ArrayView<T> v, long length) where T : unmanaged => new((void*)DeviceBlas.Ptr(v), checked((int)length));

    private static float[] Widen(ArrayView<ushort> x, long n)
    {
        var w = new float[n];
        System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<ushort, System.Half>(HostSpan(x, n)), w);
        return w;
    }

    /// <summary>
    /// The host twin of one <see cref="VarlenFusedAttention"/> launch: each short segment starting in the launch's rows
    /// through <see cref="Cpu.DeviceNumerics.FusedAttention"/> (a segment continuing past the rows is finished here; its
    /// rows in the next launch get the same values again).
    /// </summary>
    private void VarlenFusedOnTheHost(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<int> cu, ArrayView<ushort> output, SegmentShape s)
    {
        _acc.Synchronize(); // what was queued before has written q, k and v
        var offsets = HostSpan(cu, s.Segments + 1).ToArray();
        long values = (long)s.Rows * s.Dim;
        var qh = Widen(q, values);
        var kh = Widen(k, values);
        var vh = Widen(v, values);
        var o = HostSpan(output, values);
        for (int i = 0; i < s.Segments; i++)
        {
            int start = offsets[i], len = offsets[i + 1] - start;
            if (len == 0 || (long)len * len > s.MaxPairs || start < s.FirstRow || start >= s.FirstRow + s.LaunchRows) continue;
            int a = start * s.Dim, m = len * s.Dim;
            var r = new float[m];
            Cpu.DeviceNumerics.FusedAttention(qh.AsSpan(a, m), kh.AsSpan(a, m), vh.AsSpan(a, m), r, len, len, s.Heads, s.Heads, s.HeadDim, causal: false);
            System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(r, System.Runtime.InteropServices.MemoryMarshal.Cast<ushort, System.Half>(o.Slice(a, m)));
        }
    }

    /// <summary>The host twin of <see cref="ReceivedAttention"/>'s two launches (<see cref="Cpu.SegmentOps.ReceivedMatchDevice"/>).</summary>
    private void ReceivedOnTheHost(ArrayView<float> q, ArrayView<float> k, ArrayView<int> cu, ArrayView<float> result, SegmentShape s)
    {
        _acc.Synchronize();
        var offsets = HostSpan(cu, s.Segments + 1).ToArray();
        long values = (long)s.Rows * s.Dim;
        Cpu.SegmentOps.ReceivedMatchDevice(HostSpan(q, values), HostSpan(k, values), s.Heads, s.HeadDim, offsets, s.GroupRows, HostSpan(result, s.Rows / s.GroupRows));
    }

    /// <summary>
    /// See <see cref="SegmentKernels.VarlenFusedAttentionKernel"/>: query rows [FirstRow, FirstRow + LaunchRows) of every
    /// segment of at most MaxPairs query × key pairs, in one launch; scores must hold Heads × LaunchRows × ScoreStride values.
    /// </summary>
    public void VarlenFusedAttention(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<int> cu, ArrayView<float> scores,
        ArrayView<ushort> output, SegmentShape s)
    {
        long groups = (long)s.Heads * s.LaunchRows;
        Require(groups <= int.MaxValue, $"{groups} attention rows exceed a grid of 2^31 - 1 groups.");
        Require(s.FirstRow >= 0 && s.FirstRow + s.LaunchRows <= s.Rows && cu.Length >= s.Segments + 1, $"rows [{s.FirstRow}, {s.FirstRow + s.LaunchRows}) of {s.Rows} or {s.Segments} segments do not fit.");
        Require(scores.Length >= groups * s.ScoreStride, $"scores ({scores.Length}) must hold {s.Heads} × {s.LaunchRows} × {s.ScoreStride} values.");
        long values = (long)s.Rows * s.Dim;
        Require(q.Length >= values && k.Length >= values && v.Length >= values && output.Length >= values, $"q, k, v and output must hold {s.Rows} rows of {s.Dim}.");
        if (groups == 0) return;
        Counters.Launch();
        if (SegmentKernelsOnHost) Queue.Enqueue(() => VarlenFusedOnTheHost(q, k, v, cu, output, s));
        else Queue.Enqueue(() => VarlenFusedK(Stream, RowConfig((int)groups), q, k, v, cu, scores, output, s));
    }

    /// <summary>
    /// See <see cref="SegmentKernels.ReceivedRowStatsKernel"/> and <see cref="SegmentKernels.ReceivedColumnsKernel"/>: two
    /// launches; stats holds 2 × Heads × Rows values, result Rows / GroupRows.
    /// </summary>
    public void ReceivedAttention(ArrayView<float> q, ArrayView<float> k, ArrayView<int> cu, ArrayView<float> stats, ArrayView<float> result, SegmentShape s)
    {
        long rowGroups = (long)s.Heads * s.Rows;
        Require(rowGroups <= int.MaxValue, $"{rowGroups} attention rows exceed a grid of 2^31 - 1 groups.");
        Require(s.GroupRows > 0 && s.Rows % s.GroupRows == 0, $"{s.Rows} rows are not whole groups of {s.GroupRows}.");
        long values = (long)s.Rows * s.Dim;
        Require(q.Length >= values && k.Length >= values && cu.Length >= s.Segments + 1, $"q and k must hold {s.Rows} rows of {s.Dim} and cu {s.Segments + 1} offsets.");
        Require(stats.Length >= 2 * rowGroups && result.Length >= s.Rows / s.GroupRows, "stats or result too short.");
        if (s.Rows == 0) return;
        Counters.Launch(2);
        if (SegmentKernelsOnHost) Queue.Enqueue(() => ReceivedOnTheHost(q, k, cu, result, s));
        else
        {
            Queue.Enqueue(() => ReceivedStatsK(Stream, RowConfig((int)rowGroups), q, k, cu, stats, s));
            Queue.Enqueue(() => ReceivedColumnsK(Stream, RowConfig(s.Rows / s.GroupRows), q, k, cu, stats, result, s));
        }
    }
}
