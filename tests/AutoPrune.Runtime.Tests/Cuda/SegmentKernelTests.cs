using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Cuda;

/// <summary>The GPU code path on ILGPU's CPU accelerator and the two CPU backends, for op-level comparisons.</summary>
public sealed class ThreeBackendFixture : IDisposable
{
    internal CudaBackend Gpu { get; } = new(CudaDevice.CreateForTests());
    internal CpuBackend Matched { get; } = new(CpuPrecision.MatchDevice);
    internal CpuBackend Fp32 { get; } = new();

    public void Dispose()
    {
        Gpu.Dispose();
        Matched.Dispose();
        Fp32.Dispose();
    }
}

/// <summary>
/// The ops Qwen2.5-VL's vision tower and M-RoPE decoder added to the backends — attention within row segments, the
/// received-attention signal, row gathers, M-RoPE in the q|k|v split and the prune gather — on the GPU code path (ILGPU's
/// CPU accelerator) against their CPU twins: bit for bit with the device's arithmetic (one thread per group, as the
/// engine's ilgpu-cpu device runs them), close to the fp32 CPU, and with multi-thread groups (the tree reductions a GPU
/// uses) within float rounding of the twin.
/// </summary>
public sealed class SegmentKernelTests(ThreeBackendFixture fx, ITestOutputHelper output) : IClassFixture<ThreeBackendFixture>
{
    private static float[] HalfValued(Random rng, int n, float scale = 1f)
    {
        var v = CudaKernelTests.Rand(rng, n, scale);
        DeviceNumerics.RoundToHalf(v);
        return v;
    }

