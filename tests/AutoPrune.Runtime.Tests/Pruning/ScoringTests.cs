using AutoPrune.Pruning;
using CsCheck;
using Xunit;

namespace AutoPrune.Runtime.Tests.Pruning;

public class TopKTests
{
    [Fact]
    public void KeepsLargestInOriginalOrderWithLowerIndexOnTies()
    {
        float[] s = [0.1f, 0.9f, 0.5f, 0.9f, 0.5f, 0.2f];
        Assert.Equal(new[] { 1, 3 }, TopK.SelectInOrder(s, 2));
        Assert.Equal(new[] { 1, 2, 3 }, TopK.SelectInOrder(s, 3));
        Assert.Empty(TopK.SelectInOrder(s, 0));
        Assert.Equal(Enumerable.Range(0, 6), TopK.SelectInOrder(s, 10));
    }

    [Fact]
    public void NaNRanksLast()
        => Assert.Equal(new[] { 0, 2 }, TopK.SelectInOrder([1f, float.NaN, float.NegativeInfinity], 2));

    [Fact]
    public void PropertyKeptDominateDroppedAndAscending()
    {
        Gen.Select(Gen.Int[0, 5].Array[1, 60], Gen.Int[0, 70]).Sample((ints, k) =>
        {
            var s = ints.Select(i => (float)i).ToArray();
            var kept = TopK.SelectInOrder(s, k);
            Assert.Equal(Math.Min(k, s.Length), kept.Length);
            for (int i = 1; i < kept.Length; i++) Assert.True(kept[i - 1] < kept[i]);
            var set = kept.ToHashSet();
            foreach (int a in kept)
                for (int b = 0; b < s.Length; b++)
                    if (!set.Contains(b)) Assert.True(s[a] > s[b] || (s[a] == s[b] && a < b));
        }, iter: 300);
    }
}

public class MutualInformationTests
{
    // Reference in double, straight from the spec's formula.
    private static double Reference(float[] attn, int heads, int T, int keys, int[] cols)
    {
        double total = 0;
        for (int h = 0; h < heads; h++)
        {
            foreach (int y in cols)
            {
                double py = 0;
                for (int x = 0; x < T; x++) py += attn[(h * T + x) * keys + y] / (double)T;
                for (int x = 0; x < T; x++)
                {
                    double pxy = attn[(h * T + x) * keys + y] / (double)T;
                    if (pxy <= 0) continue;
                    total += pxy * Math.Log2(Math.Max(pxy / (py / T + 1e-6), 1e-6));
                }
            }
        }
        return total;
    }

    [Fact]
    public void FocusedRowsGiveOneBitIndependentRowsGiveZero()
    {
        // 2 text rows, keys = [prefix, v0, v1]; row 0 looks only at v0, row 1 only at v1: MI = 1 bit.
        float[] focused = [0, 1, 0, 0, 0, 1];
        Assert.Equal(1.0, MutualInformation.Compute(focused, 1, 2, 3, [1, 2]), 4);
        // Identical rows: p(x,y) = p(x) p(y): MI ~ 0.
        float[] same = [0.2f, 0.5f, 0.3f, 0.2f, 0.5f, 0.3f];
        Assert.Equal(0.0, MutualInformation.Compute(same, 1, 2, 3, [1, 2]), 4);
        // Heads are summed.
        float[] twoHeads = [.. focused, .. focused];
        Assert.Equal(2.0, MutualInformation.Compute(twoHeads, 2, 2, 3, [1, 2]), 4);
    }

    [Fact]
    public void NotRenormalisedOverVisualColumns()
    {
        // Half the mass on the prefix key: probabilities are used as they are.
        float[] a = [0.5f, 0.5f, 0, 0.5f, 0, 0.5f];
        Assert.Equal(0.5, MutualInformation.Compute(a, 1, 2, 3, [1, 2]), 4);
    }

    [Fact]
    public void PropertyMatchesDoubleReference()
    {
        Gen.Select(Gen.Int[1, 3], Gen.Int[1, 5], Gen.Int[2, 9], Gen.UInt).Sample((heads, T, keys, seed) =>
        {
            var rng = new Random((int)(seed & 0x7fffffff));
            var attn = new float[heads * T * keys];
            for (int r = 0; r < heads * T; r++)
            {
                double z = 0;
                var e = new double[keys];
                for (int j = 0; j < keys; j++) z += e[j] = Math.Exp(4 * rng.NextDouble());
                for (int j = 0; j < keys; j++) attn[r * keys + j] = (float)(e[j] / z);
            }
            int[] cols = Enumerable.Range(1, keys - 1).ToArray();
            // Within half a unit of the third decimal (rounding both to 3 places failed on values 1e-7 apart across a boundary).
            Assert.Equal(Reference(attn, heads, T, keys, cols), MutualInformation.Compute(attn, heads, T, keys, cols), 5e-4);
        }, iter: 200);
    }

