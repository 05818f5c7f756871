using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Runtime;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// SparseVLM's one-launch kernel, whose last group to finish makes the selection from what every group wrote: with
/// 256-thread groups (the GPU's launch shape) and with one-thread groups it chooses exactly what those signals call
/// for, launch after launch (the last group sets its ticket back to 0), and again after a ticket left counting by a
/// failed launch once it has been reset.
/// </summary>
[Collection(GpuShapedIlgpuCollection.Name)]
public sealed class SparseVlmKernelTests(IlgpuGpuShapedCpuFixture fx) : IClassFixture<IlgpuGpuShapedCpuFixture>
{
    private const int Prefix = 3, V = 40, T = 7, Heads = 4, KvHeads = 2, HeadDim = 8, Dim = 24, K = 12;

    private sealed record Result(int[] Plan, int[] Kept, int[] KeptLocal, int Count, int[] Sel, float[] Attn, double[] Contrib);

    private static float[] Random(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();

    private Result Run(CudaOps ops, int selected, int merged, int seed = 5)
    {
        var acc = fx.Accelerator;
        int n = Prefix + V + T;
        var rng = new Random(seed);
        var shape = AttentionShape.Create(n, n, Heads, KvHeads, HeadDim, causal: true);
        using var hidden = acc.Allocate1D(Random(rng, n * Dim));
        using var q = acc.Allocate1D(Random(rng, n * Heads * HeadDim));
        using var k = acc.Allocate1D(Random(rng, n * KvHeads * HeadDim));
        // The signals start as NaN: a selection made before every group wrote them would read some.
        using var contrib = acc.Allocate1D(Enumerable.Repeat(double.NaN, V * T).ToArray());
        using var attn = acc.Allocate1D(Enumerable.Repeat(float.NaN, Heads * T * V).ToArray());
        using var relevance = acc.Allocate1D<double>(T);
        using var raters = acc.Allocate1D<int>(T);
        using var count = acc.Allocate1D<int>(1);
        using var scores = acc.Allocate1D<float>(V);
        using var kept = acc.Allocate1D<int>(V);
        using var keptLocal = acc.Allocate1D<int>(K);
        using var plan = acc.Allocate1D<int>(Prefix + K + merged + T);
        using var flags = acc.Allocate1D<int>(V);
        using var sel = acc.Allocate1D<int>(Math.Max(1, selected));
        var o = new SparseVlmViews
        {
            Relevance = relevance.View, Raters = raters.View, Count = count.View, Scores = scores.View, Kept = kept.View, KeptLocal = keptLocal.View,
            Plan = plan.View, Flags = flags.View, Sel = sel.View,
        };
        ops.SparseVlm(hidden.View, contrib.View, q.View, k.View, attn.View, shape, Prefix + V, o,
            new PlanShape(V, K, Prefix, T, merged, 1, Heads, T, 1, 1), new RecycleShape(V, K, selected, merged, 3, Dim, Prefix));
        ops.Queue.Synchronize();
        return new Result(plan.GetAsArray1D(), kept.GetAsArray1D(), keptLocal.GetAsArray1D(), count.GetAsArray1D()[0],
            selected > 0 ? sel.GetAsArray1D() : [], attn.GetAsArray1D(), contrib.GetAsArray1D());
    }

    private static void Same(Result expected, Result actual)
    {
        Assert.Equal(expected.Attn, actual.Attn);
        Assert.Equal(expected.Contrib, actual.Contrib);
        Assert.Equal(expected.Count, actual.Count);
        Assert.Equal(expected.Kept, actual.Kept);
        Assert.Equal(expected.KeptLocal, actual.KeptLocal);
        Assert.Equal(expected.Plan, actual.Plan);
        Assert.Equal(expected.Sel, actual.Sel);
    }

    /// <summary>
    /// The selection the last group must make from the signals every group wrote, computed here from those signals: raters
    /// (relevance above the mean), scores (their mean attention, head-major), the top K (ties to the lower index), the
    /// plan, and the top <paramref name="selected"/> dropped rows (ascending).
    /// </summary>
    private static void ChoosesFromTheSignals(Result r, int selected, int merged)
    {
        var relevance = new double[T];
        for (int t = 0; t < T; t++) for (int v = 0; v < V; v++) relevance[t] += r.Contrib[v * T + t];
        double mean = relevance.Sum() / T;
        int above = relevance.Count(x => x > mean + 1e-12);
        var raters = relevance.Select(x => above == 0 || x > mean + 1e-12).ToArray();
        Assert.Equal(above == 0 ? T : above, r.Count);
        var scores = new float[V];
        for (int j = 0; j < V; j++)
        {
            float sum = 0;
            for (int h = 0; h < Heads; h++) for (int t = 0; t < T; t++) if (raters[t]) sum += r.Attn[(h * T + t) * V + j];
            scores[j] = sum * (1f / (Heads * r.Count));
        }
        var order = Enumerable.Range(0, V).OrderByDescending(j => scores[j]).ThenBy(j => j).ToArray();
        var keptLocal = order.Take(K).Order().ToArray();
        Assert.Equal(keptLocal, r.KeptLocal);
        Assert.Equal(Enumerable.Range(0, V).Select(j => keptLocal.Contains(j) ? 1 : 0), r.Kept);
        Assert.Equal(Enumerable.Range(0, Prefix).Concat(keptLocal.Select(i => Prefix + i)).Concat(Enumerable.Range(1, merged).Select(m => -m))
            .Concat(Enumerable.Range(Prefix + V, T)), r.Plan);
        Assert.Equal(order.Skip(K).Take(selected).Order(), r.Sel);
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(9, 2)]
    public void The_last_of_256_thread_groups_chooses_from_every_groups_signals_launch_after_launch(int selected, int merged)
    {
        Assert.Equal(256, fx.Ops.RowGroupSize);
        var first = Run(fx.Ops, selected, merged);
        Assert.Contains(first.Contrib, x => x != 0);
        Assert.Contains(first.Attn, x => x != 0);
        ChoosesFromTheSignals(first, selected, merged);
        for (int launch = 0; launch < 2; launch++) Same(first, Run(fx.Ops, selected, merged));
        Assert.Equal(0, fx.Ops.LastGroupTicket.GetAsArray1D()[0]);
        // One-thread groups (the emulated GPU path's launch shape): a softmax sums in another order, the choice is the same rule.
        var single = Run(fx.OpsWithGroups(1), selected, merged);
        ChoosesFromTheSignals(single, selected, merged);
    }

    [Fact]
    public void A_ticket_left_counting_is_reset_and_the_next_launch_chooses_again()
    {
        var ops = new CudaOps(fx.Accelerator, rowGroupSize: 1);
        var expected = Run(ops, 9, 2);
        ops.LastGroupTicket.CopyFromCPU(new[] { 17 }); // as a launch stopped part-way would leave it
        Run(ops, 9, 2, seed: 6);
        Assert.NotEqual(0, ops.LastGroupTicket.GetAsArray1D()[0]); // no group was the last: nothing chose
        ops.ResetLastGroupTicket();
        Same(expected, Run(ops, 9, 2));
    }
}

/// <summary>
/// Mutual information in one launch: one group per head, and the last group to finish sums the heads. With 256-thread
/// groups and one-thread groups, launch after launch, it agrees with the host's computation (the group reductions sum
/// in tree order, so to float precision), and the ticket is back at 0.
/// </summary>
[Collection(GpuShapedIlgpuCollection.Name)]
public sealed class MutualInformationKernelTests(IlgpuGpuShapedCpuFixture fx) : IClassFixture<IlgpuGpuShapedCpuFixture>
{
    [Theory]
    [InlineData(256)]
    [InlineData(1)]
    public void The_last_head_group_sums_what_every_head_wrote(int groupSize)
    {
        const int heads = 12, T = 9, cols = 50;
        var ops = fx.OpsWithGroups(groupSize);
        Assert.Equal(groupSize, ops.RowGroupSize);
        var rng = new Random(3);
        // Rows of a softmax over 60 keys, of which the visual columns are 50.
        var attn = new float[heads * T * cols];
        for (int r = 0; r < heads * T; r++)
        {
            var row = Enumerable.Range(0, 60).Select(_ => (float)Math.Exp(rng.NextDouble() * 4)).ToArray();
            float z = row.Sum();
            for (int j = 0; j < cols; j++) attn[r * cols + j] = row[j] / z;
        }
        var (mi, bound) = AutoPrune.Pruning.MutualInformation.ComputeWithBound(attn, heads, T, cols, Enumerable.Range(0, cols).ToArray());
        using var a = fx.Accelerator.Allocate1D(attn);
        using var py = fx.Accelerator.Allocate1D<float>(heads * cols);
        using var perHead = fx.Accelerator.Allocate1D(Enumerable.Repeat(float.NaN, 2 * heads).ToArray());
        for (int launch = 0; launch < 3; launch++)
        {
            using var result = fx.Accelerator.Allocate1D(new[] { float.NaN, float.NaN });
            ops.MutualInformation(a.View, heads, T, cols, py.View, perHead.View, result.View);
            ops.Queue.Synchronize();
            var r = result.GetAsArray1D();
            Assert.Equal(mi, r[0], Math.Abs(mi) * 1e-5);
            Assert.Equal(bound, r[1], Math.Abs(bound) * 1e-5);
            Assert.Equal(0, ops.LastGroupTicket.GetAsArray1D()[0]);
        }
    }
}

/// <summary>
/// The decode step's one launch per layer (RoPE, the cache append and the attention, a group per query head): with
/// 256-thread groups and one-thread groups and grouped-query heads (two query heads per kv head, both writing the kv
/// head's new row), the cache row is the RoPE of the row's k and v bit for bit, and the output row is the attention over
/// the cache within fp16 rounding of a double-precision reference.
/// </summary>
[Collection(GpuShapedIlgpuCollection.Name)]
public sealed class DecodeRopeAttentionKernelTests(IlgpuGpuShapedCpuFixture fx) : IClassFixture<IlgpuGpuShapedCpuFixture>
{
    [Theory]
    [InlineData(256)]
    [InlineData(1)]
    public void The_new_row_is_rotated_into_the_cache_and_attended_with_the_rest(int groupSize)
    {
        const int heads = 4, kvHeads = 2, hd = 16, capacity = 12, length = 7, position = 9, half = hd / 2;
        var ops = fx.OpsWithGroups(groupSize);
        var acc = fx.Accelerator;
        var rng = new Random(11);
        var qkvShape = new QkvShape(heads, kvHeads, hd, 1, 0);
        var shape = AttentionShape.Create(1, 1, heads, kvHeads, hd, causal: false);
        var qkv = Enumerable.Range(0, qkvShape.Width).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        ushort H(double x) => BitConverter.HalfToUInt16Bits((System.Half)x);
        float F(ushort b) => (float)BitConverter.UInt16BitsToHalf(b);
        // The cache's first `length` rows as earlier steps left them; the rest is never read.
        var cacheK = Enumerable.Range(0, capacity * qkvShape.KvDim).Select(_ => H(rng.NextDouble() * 2 - 1)).ToArray();
        var cacheV = Enumerable.Range(0, capacity * qkvShape.KvDim).Select(_ => H(rng.NextDouble() * 2 - 1)).ToArray();
        var (cos, sin) = CudaKernels.RopeTables(AutoPrune.Compute.Cpu.CpuOps.RopeInvFreq(hd, 10000), 32);
        using var qkvB = acc.Allocate1D(qkv);
        using var state = acc.Allocate1D(new[] { length, position });
        using var cosB = acc.Allocate1D(cos);
        using var sinB = acc.Allocate1D(sin);
        using var qH = acc.Allocate1D<ushort>(qkvShape.QDim);
        using var kB = acc.Allocate1D(cacheK);
        using var vB = acc.Allocate1D(cacheV);
        using var scores = acc.Allocate1D<float>(heads * capacity);
        using var outB = acc.Allocate1D<ushort>(qkvShape.QDim);
        ops.DecodeRopeAttention(qkvB.View, state.View, 0, cosB.View, sinB.View, qH.View, kB.View, vB.View, scores.View, outB.View, shape, qkvShape, capacity);
        ops.Queue.Synchronize();
        var k = kB.GetAsArray1D();
        var v = vB.GetAsArray1D();
        var output = outB.GetAsArray1D();
        // Rotate-half RoPE at the position, in fp32 as the prefill's split does it, then fp16.
        (ushort, ushort) Rotate(int o, int i)
        {
            float x1 = qkv[o + i], x2 = qkv[o + i + half], c = cos[position * half + i], s = sin[position * half + i];
            return (H(x1 * c - x2 * s), H(x2 * c + x1 * s));
        }
        for (int kvh = 0; kvh < kvHeads; kvh++)
            for (int i = 0; i < half; i++)
            {
                long d = (long)length * qkvShape.KvDim + kvh * hd + i;
                var (k1, k2) = Rotate(qkvShape.QDim + kvh * hd, i);
                Assert.Equal(k1, k[d]);
                Assert.Equal(k2, k[d + half]);
                Assert.Equal(H(qkv[qkvShape.QDim + qkvShape.KvDim + kvh * hd + i]), v[d]);
                Assert.Equal(H(qkv[qkvShape.QDim + qkvShape.KvDim + kvh * hd + i + half]), v[d + half]);
            }
        Assert.Equal(cacheK.Take(length * qkvShape.KvDim), k.Take(length * qkvShape.KvDim)); // earlier rows untouched
        for (int h = 0; h < heads; h++)
        {
            int kvh = h / (heads / kvHeads);
            var q = new double[hd];
            for (int i = 0; i < half; i++) { var (a, b) = Rotate(h * hd, i); q[i] = F(a); q[i + half] = F(b); }
            var logits = Enumerable.Range(0, length + 1).Select(j => Enumerable.Range(0, hd).Sum(d => q[d] * F(k[j * qkvShape.KvDim + kvh * hd + d])) / Math.Sqrt(hd)).ToArray();
            double max = logits.Max(), z = logits.Sum(x => Math.Exp(x - max));
            for (int d = 0; d < hd; d++)
            {
                double expected = Enumerable.Range(0, length + 1).Sum(j => Math.Exp(logits[j] - max) / z * F(v[j * qkvShape.KvDim + kvh * hd + d]));
                Assert.Equal(expected, F(output[h * hd + d]), 2e-3);
            }
        }
    }
}