    private static int Differing(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        int n = 0;
        for (int i = 0; i < a.Length; i++) if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i])) n++;
        return n;
    }

    private static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    private static Tensor Up(Backend b, float[] values, TensorKind kind)
    {
        var t = b.Allocate(values.Length, kind);
        b.Upload(values, t);
        return t;
    }

    private static float[] SegmentAttention(Backend b, float[] q, float[] k, float[] v, int heads, int hd, int[] offsets)
    {
        using var scope = b.Enter();
        using var work = b.CreateWorkspace();
        using var segments = b.Segments(offsets);
        using var tq = Up(b, q, TensorKind.Half);
        using var tk = Up(b, k, TensorKind.Half);
        using var tv = Up(b, v, TensorKind.Half);
        using var o = b.Allocate(q.Length, TensorKind.Half);
        b.SegmentAttention(tq, tk, tv, o, heads, hd, segments, work);
        return b.Download(o);
    }

    private static float[] Received(Backend b, float[] q, float[] k, int heads, int hd, int[] offsets, int groupRows)
    {
        using var scope = b.Enter();
        using var work = b.CreateWorkspace();
        using var segments = b.Segments(offsets);
        using var tq = Up(b, q, TensorKind.Float);
        using var tk = Up(b, k, TensorKind.Float);
        using var r = b.Allocate(offsets[^1] / groupRows, TensorKind.Float);
        b.ReceivedAttention(tq, tk, heads, hd, segments, groupRows, r, work);
        return b.Download(r);
    }

    /// <summary>
    /// Runs <paramref name="body"/> with the segment kernels themselves (<paramref name="kernels"/>) or, as the engine's
    /// ilgpu-cpu device does, their host twins in the kernels' place.
    /// </summary>
    private void WithKernels(bool kernels, Action body)
    {
        bool saved = fx.Gpu.Ops.SegmentKernelsOnHost;
        fx.Gpu.Ops.SegmentKernelsOnHost = !kernels;
        try { body(); }
        finally { fx.Gpu.Ops.SegmentKernelsOnHost = saved; }
    }

    /// <summary>Windows of 64 rows, a short tail, an empty segment, and one long segment that takes the tiled (hd 16) or GEMM (hd 24) path.</summary>
    public static TheoryData<int, bool> HeadDims => new() { { 16, true }, { 24, true }, { 16, false } };

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void Segment_attention_equals_the_matched_cpu_bit_for_bit_and_each_segment_alone(int hd, bool kernels) => WithKernels(kernels, () =>
    {
        const int heads = 3;
        int[] offsets = [0, 64, 128, 128, 150, 350, 352];
        int n = offsets[^1], dim = heads * hd;
        var rng = new Random(hd);
        var q = HalfValued(rng, n * dim);
        var k = HalfValued(rng, n * dim);
        var v = HalfValued(rng, n * dim);
        var before = fx.Gpu.Counters.Snapshot();
        var gpu = SegmentAttention(fx.Gpu, q, k, v, heads, hd, offsets);
        long launches = (fx.Gpu.Counters.Snapshot() - before).Enqueued;
        var matched = SegmentAttention(fx.Matched, q, k, v, heads, hd, offsets);
        var fp32 = SegmentAttention(fx.Fp32, q, k, v, heads, hd, offsets);
        output.WriteLine($"hd {hd}, {(kernels ? "kernels" : "host twins")}: {Differing(matched, gpu)} values differ from the matched CPU, max |Δ| vs fp32 {MaxAbsDiff(fp32, gpu):E2}; {launches} launches (uploads of the segments included)");
        Assert.Equal(0, Differing(matched, gpu));
        Assert.True(MaxAbsDiff(fp32, gpu) <= 2e-3f, $"differs from the fp32 CPU by {MaxAbsDiff(fp32, gpu)}");
        // The short segments together in one launch, the 200-row one (40,000 pairs, past the fused limit) in its own.
        Assert.Equal(hd % 16 == 0 ? 2 : 4, launches);
        // In row chunks (scores bounded to 50 rows' worth: chunks that cut segments) the same bits.
        long savedBlock = fx.Gpu.AttentionBlockElements;
        fx.Gpu.AttentionBlockElements = (long)heads * 64 * 50;
        try { Assert.Equal(0, Differing(gpu, SegmentAttention(fx.Gpu, q, k, v, heads, hd, offsets))); }
        finally { fx.Gpu.AttentionBlockElements = savedBlock; }
        // Every segment gets what attention over its rows alone gives.
        for (int s = 0; s + 1 < offsets.Length; s++)
        {
            int start = offsets[s], len = offsets[s + 1] - start;
            if (len == 0) continue;
            var alone = SegmentAttention(fx.Gpu, q[(start * dim)..((start + len) * dim)], k[(start * dim)..((start + len) * dim)], v[(start * dim)..((start + len) * dim)], heads, hd, [0, len]);
            Assert.Equal(0, Differing(alone, gpu.AsSpan(start * dim, len * dim)));
        }
        // Rows of different segments do not see each other: changing one segment's keys changes no other segment.
        var k2 = (float[])k.Clone();
        for (int i = 64 * dim; i < 128 * dim; i++) k2[i] = -k2[i];
        var changed = SegmentAttention(fx.Gpu, q, k2, v, heads, hd, offsets);
        Assert.Equal(0, Differing(gpu.AsSpan(0, 64 * dim), changed.AsSpan(0, 64 * dim)));
        Assert.Equal(0, Differing(gpu.AsSpan(128 * dim), changed.AsSpan(128 * dim)));
        Assert.NotEqual(0, Differing(gpu.AsSpan(64 * dim, 64 * dim), changed.AsSpan(64 * dim, 64 * dim)));
    });

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Received_attention_equals_the_matched_cpu_bit_for_bit_and_sums_to_one_per_segment(bool kernels) => WithKernels(kernels, () =>
    {
        const int heads = 4, hd = 16, group = 4;
        int[] offsets = [0, 64, 128, 136, 392];
        int n = offsets[^1], dim = heads * hd;
        var rng = new Random(7);
        var q = CudaKernelTests.Rand(rng, n * dim, 2f);
        var k = CudaKernelTests.Rand(rng, n * dim, 2f);
        var gpu = Received(fx.Gpu, q, k, heads, hd, offsets, group);
        var matched = Received(fx.Matched, q, k, heads, hd, offsets, group);
        var fp32 = Received(fx.Fp32, q, k, heads, hd, offsets, group);
        output.WriteLine($"{Differing(matched, gpu)} differ from the matched CPU; max |Δ| vs the fp32 CPU (float64 sums) {MaxAbsDiff(fp32, gpu):E2}");
        Assert.Equal(0, Differing(matched, gpu));
        Assert.True(MaxAbsDiff(fp32, gpu) <= 1e-6f);
        for (int s = 0; s + 1 < offsets.Length; s++)
            Assert.Equal(1.0, gpu[(offsets[s] / group)..(offsets[s + 1] / group)].Sum(x => (double)x), 5);
        // A float64 computation of one group, written out.
        int g0 = 130 / group;
        double expected = 0;
        for (int j = g0 * group; j < (g0 + 1) * group; j++)
            for (int h = 0; h < heads; h++)
                for (int i = 128; i < 136; i++)
                {
                    double Score(int jj) { double d = 0; for (int x = 0; x < hd; x++) d += (double)q[i * dim + h * hd + x] * k[jj * dim + h * hd + x]; return d / Math.Sqrt(hd); }
                    double m = Enumerable.Range(128, 8).Max(Score);
                    expected += Math.Exp(Score(j) - m) / Enumerable.Range(128, 8).Sum(jj => Math.Exp(Score(jj) - m)) / (8.0 * heads);
                }
        Assert.Equal(expected, gpu[g0], 6);
    });

    [Fact]
    public void Received_attention_refuses_groups_that_cross_a_segment()
    {
        var q = new float[12 * 16];
        var e = Assert.Throws<ArgumentException>(() => Received(fx.Gpu, q, q, 1, 16, [0, 6, 12], 4));
        Assert.Contains("Segment 0 ends at row 6, not a multiple of 4", e.Message);
        Assert.Throws<ArgumentException>(() => Received(fx.Matched, q, q, 1, 16, [0, 6, 12], 4));
        Assert.Contains("below the one before it", Assert.Throws<ArgumentException>(() => fx.Gpu.Segments([0, 8, 4])).Message);
        Assert.Contains("must start at 0", Assert.Throws<ArgumentException>(() => fx.Gpu.Segments([2, 8])).Message);
    }

    /// <summary>The kernels with 16-thread groups (tree reductions, as a GPU's 256): the twin's values within float rounding.</summary>
    [Fact]
    public void With_multi_thread_groups_the_kernels_stay_within_rounding_of_the_twins()
    {
        using var device = CudaDevice.CreateForTests();
        var acc = device.Accelerator;
        var ops = new CudaOps(acc) { SegmentKernelsOnHost = false };
        Assert.True(ops.RowGroupSize > 1);
        const int heads = 2, hd = 16, group = 4;
        int[] offsets = [0, 64, 100, 164];
        int n = offsets[^1], dim = heads * hd;
        var rng = new Random(3);
        var qh = HalfValued(rng, n * dim);
        var kh = HalfValued(rng, n * dim);
        var vh = HalfValued(rng, n * dim);
        using var cu = acc.Allocate1D(offsets);
        using var q16 = acc.Allocate1D(qh.Select(x => CudaKernels.FloatToHalfBits(x)).ToArray());
        using var k16 = acc.Allocate1D(kh.Select(x => CudaKernels.FloatToHalfBits(x)).ToArray());
        using var v16 = acc.Allocate1D(vh.Select(x => CudaKernels.FloatToHalfBits(x)).ToArray());
        using var o16 = acc.Allocate1D<ushort>(n * dim);
        using var scores = acc.Allocate1D<float>(heads * n * 64);
        ops.VarlenFusedAttention(q16.View, k16.View, v16.View, cu.View, scores.View, o16.View,
            new SegmentShape(n, heads, hd, 1f / MathF.Sqrt(hd), 3, 0, n, 64, DeviceNumerics.FusedAttentionMaxPairs, 1));
        acc.Synchronize();
        var o = o16.GetAsArray1D().Select(CudaKernels.HalfBitsToFloat).ToArray();
        var twin = new float[n * dim];
        SegmentOps.Attend(qh, kh, vh, twin, heads, hd, offsets, matchDevice: true);
        float dAtt = MaxAbsDiff(twin, o);

        using var q32 = acc.Allocate1D(qh);
        using var k32 = acc.Allocate1D(kh);
        using var stats = acc.Allocate1D<float>(2 * heads * n);
        using var result = acc.Allocate1D<float>(n / group);
        ops.ReceivedAttention(q32.View, k32.View, cu.View, stats.View, result.View, new SegmentShape(n, heads, hd, 1f / MathF.Sqrt(hd), 3, 0, n, 0, 0, group));
        acc.Synchronize();
        var received = result.GetAsArray1D();
        var rTwin = new float[n / group];
        SegmentOps.ReceivedMatchDevice(qh, kh, heads, hd, offsets, group, rTwin);
        float dRecv = MaxAbsDiff(rTwin, received);
        output.WriteLine($"{ops.RowGroupSize}-thread groups: attention max |Δ| {dAtt:E2} (fp16 outputs), received {dRecv:E2}");
        Assert.True(dAtt <= 1e-3f, $"attention differs by {dAtt}");
        Assert.True(dRecv <= 1e-6f, $"received attention differs by {dRecv}");
    }

    [Fact]
    public void Row_gathers_take_the_indexed_rows()
    {
        var rng = new Random(5);
        var src = CudaKernelTests.Rand(rng, 6 * 5);
        int[] index = [5, 0, 3, 3];
        foreach (Backend b in new Backend[] { fx.Gpu, fx.Fp32 })
        {
            using var scope = b.Enter();
            using var s = Up(b, src, TensorKind.Float);
            using var idx = b.Allocate(index.Length, TensorKind.Int);
            b.Upload(index, idx);
            using var d = b.Allocate(index.Length * 5, TensorKind.Float);
            b.GatherRows(s, idx, index.Length, 5, d);
            var got = b.Download(d);
            for (int r = 0; r < index.Length; r++) Assert.Equal(src.AsSpan(index[r] * 5, 5).ToArray(), got.AsSpan(r * 5, 5).ToArray());
        }
        using var bad = fx.Fp32.Allocate(1, TensorKind.Int);
        fx.Fp32.Upload([6], bad);
        using var t = Up(fx.Fp32, src, TensorKind.Float);
        using var dst = fx.Fp32.Allocate(5, TensorKind.Float);
        Assert.Contains("outside the source's 6 rows", Assert.Throws<ArgumentOutOfRangeException>(() => fx.Fp32.GatherRows(t, bad, 1, 5, dst)).Message);
    }

    /// <summary>
    /// M-RoPE in the q|k|v split: positions [3, rows], each frequency turned by its section's component (mrope_section
    /// [2, 3, 3] of head_dim 16), as the CPU's rotary op; the decode state gets the last row's largest component + 1.
    /// </summary>
    [Fact]
    public void The_split_applies_m_rope_by_sections_and_sets_the_next_position_from_the_largest_component()
    {
        var layout = new HeadLayout(2, 1, 16);
        int rows = 5;
        int[] sections = [2, 3, 3];
        var rng = new Random(11);
        var qkv = CudaKernelTests.Rand(rng, rows * layout.Width);
        // Temporal, height, width: an image's rows spread over height and width, then text.
        int[] positions = [3, 3, 3, 3, 9, /* h */ 3, 3, 4, 4, 9, /* w */ 3, 4, 3, 7, 9];
        var inv = CpuOps.RopeInvFreq(16, 10000.0);
        var results = new List<(float[] Q, float[] K, float[] Q32)>();
        foreach (Backend b in new Backend[] { fx.Gpu, fx.Matched })
        {
            using var scope = b.Enter();
            var rope = b.Rotary(inv, 64, sections);
            using var x = Up(b, qkv, TensorKind.Float);
            using var pos = b.Allocate(positions.Length, TensorKind.Int);
            b.Upload(positions, pos);
            using var q32 = b.Allocate(rows * layout.QDim, TensorKind.Float);
            using var k32 = b.Allocate(rows * layout.KvDim, TensorKind.Float);
            using var q = b.Allocate(rows * layout.QDim, TensorKind.Half);
            using var k = b.Allocate(rows * layout.KvDim, TensorKind.Half);
            using var v = b.Allocate(rows * layout.KvDim, TensorKind.Half);
            b.SplitHeads(x, rows, layout, rope, pos, q32, k32, q, k, v, null);
            results.Add((b.Download(q), b.Download(k), b.Download(q32)));
        }
        Assert.Equal(0, Differing(results[1].Q, results[0].Q));
        Assert.Equal(0, Differing(results[1].K, results[0].K));
        Assert.Equal(0, Differing(results[1].Q32, results[0].Q32));
        // Row 3, head 1, frequency 6 (section 2: the width component, 7) by hand.
        int r = 3, h = 1, i = 6;
        float a = 7 * inv[i], x1 = qkv[r * layout.Width + h * 16 + i], x2 = qkv[r * layout.Width + h * 16 + i + 8];
        Assert.Equal(x1 * MathF.Cos(a) - x2 * MathF.Sin(a), results[0].Q32[r * layout.QDim + h * 16 + i]);
        // Frequency 1 (section 0: temporal, 3) of the same row.
        a = 3 * inv[1];
        x1 = qkv[r * layout.Width + h * 16 + 1];
        x2 = qkv[r * layout.Width + h * 16 + 9];
        Assert.Equal(x1 * MathF.Cos(a) - x2 * MathF.Sin(a), results[0].Q32[r * layout.QDim + h * 16 + 1]);

        // The prefill layer's decode state: cache length and the last row's largest component + 1.
        using var device = CudaDevice.CreateForTests();
        var acc = device.Accelerator;
        var ops = new CudaOps(acc);
        var (cos, sin) = CudaKernels.RopeTables(inv, 64);
        positions[4] = 9; positions[9] = 11; positions[14] = 10; // a last row whose largest component is not the first
        using var pd = acc.Allocate1D(positions);
        using var cd = acc.Allocate1D(cos);
        using var sd = acc.Allocate1D(sin);
        using var xd = acc.Allocate1D(qkv);
        using var qh = acc.Allocate1D<ushort>(rows * layout.QDim);
        using var kh = acc.Allocate1D<ushort>(rows * layout.KvDim);
        using var vh = acc.Allocate1D<ushort>(rows * layout.KvDim);
        using var dummy = acc.Allocate1D<float>(1);
        using var state = acc.Allocate1D<int>(4);
        ops.QkvSplitRope(xd.View, rows, pd.View, cd.View, sd.View, dummy.View, dummy.View, qh.View, kh.View, vh.View,
            new QkvShape(2, 1, 16, 1, 0, StateSlot: 1, CacheCount: rows).WithSections(sections), state.View);
        acc.Synchronize();
        Assert.Equal(new[] { rows, 12 }, state.GetAsArray1D()[2..]); // slot 1: length, last row's max(9, 11, 10) + 1
    }

    [Fact]
    public void Sections_become_frequency_bounds()
    {
        var s = new QkvShape(1, 1, 128, 1).WithSections([16, 24, 24]);
        Assert.Equal((3, 16, 40, int.MaxValue), (s.Components, s.Bound1, s.Bound2, s.Bound3));
        var one = s.WithSections(null);
        Assert.Equal((1, int.MaxValue), (one.Components, one.Bound1));
        Assert.Throws<ArgumentException>(() => s.WithSections([1, 1, 1, 1, 1]));
    }

    /// <summary>A prune's gather keeps every M-RoPE component of the kept rows (or renumbers them all), as the host's <see cref="PositionIds.Gather"/>.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void The_prune_gather_keeps_every_position_component(bool renumber)
    {
        using var device = CudaDevice.CreateForTests();
        var acc = device.Accelerator;
        var ops = new CudaOps(acc);
        const int n = 6, hidden = 8;
        int[] plan = [0, 2, -1, 5];
        var positions = PositionIds.FromValues(3, n, [0, 1, 1, 1, 1, 3, /* h */ 0, 1, 1, 2, 2, 3, /* w */ 0, 1, 2, 1, 2, 3]);
        var rng = new Random(2);
        using var x = acc.Allocate1D(CudaKernelTests.Rand(rng, n * hidden));
        using var extra = acc.Allocate1D(CudaKernelTests.Rand(rng, hidden));
        using var planD = acc.Allocate1D(plan);
        using var dstX = acc.Allocate1D<float>(plan.Length * hidden);
        using var srcPos = acc.Allocate1D(positions.Values.ToArray());
        using var dstPos = acc.Allocate1D<int>(3 * plan.Length);
        using var vis = acc.Allocate1D(new[] { -1, 0, 1, 2, 3, -1 });
        using var dstVis = acc.Allocate1D<int>(plan.Length);
        using var xn = acc.Allocate1D<ushort>(plan.Length * hidden);
        using var weight = acc.Allocate1D(Enumerable.Repeat(1f, hidden).ToArray());
        ops.GatherSequenceNormed(x.View, extra.View, planD.View, dstX.View, srcPos.View, dstPos.View, vis.View, dstVis.View, default, xn.View, weight.View, 1e-6f,
            new GatherShape(plan.Length, hidden, renumber ? 1 : 0, 0, 0, Components: 3, SourceRows: n));
        acc.Synchronize();
        var expected = positions.Gather(plan);
        if (renumber) expected = expected.Renumbered();
        Assert.Equal(expected.Values.ToArray(), dstPos.GetAsArray1D());
        Assert.Equal(new[] { -1, 1, -2, -1 }, dstVis.GetAsArray1D());
    }
}