    [Fact]
    public void RejectsBadShapes()
    {
        Assert.Throws<ArgumentException>(() => MutualInformation.Compute(new float[5], 1, 2, 3, [1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => MutualInformation.Compute(new float[6], 1, 2, 3, [3]));
    }
}

public class AttentionScoresTests
{
    [Fact]
    public void MeanOverHeadsAndRows()
    {
        // heads=2, rows=1, keys=3
        float[] a = [0.2f, 0.4f, 0.4f, 0.6f, 0.2f, 0.2f];
        Assert.Equal(new[] { 0.3f, 0.3f }, AttentionScores.MeanOverHeadsAndRows(a, 2, 1, 3, [1, 2]));
    }

    [Fact]
    public void AutoPrunePreselectionWeightsText()
    {
        var s = AttentionScores.AutoPrunePreselection([1f, 0f], [0f, 10f], 2f, new PruningOptions());
        Assert.Equal(1f, s[0]);
        Assert.Equal(6f, s[1], 4);
    }

    [Fact]
    public void SparseVlmRatersAboveMeanRelevance()
    {
        // Text token 0 aligned with every visual token; tokens 1, 2 orthogonal.
        float[] visual = [1, 0, 0, 1, 0, 0];
        float[] text = [5, 0, 0, 0, 0, 5, 0, 5, 0];
        Assert.Equal(new[] { 0 }, AttentionScores.SparseVlmRaters(visual, text, 3));
    }
}

public class AdaptiveNmsTests
{
    private static readonly PruningOptions Opt = new();

    [Fact]
    public void PriorIsCentredGaussianNormalisedToOne()
    {
        var g = AdaptiveNms.PositionalPrior(24, 0.5);
        Assert.Equal(1f, g.Max(), 6);
        Assert.Equal(Math.Exp(-1), g[0], 2);            // corner ~ exp(-(144+144)/(2*144)) (even g: centre between cells)
        Assert.Equal(g[0], g[23 * 24 + 23], 6);
        Assert.True(g[12 * 24 + 12] > 0.99f);
        var odd = AdaptiveNms.PositionalPrior(5, 0.5);
        Assert.Equal(1f, odd[12]);
    }

    private static float[] OneHot(int v)
    {
        var f = new float[v * v];
        for (int i = 0; i < v; i++) f[i * v + i] = 1;
        return f;
    }

    [Fact]
    public void DistinctFeaturesEqualPlainTopKOfAttentionTimesPrior()
    {
        Gen.Select(Gen.Int[1, 9], Gen.Int[0, 81], Gen.UInt).Sample((g, kRaw, seed) =>
        {
            int v = g * g, k = kRaw % (v + 1);
            var rng = new Random((int)(seed & 0x7fffffff));
            var a = Enumerable.Range(0, v).Select(_ => (float)rng.NextDouble()).ToArray();
            var prior = AdaptiveNms.PositionalPrior(g, Opt.AdaptPruneSigmaPFactor);
            var s = a.Select((x, i) => x * prior[i]).ToArray();
            Assert.Equal(TopK.SelectInOrder(s, k), AdaptiveNms.Select(a, OneHot(v), g, k, Opt));
        }, iter: 200);
    }

    [Fact]
    public void SuppressesNearDuplicateNeighbour()
    {
        // 4x4 grid, uniform-ish attention; tokens 5 and 6 are adjacent near-duplicates with the top scores.
        int g = 4, v = 16;
        var a = Enumerable.Repeat(0.5f, v).ToArray();
        a[5] = 1.0f; a[6] = 0.95f;
        var f = OneHot(v);
        f[6 * v + 6] = 0; f[6 * v + 5] = 1; // token 6 duplicates token 5's feature
        var plain = TopK.SelectInOrder(a.Select((x, i) => x * AdaptiveNms.PositionalPrior(g, 0.5)[i]).ToArray(), 2);
        Assert.Equal(new[] { 5, 6 }, plain);
        var nms = AdaptiveNms.Select(a, f, g, 2, Opt);
        Assert.Contains(5, nms);
        Assert.DoesNotContain(6, nms);
    }

    [Fact]
    public void IdenticalFeaturesNeverKeepAdjacentPairsWhileSpaceRemains()
    {
        // All features identical: every distance-1 neighbour is suppressed to 20% of its score
        // (1 - exp(-1/4.5)); with uniform attention the picks spread over the grid.
        int g = 16, v = g * g;
        var f = new float[v * 4];
        for (int i = 0; i < v; i++) f[i * 4] = 1;
        var kept = AdaptiveNms.Select(Enumerable.Repeat(1f, v).ToArray(), f, g, 8, Opt);
        Assert.Equal(8, kept.Length);
        foreach (int p in kept)
            foreach (int q in kept)
                if (p < q) Assert.True(Math.Abs(p / g - q / g) + Math.Abs(p % g - q % g) > 1, $"{p} and {q} are neighbours");
    }

    [Fact]
    public void PropertyReturnsKDistinctAscending()
    {
        Gen.Select(Gen.Int[2, 10], Gen.Int[0, 100], Gen.UInt).Sample((g, kRaw, seed) =>
        {
            int v = g * g, k = kRaw % (v + 1), d = 3;
            var rng = new Random((int)(seed & 0x7fffffff));
            var a = Enumerable.Range(0, v).Select(_ => (float)rng.NextDouble()).ToArray();
            var f = new float[v * d];
            for (int i = 0; i < v; i++)
            {
                double n = 0;
                for (int t = 0; t < d; t++) n += Math.Pow(f[i * d + t] = (float)(rng.NextDouble() - 0.5), 2);
                for (int t = 0; t < d; t++) f[i * d + t] /= (float)Math.Sqrt(Math.Max(n, 1e-12));
            }
            var kept = AdaptiveNms.Select(a, f, g, k, Opt);
            Assert.Equal(k, kept.Length);
            for (int i = 1; i < kept.Length; i++) Assert.True(kept[i - 1] < kept[i]);
            Assert.Equal(kept, AdaptiveNms.Select(a, f, g, k, Opt));
        }, iter: 200);
    }
}

public class TokenRecyclerTests
{
    private static readonly PruningOptions Opt = new();

    [Theory]
    [InlineData(0, 0, 0)]
    [InlineData(1, 1, 1)]
    [InlineData(10, 4, 1)]
    [InlineData(100, 31, 4)]
    [InlineData(416, 125, 13)]
    public void RecycleCounts(int dropped, int selected, int groups)
    {
        Assert.Equal(selected, ScheduleMath.RecycleSelected(dropped, Opt));
        Assert.Equal(groups, ScheduleMath.RecycleGroups(dropped, Opt));
    }

    [Fact]
    public void SeparatedBlobsBecomeTheirMeans()
    {
        // 40 dropped tokens: 13 recycled (top 30% + 1 by score) into 2 groups; two far-apart blobs.
        int n = 40, d = 2;
        var hidden = new float[n * d];
        var scores = new float[n];
        for (int i = 0; i < n; i++)
        {
            bool blobA = i % 2 == 0;
            hidden[i * d] = (blobA ? 0f : 100f) + (i % 5) * 0.1f;
            hidden[i * d + 1] = blobA ? 0f : 100f;
            scores[i] = i < 26 ? 1f + i : 0f; // the top 13 are rows 13..25
        }
        var dropped = Enumerable.Range(0, n).ToArray();
        var r = TokenRecycler.Merge(hidden, d, scores, dropped, Opt);
        Assert.Equal(2, r.Groups);
        Assert.Equal(13, r.Members.Sum(m => m.Length));
        Assert.All(r.Members.SelectMany(m => m), i => Assert.InRange(i, 13, 25));
        foreach (var (members, g) in r.Members.Select((m, g) => (m, g)))
        {
            Assert.True(members.All(i => i % 2 == 0) || members.All(i => i % 2 == 1), "a group mixes the blobs");
            for (int t = 0; t < d; t++)
                Assert.Equal(members.Average(i => hidden[i * d + t]), r.Merged[g * d + t], 3);
        }
        Assert.True(r.Centres[0] < r.Centres[1]);
    }

    [Fact]
    public void PropertyPartitionOfSelectedAndMeans()
    {
        Gen.Select(Gen.Int[1, 80], Gen.Int[1, 6], Gen.UInt).Sample((n, d, seed) =>
        {
            var rng = new Random((int)(seed & 0x7fffffff));
            var hidden = Enumerable.Range(0, n * d).Select(_ => (float)rng.NextDouble()).ToArray();
            var scores = Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble()).ToArray();
            var dropped = Enumerable.Range(0, n).Where(_ => rng.NextDouble() < 0.7).ToArray();
            var r = TokenRecycler.Merge(hidden, d, scores, dropped, Opt);
            Assert.Equal(ScheduleMath.RecycleGroups(dropped.Length, Opt), r.Groups);
            var all = r.Members.SelectMany(m => m).OrderBy(i => i).ToArray();
            Assert.Equal(ScheduleMath.RecycleSelected(dropped.Length, Opt), all.Length);
            Assert.Equal(all.Length, all.Distinct().Count());
            Assert.All(all, i => Assert.Contains(i, dropped));
            Assert.All(r.Members, m => Assert.NotEmpty(m));
            for (int g = 0; g < r.Groups; g++)
            {
                Assert.Contains(r.Centres[g], r.Members[g]);
                for (int t = 0; t < d; t++) Assert.Equal(r.Members[g].Average(i => hidden[i * d + t]), r.Merged[g * d + t], 4);
            }
        }, iter: 200);
    }
}

public class VisionZipSelectorTests
{
    [Fact]
    public void DominantByClsSumAndContextualMerges()
    {
        // 2 heads, V = 8; dominant by the head-summed [CLS] attention.
        float[] cls = [0.1f, 0.5f, 0.0f, 0.1f, 0.3f, 0.0f, 0.0f, 0.0f,
                       0.1f, 0.0f, 0.4f, 0.1f, 0.1f, 0.0f, 0.0f, 0.0f];
        // keys (dk = 2): rows 0 and 3 point along x; 5, 6 and 7 along y.
        float[] keys = [1, 0, 0, 1, 1, 1, 1, 0.1f, 0, 0, 0, 1, 0, 1, 0.1f, 1];
        int dim = 1;
        float[] hidden = [0, 10, 20, 30, 40, 50, 60, 70];
        var r = VisionZipSelector.Select(cls, 2, keys, hidden, dim, dominant: 3, contextual: 2);
        Assert.Equal(new[] { 1, 2, 4 }, r.Dominant);            // sums: 0.2, 0.5, 0.4, 0.2, 0.4, 0, 0, 0
        // Remaining: 0, 3, 5, 6, 7 -> step 5/2 = 2 -> targets 0 and 5.
        Assert.Equal(new[] { 0, 5 }, r.ContextualTargets);
        Assert.Equal(new[] { 3 }, r.ContextualMembers[0]);      // (1, .1) ~ x
        Assert.Equal(new[] { 6, 7 }, r.ContextualMembers[1]);   // y-ish
        Assert.Equal(new[] { 10f, 20f, 40f, 0f + 30f, 50f + 65f }, r.Hidden);
        Assert.Equal(5, r.Count);
    }

