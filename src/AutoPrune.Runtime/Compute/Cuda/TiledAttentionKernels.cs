using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Long attention (a full prompt's layers, the vision tower) in one launch on the tensor cores: one warp per 16 query
/// rows of one head, <c>mma.sync.m16n8k16</c> (fp16 inputs, fp32 accumulators) for q·kᵀ and for p·v, no score matrix
/// in memory. It replaces the two cuBLAS calls and the softmax of the GEMM path (3 launches, a score and a probability
/// matrix through L2). Two passes over the keys: the first finds each row's maximum score, the second recomputes the
/// scores and accumulates exp(score − max), rounded to fp16, times the values.
/// <para>
/// The arithmetic, fixed so that the host can repeat it bit for bit (<see cref="Cpu.DeviceNumerics.TiledAttention"/>),
/// per query row i and head h over its visible keys j &lt; limit(i):
/// s_j = (Σ_d q_d·k_jd in d order, fp32) · scale; m = max_j s_j; e_j = exp(s_j − m);
/// sum = (P0 + P1) + (P2 + P3) where P_t adds, in j order, the e_j with (j mod 8) div 2 = t (the four lanes of a quad
/// each own two of every eight keys); out_d = fp16((Σ_j fp16(e_j)·v_jd in j order, fp32) · (1 / sum)).
/// A tensor core sums its 16 products in an order of its own, so on a GPU s_j and the value sums can differ from that
/// in the last bits, as cuBLAS's do (the model checks that at load, <see cref="CudaOps.TiledAttentionSelfCheck"/>); the
/// emulated mma below adds them in k order, so on a CPU accelerator the result is the host's, bit for bit.
/// </para>
/// <para>
/// Where it runs: on a CUDA device, one warp per group with inline PTX (<see cref="CudaAsm"/>); on a CPU accelerator
/// with 32-thread warps (tests), the same kernel with each <c>mma</c> emulated from the lanes' fragments through shared
/// memory, which checks the fragment layouts the PTX relies on against the host twin, bit for bit. The engine's
/// <c>ilgpu-cpu</c> device runs the host twin in the kernel's place, as it runs a host GEMM in cuBLAS's: ILGPU's CPU
/// accelerator takes about 0.3 ms per barrier of a 32-thread group, which the emulated mma needs twice per call.
/// </para>
/// </summary>
internal static class TiledAttentionKernels
{
    /// <summary>Query rows per group (the m of m16n8k16).</summary>
    internal const int TileRows = 16;

    /// <summary>Threads per group in the tensor-core form: one warp.</summary>
    internal const int WarpLanes = 32;

    /// <summary>The largest head dimension the kernel takes (per-thread accumulators are sized for it).</summary>
    internal const int MaxHeadDim = 256;

    /// <summary>Head dimensions the kernel takes: multiples of 16 (the k of m16n8k16) up to <see cref="MaxHeadDim"/>.</summary>
    internal static bool Fits(int headDim) => headDim > 0 && headDim % 16 == 0 && headDim <= MaxHeadDim;

    /// <summary>Groups of a launch: one per head and 16 query rows.</summary>
    internal static long Groups(int heads, int nq) => (long)heads * ((nq + TileRows - 1) / TileRows);

    /// <summary>
    /// The tensor-core form, one warp (32 threads) per group: group Grid.IdxX = h·tiles + tile holds query rows
    /// tile·16 .. tile·16 + 15 of head h (kv head h / (QHeads / KvHeads)). q, output: fp16 [nq, QHeads·hd]; k, v: fp16
    /// [nk, KvHeads·hd]. Query i sees keys ≤ causalOffset + i, or all when causalOffset &lt; 0.
    /// </summary>
    internal static void TiledAttentionKernel(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output,
        AttentionShape s, int causalOffset)
    {
        int tiles = (s.Nq + TileRows - 1) / TileRows;
        WarpTile(q, k, v, output, s, causalOffset, Grid.IdxX / tiles, Grid.IdxX % tiles * TileRows);
    }

    /// <summary>Keys row <paramref name="row"/> sees: 0 for a row past the last (a partial tile's padding).</summary>
    private static int Visible(AttentionShape s, int causalOffset, int row)
        => row >= s.Nq ? 0 : causalOffset >= 0 ? XMath.Min(s.Nk, causalOffset + row + 1) : s.Nk;

    /// <summary>
    /// One warp, the PTX ISA's m16n8k16 fragments: lane = 4·g + t holds query rows r0 = i0 + g and r1 = r0 + 8, and of
    /// every 8 keys (or value columns) the two at 2t and 2t + 1. Every lane runs every mma (loop bounds are the
    /// group's); per-lane conditions only select values.
    /// </summary>
    private static void WarpTile(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output,
        AttentionShape s, int causalOffset, int h, int i0)
    {
        var shA = SharedMemory.Allocate<float>(16 * 16);       // the mma emulation's A and B (CPU accelerator only)
        var shB = SharedMemory.Allocate<float>(16 * 8);
        var acc = LocalMemory.Allocate<float>(MaxHeadDim / 2);  // [value column tile][4]: this lane's share of 16 × hd
        int lane = Group.IdxX, g = lane >> 2, t = lane & 3;
        int hd = s.HeadDim, nk = s.Nk;
        long kvo = (long)(h / (s.QHeads / s.KvHeads)) * hd;
        int r0 = i0 + g, r1 = r0 + 8;
        int lim0 = Visible(s, causalOffset, r0), lim1 = Visible(s, causalOffset, r1);
        int keys = Visible(s, causalOffset, XMath.Min(i0 + TileRows, s.Nq) - 1);   // the tile's last row sees the most
        long q0 = r0 < s.Nq ? (long)r0 * s.QStride + (long)h * hd : -1;
        long q1 = r1 < s.Nq ? (long)r1 * s.QStride + (long)h * hd : -1;

        float m0 = float.NegativeInfinity, m1 = float.NegativeInfinity;
        for (int jt = 0; jt < keys; jt += 16)
        {
            for (int u = 0; u < 2; u++)
            {
                int ja = jt + 8 * u + 2 * t;
                var sc = Scores(q, q0, q1, k, jt + 8 * u, s, kvo, g, t, shA, shB);
                if (ja < lim0) m0 = XMath.Max(m0, sc.X0);
                if (ja + 1 < lim0) m0 = XMath.Max(m0, sc.X1);
                if (ja < lim1) m1 = XMath.Max(m1, sc.X2);
                if (ja + 1 < lim1) m1 = XMath.Max(m1, sc.X3);
            }
        }
        m0 = XMath.Max(m0, Warp.ShuffleXor(m0, 1));
        m0 = XMath.Max(m0, Warp.ShuffleXor(m0, 2));
        m1 = XMath.Max(m1, Warp.ShuffleXor(m1, 1));
        m1 = XMath.Max(m1, Warp.ShuffleXor(m1, 2));

        int dimTiles = hd / 8;
        for (int c = 0; c < 4 * dimTiles; c++) acc[c] = 0f;
        float sum0 = 0f, sum1 = 0f;
        for (int jt = 0; jt < keys; jt += 16)
        {
            var lo = Scores(q, q0, q1, k, jt, s, kvo, g, t, shA, shB);
            var hi = Scores(q, q0, q1, k, jt + 8, s, kvo, g, t, shA, shB);
            int ja = jt + 2 * t, jb = ja + 8;
            float e00 = ja < lim0 ? XMath.Exp(lo.X0 - m0) : 0f, e01 = ja + 1 < lim0 ? XMath.Exp(lo.X1 - m0) : 0f;
            float e10 = ja < lim1 ? XMath.Exp(lo.X2 - m1) : 0f, e11 = ja + 1 < lim1 ? XMath.Exp(lo.X3 - m1) : 0f;
            float f00 = jb < lim0 ? XMath.Exp(hi.X0 - m0) : 0f, f01 = jb + 1 < lim0 ? XMath.Exp(hi.X1 - m0) : 0f;
            float f10 = jb < lim1 ? XMath.Exp(hi.X2 - m1) : 0f, f11 = jb + 1 < lim1 ? XMath.Exp(hi.X3 - m1) : 0f;
            sum0 += e00; sum0 += e01; sum0 += f00; sum0 += f01;     // keys ja, ja + 1, jb, jb + 1: j order
            sum1 += e10; sum1 += e11; sum1 += f10; sum1 += f11;
            // The score accumulators are the A fragment of p·v as they lie: rows g / g + 8, keys 2t.. of each half.
            uint a0 = PackHalves(e00, e01), a1 = PackHalves(e10, e11), a2 = PackHalves(f00, f01), a3 = PackHalves(f10, f11);
            long va = (long)ja * s.KvStride + kvo, vb = (long)jb * s.KvStride + kvo;
            for (int dt = 0; dt < dimTiles; dt++)
            {
                int col = dt * 8 + g;
                uint b0 = PairFromRows(v, va, ja < nk, ja + 1 < nk, s.KvStride, col);
                uint b1 = PairFromRows(v, vb, jb < nk, jb + 1 < nk, s.KvStride, col);
                var r = Mma(a0, a1, a2, a3, b0, b1, new Acc4(acc[4 * dt], acc[4 * dt + 1], acc[4 * dt + 2], acc[4 * dt + 3]), shA, shB);
                acc[4 * dt] = r.X0; acc[4 * dt + 1] = r.X1; acc[4 * dt + 2] = r.X2; acc[4 * dt + 3] = r.X3;
            }
        }
        sum0 += Warp.ShuffleXor(sum0, 1);   // lanes t and t ^ 1: P_t + P_(t^1), the same value on both
        sum0 += Warp.ShuffleXor(sum0, 2);   // (P0 + P1) + (P2 + P3) on every lane of the quad
        sum1 += Warp.ShuffleXor(sum1, 1);
        sum1 += Warp.ShuffleXor(sum1, 2);
        float inv0 = 1f / sum0, inv1 = 1f / sum1;
        for (int dt = 0; dt < dimTiles; dt++)
        {
            int col = dt * 8 + 2 * t;
            if (q0 >= 0)
            {
                output[q0 + col] = CudaKernels.FloatToHalfBits(acc[4 * dt] * inv0);
                output[q0 + col + 1] = CudaKernels.FloatToHalfBits(acc[4 * dt + 1] * inv0);
            }
            if (q1 >= 0)
            {
                output[q1 + col] = CudaKernels.FloatToHalfBits(acc[4 * dt + 2] * inv1);
                output[q1 + col + 1] = CudaKernels.FloatToHalfBits(acc[4 * dt + 3] * inv1);
            }
        }
    }

    /// <summary>
    /// Scaled scores of keys j0 .. j0 + 7 for the tile's 16 rows: lane (g, t) gets rows r0, r1 × keys j0 + 2t, j0 + 2t + 1
    /// (X0, X1 for r0; X2, X3 for r1). A = q rows (row-major), B = k rows as columns (".col"), over hd / 16 chunks.
    /// </summary>
    private static Acc4 Scores(ArrayView<ushort> q, long q0, long q1, ArrayView<ushort> k, int j0, AttentionShape s, long kvo, int g, int t,
        ArrayView<float> shA, ArrayView<float> shB)
    {
        int key = j0 + g;
        long ko = key < s.Nk ? (long)key * s.KvStride + kvo : -1;
        var c = new Acc4(0f, 0f, 0f, 0f);
        for (int d = 2 * t; d < s.HeadDim; d += 16)
            c = Mma(Pair(q, q0, d), Pair(q, q1, d), Pair(q, q0, d + 8), Pair(q, q1, d + 8), Pair(k, ko, d), Pair(k, ko, d + 8), c, shA, shB);
        return new Acc4(c.X0 * s.Scale, c.X1 * s.Scale, c.X2 * s.Scale, c.X3 * s.Scale);
    }

    /// <summary>Elements o + d and o + d + 1 as an f16x2 register (the first in the low half); 0 when o &lt; 0.</summary>
    private static uint Pair(ArrayView<ushort> x, long o, int d)
    {
        long at = o < 0 ? 0 : o + d;
        uint pair = x[at] | ((uint)x[at + 1] << 16);
        return o < 0 ? 0u : pair;
    }

    /// <summary>Column <paramref name="col"/> of rows at <paramref name="o"/> and o + stride as an f16x2 register; a row past the keys reads 0.</summary>
    private static uint PairFromRows(ArrayView<ushort> x, long o, bool first, bool second, int stride, int col)
    {
        uint lo = x[first ? o + col : 0], hi = x[second ? o + stride + col : 0];
        return (first ? lo : 0u) | ((second ? hi : 0u) << 16);
    }

    private static uint PackHalves(float a, float b) => CudaKernels.FloatToHalfBits(a) | ((uint)CudaKernels.FloatToHalfBits(b) << 16);

    /// <summary>A lane's four fp32 accumulators of an m16n8 tile: (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).</summary>
    internal readonly record struct Acc4(float X0, float X1, float X2, float X3);

    // PTX can return one register to ILGPU, so each half of D comes from its own mma: the tensor work is done twice,
    // which the tensor cores absorb many times over at these sizes.
    private const string MmaBody =
        "{ .reg .f32 c<4>; .reg .f32 d<4>; mov.b64 {c0, c1}, %5; mov.b64 {c2, c3}, %6; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {d0, d1, d2, d3}, {%1, %2, %3, %4}, {%7, %8}, {c0, c1, c2, c3}; ";

    private const string MmaLow = MmaBody + "mov.b64 %0, {d0, d1}; }";
    private const string MmaHigh = MmaBody + "mov.b64 %0, {d2, d3}; }";

    /// <summary>
    /// D = A·B + C for the warp's 16×16 A (a0: row g, columns 2t, 2t + 1; a1: row g + 8, the same columns; a2, a3: the
    /// same rows, columns + 8), 16×8 B (b0: rows 2t, 2t + 1 of column g; b1: rows + 8) and C/D as <see cref="Acc4"/>.
    /// </summary>
    private static Acc4 Mma(uint a0, uint a1, uint a2, uint a3, uint b0, uint b1, Acc4 c, ArrayView<float> shA, ArrayView<float> shB)
    {
        if (CudaAsm.IsSupported)
        {
            ulong c01 = Interop.FloatAsInt(c.X0) | ((ulong)Interop.FloatAsInt(c.X1) << 32);
            ulong c23 = Interop.FloatAsInt(c.X2) | ((ulong)Interop.FloatAsInt(c.X3) << 32);
            CudaAsm.Emit(MmaLow, out ulong low, a0, a1, a2, a3, c01, c23, b0, b1);
            CudaAsm.Emit(MmaHigh, out ulong high, a0, a1, a2, a3, c01, c23, b0, b1);
            return new Acc4(Interop.IntAsFloat((uint)low), Interop.IntAsFloat((uint)(low >> 32)),
                Interop.IntAsFloat((uint)high), Interop.IntAsFloat((uint)(high >> 32)));
        }
        return EmulatedMma(a0, a1, a2, a3, b0, b1, c, shA, shB);
    }

    /// <summary>
    /// The mma on a CPU accelerator with 32-thread groups: every lane puts its fragments where the layout above says
    /// they belong, then computes its own four outputs, each C plus the 16 products in k order (fp32).
    /// </summary>
    private static Acc4 EmulatedMma(uint a0, uint a1, uint a2, uint a3, uint b0, uint b1, Acc4 c, ArrayView<float> shA, ArrayView<float> shB)
    {
        int lane = Group.IdxX, g = lane >> 2, t = lane & 3;
        PutPair(shA, g * 16 + 2 * t, 1, a0);
        PutPair(shA, (g + 8) * 16 + 2 * t, 1, a1);
        PutPair(shA, g * 16 + 2 * t + 8, 1, a2);
        PutPair(shA, (g + 8) * 16 + 2 * t + 8, 1, a3);
        PutPair(shB, 2 * t * 8 + g, 8, b0);
        PutPair(shB, (2 * t + 8) * 8 + g, 8, b1);
        Group.Barrier();
        var d = new Acc4(RowTimesColumn(shA, shB, g, 2 * t, c.X0), RowTimesColumn(shA, shB, g, 2 * t + 1, c.X1),
            RowTimesColumn(shA, shB, g + 8, 2 * t, c.X2), RowTimesColumn(shA, shB, g + 8, 2 * t + 1, c.X3));
        Group.Barrier();
        return d;
    }

    private static void PutPair(ArrayView<float> sh, int at, int stride, uint pair)
    {
        sh[at] = CudaKernels.HalfBitsToFloat((ushort)(pair & 0xFFFF));
        sh[at + stride] = CudaKernels.HalfBitsToFloat((ushort)(pair >> 16));
    }

    private static float RowTimesColumn(ArrayView<float> shA, ArrayView<float> shB, int row, int col, float c)
    {
        float acc = c;
        for (int kk = 0; kk < 16; kk++) acc += shA[row * 16 + kk] * shB[kk * 8 + col];
        return acc;
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, AttentionShape, int>? _tiledAttention;
    private bool? _tiledAttentionOnHost;

    private Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, AttentionShape, int> TiledAttentionK
        => _tiledAttention ??= _acc.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, AttentionShape, int>(TiledAttentionKernels.TiledAttentionKernel);

    private object[] TiledAttentionKernelsLoaded() => [TiledAttentionK];

    /// <summary>
    /// Whether <see cref="TiledAttention"/> runs here for this head dimension: a multiple of 16 up to 256, on a CUDA
    /// device of compute capability 8.0 or later (mma.sync.m16n8k16) or on ILGPU's CPU accelerator.
    /// </summary>
    public bool TiledAttentionRuns(int headDim)
        => TiledAttentionKernels.Fits(headDim)
           && (_acc.AcceleratorType == AcceleratorType.CPU || (_acc is CudaAccelerator cuda && cuda.Architecture is { Major: >= 8 }));

    /// <summary>
    /// On ILGPU's CPU accelerator (the default there), <see cref="TiledAttention"/> runs the host twin
    /// (<see cref="Cpu.DeviceNumerics.TiledAttention"/>) on the device memory in the kernel's place, counted as its one
    /// launch. Tests set false on a CPU accelerator with 32-thread warps to run the kernel itself, its mma emulated.
    /// </summary>
    public bool TiledAttentionOnHost
    {
        get => _tiledAttentionOnHost ?? _acc.AcceleratorType == AcceleratorType.CPU;
        set
        {
            if (value && _acc.AcceleratorType != AcceleratorType.CPU)
                throw new ArgumentException("The host twin reads device memory directly and runs only on ILGPU's CPU accelerator.", nameof(value));
            if (!value && !(_acc.WarpSize == TiledAttentionKernels.WarpLanes && _acc.MaxNumThreadsPerGroup >= TiledAttentionKernels.WarpLanes))
                throw new ArgumentException($"The tiled attention kernel runs one 32-thread warp per group; this accelerator's warps are {_acc.WarpSize} threads.", nameof(value));
            _tiledAttentionOnHost = value;
        }
    }

    /// <summary>
    /// Attention in one launch for any length (<see cref="TiledAttentionKernels.TiledAttentionKernel"/>): q, output fp16
    /// [nq, QHeads·hd]; k, v fp16 [nk, KvHeads·hd]. <paramref name="causalOffset"/> ≥ 0: query i sees keys ≤
    /// causalOffset + i; -1: all. Needs <see cref="TiledAttentionRuns"/>.
    /// </summary>
    public void TiledAttention(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output, AttentionShape shape, int causalOffset)
    {
        Require(TiledAttentionRuns(shape.HeadDim), $"Tiled attention needs a head dimension that is a multiple of 16 up to {TiledAttentionKernels.MaxHeadDim} (got {shape.HeadDim}) and a CUDA device of compute capability 8.0 or later, or the CPU accelerator.");
        long groups = TiledAttentionKernels.Groups(shape.QHeads, shape.Nq);
        Require(groups <= int.MaxValue, $"{groups} attention tiles exceed a grid of 2^31 - 1 groups.");
        Require(q.Length >= (long)shape.Nq * shape.QStride && output.Length >= (long)shape.Nq * shape.QStride, $"q and output must hold {shape.Nq} rows of {shape.QStride}.");
        Require(k.Length >= (long)shape.Nk * shape.KvStride && v.Length >= (long)shape.Nk * shape.KvStride, $"k and v must hold {shape.Nk} rows of {shape.KvStride}.");
        Require(causalOffset < 0 || causalOffset + shape.Nq <= shape.Nk, $"Causal attention of {shape.Nq} rows from offset {causalOffset} needs {causalOffset + shape.Nq} keys (have {shape.Nk}).");
        if (groups == 0 || shape.Nk == 0) return;
        Counters.Launch();
        if (TiledAttentionOnHost) Queue.Enqueue(() => TiledAttentionOnTheHost(q, k, v, output, shape, causalOffset));
        else Queue.Enqueue(() => TiledAttentionK(Stream, new KernelConfig((int)groups, TiledAttentionKernels.WarpLanes), q, k, v, output, shape, causalOffset));
    }

    /// <summary>
    /// Runs <see cref="TiledAttention"/> once on a fixed random case (40 query rows against 56 keys from a causal
    /// offset of 16, 2 query heads sharing 1 kv head, this head dimension) and returns the largest difference from the
    /// host twin. A GPU model runs it at load: a tensor core adds in an order of its own (differences of about 1e-3
    /// here), while a kernel that misreads the mma fragments is off by the size of the values.
    /// </summary>
    public double TiledAttentionSelfCheck(int headDim)
    {
        const int nq = 40, nk = 56, heads = 2, kvHeads = 1, offset = nk - nq;
        var rng = new Random(20261128);
        float[] Values(int n, float scale)
        {
            var x = new float[n];
            for (int i = 0; i < n; i++) x[i] = (float)(System.Half)((rng.NextDouble() * 2 - 1) * scale);
            return x;
        }
        var q = Values(nq * heads * headDim, 3f);
        var k = Values(nk * kvHeads * headDim, 1f);
        var v = Values(nk * kvHeads * headDim, 1f);
        static ushort[] Bits(float[] x) => Array.ConvertAll(x, f => BitConverter.HalfToUInt16Bits((System.Half)f));
        using var dq = _acc.Allocate1D(Bits(q));
        using var dk = _acc.Allocate1D(Bits(k));
        using var dv = _acc.Allocate1D(Bits(v));
        using var dout = _acc.Allocate1D<ushort>(q.Length);
        TiledAttention(dq.View, dk.View, dv.View, dout.View, AttentionShape.Create(nq, nk, heads, kvHeads, headDim, causal: false), offset);
        Queue.Synchronize();
        var device = dout.GetAsArray1D();
        var host = new float[q.Length];
        Cpu.DeviceNumerics.TiledAttention(q, k, v, host, nq, nk, heads, kvHeads, headDim, offset);
        double max = 0;
        for (int i = 0; i < host.Length; i++)
        {
            double d = Math.Abs((float)BitConverter.UInt16BitsToHalf(device[i]) - host[i]);
            if (!(d <= max)) max = d; // NaN wins
        }
        return max;
    }

    private unsafe void TiledAttentionOnTheHost(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output, AttentionShape shape, int causalOffset)
    {
        _acc.Synchronize(); // what was queued before has written q, k and v
        int qn = checked(shape.Nq * shape.QStride), kn = checked(shape.Nk * shape.KvStride);
        float[] Widen(ArrayView<ushort> x, int n)
        {
            var w = new float[n];
            System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<System.Half>((void*)DeviceBlas.Ptr(x), n), w);
            return w;
        }
        var o = new float[qn];
        Cpu.DeviceNumerics.TiledAttention(Widen(q, qn), Widen(k, kn), Widen(v, kn), o, shape.Nq, shape.Nk, shape.QHeads, shape.KvHeads, shape.HeadDim, causalOffset);
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(o, new Span<System.Half>((void*)DeviceBlas.Ptr(output), qn));
    }
}