    [Fact]
    public void PropertyEmitsDPlusCAndPartitionsTheRest()
    {
        Gen.Select(Gen.Int[1, 60], Gen.Int[0, 60], Gen.Int[0, 20], Gen.UInt).Sample((v, dRaw, cRaw, seed) =>
        {
            var rng = new Random((int)(seed & 0x7fffffff));
            int heads = 2, dk = 3, dim = 2, dd = dRaw % (v + 1);
            var cls = Enumerable.Range(0, heads * v).Select(_ => (float)rng.NextDouble()).ToArray();
            var keys = Enumerable.Range(0, v * dk).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var hidden = Enumerable.Range(0, v * dim).Select(_ => (float)rng.NextDouble()).ToArray();
            var r = VisionZipSelector.Select(cls, heads, keys, hidden, dim, dd, cRaw);
            int c = Math.Min(cRaw, v - dd);
            Assert.Equal(dd, r.Dominant.Length);
            Assert.Equal(c, r.ContextualTargets.Length);
            Assert.Equal((dd + c) * dim, r.Hidden.Length);
            var covered = r.Dominant.Concat(r.ContextualTargets).Concat(r.ContextualMembers.SelectMany(m => m)).OrderBy(i => i).ToArray();
            if (c > 0 || dd == v) Assert.Equal(Enumerable.Range(0, v), covered);
        }, iter: 200);
    }
}
