using AutoPrune.Pruning;
using CsCheck;
using Xunit;

namespace AutoPrune.Runtime.Tests.Pruning;

/// <summary>DivPrune's and DART's selection rules on small hand-made inputs (spec: pruning-methods.md).</summary>
public class DivPruneSelectorTests
{
    private static float[] Unit2D(params double[] degrees) =>
        degrees.SelectMany(d => new[] { (float)Math.Cos(d * Math.PI / 180), (float)Math.Sin(d * Math.PI / 180) }).ToArray();

    [Fact]
    public void FirstPickIsTheTokenWhoseNearestNeighbourIsFarthestThenMaxMin()
    {
        // Angles 0, 5, 10 (a tight cluster), 90 and 180. Nearest-neighbour distances (1 - cos): 0, 5, 10 -> ~0.004;
        // 90 -> 1 - cos 80 = 0.826 (to 10); 180 -> 1 - cos 90 = 1 (to 90). So 180 (index 4) comes first, then the token
        // farthest from it: 0 (index 0, distance 2), then the farthest from {0, 180}: 90 (index 3, distance 1 to both).
        var f = Unit2D(0, 5, 10, 90, 180);
        Assert.Equal(new[] { 4 }, DivPruneSelector.Select(f, 2, 1));
        Assert.Equal(new[] { 0, 4 }, DivPruneSelector.Select(f, 2, 2));
        Assert.Equal(new[] { 0, 3, 4 }, DivPruneSelector.Select(f, 2, 3));
        // The fourth pick is the cluster member farthest from {0, 90, 180}: 10 (distance 1 - cos 10 from 0).
        Assert.Equal(new[] { 0, 2, 3, 4 }, DivPruneSelector.Select(f, 2, 4));
    }

    [Fact]
    public void TiesGoToTheLowerIndex()
    {
        // Four copies of two directions: every token has a twin (nearest distance 0), so the first pick is index 0;
        // then the two tokens at distance 2 tie and the lower one (1) wins.
        var f = Unit2D(0, 180, 0, 180);
        Assert.Equal(new[] { 0 }, DivPruneSelector.Select(f, 2, 1));
        Assert.Equal(new[] { 0, 1 }, DivPruneSelector.Select(f, 2, 2));
        Assert.Equal(new[] { 0, 1, 2 }, DivPruneSelector.Select(f, 2, 3));
    }

    [Fact]
    public void CosineIgnoresScaleAndZeroRowsAreAtDistanceOne()
    {
        var a = Unit2D(0, 90, 45);
        var scaled = a.Select((x, i) => x * (i / 2 + 1) * 3f).ToArray();
        Assert.Equal(DivPruneSelector.Select(a, 2, 2), DivPruneSelector.Select(scaled, 2, 2));
        var d = DivPruneSelector.CosineDistances([0f, 0f, 1f, 0f], 2, 2);
        Assert.Equal(new[] { 0f, 1f, 1f, 0f }, d);
    }

    [Fact]
    public void PropertyReturnsKDistinctAscendingAndKeepsTheFarthestPair()
    {
        Gen.Select(Gen.Int[2, 40], Gen.Int[0, 40], Gen.UInt).Sample((n, kRaw, seed) =>
        {
            int k = kRaw % (n + 1), dim = 4;
            var rng = new Random((int)(seed & 0x7fffffff));
            var f = Enumerable.Range(0, n * dim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var kept = DivPruneSelector.Select(f, dim, k);
            Assert.Equal(k, kept.Length);
            for (int i = 1; i < kept.Length; i++) Assert.True(kept[i - 1] < kept[i]);
            Assert.Equal(kept, DivPruneSelector.Select(f, dim, k));
        }, iter: 200);
    }

    [Fact]
    public void RejectsFeaturesThatAreNotRows()
        => Assert.Throws<ArgumentException>(() => DivPruneSelector.Select(new float[7], 2, 1));
}

public class DartSelectorTests
{
    [Fact]
    public void KeepsVisualPivotsThenTheLeastDuplicatedPerPivot()
    {
        // 8 visual tokens in 2D with hidden directions (degrees) 0:0 1:0 2:5 3:90 4:95 5:180 6:270 7:10.
        // Key norms make token 1 the visual pivot; the text pivot points at 90 degrees. k = 5, 1 visual + 1 text pivot:
        // quota = (5 - 1) / 2 = 2 per pivot.
        double[] angle = [0, 0, 5, 90, 95, 180, 270, 10];
        var hidden = angle.SelectMany(d => new[] { (float)Math.Cos(d * Math.PI / 180), (float)Math.Sin(d * Math.PI / 180) }).ToArray();
        float[] visualNorms = [1, 9, 2, 3, 1, 1, 1, 1];
        var kept = DartSelector.Select(visualNorms, [5f], hidden, [0f, 1f], 2, 5, visualPivots: 1, textPivots: 1);
        // Pivot 1 (0 degrees): least similar are 5 (cos -1) and 4 (cos 95 = -0.087).
        // Text pivot (90 degrees), the last one, fills up to k: 6 (cos -1), then 0 (cos 0) before 2 (0.087) and 7 (0.174).
        Assert.Equal(new[] { 0, 1, 4, 5, 6 }, kept);
    }

    [Fact]
    public void ReturnsExactlyKEvenWhenTheQuotaRoundsDown()
    {
        Gen.Select(Gen.Int[1, 60], Gen.Int[0, 12], Gen.UInt).Sample((v, tRaw, seed) =>
        {
            var rng = new Random((int)(seed & 0x7fffffff));
            int t = tRaw, dim = 3;
            int k = rng.Next(0, v + 1);
            var vn = Enumerable.Range(0, v).Select(_ => (float)rng.NextDouble()).ToArray();
            var tn = Enumerable.Range(0, t).Select(_ => (float)rng.NextDouble()).ToArray();
            var vh = Enumerable.Range(0, v * dim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var th = Enumerable.Range(0, t * dim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var kept = DartSelector.Select(vn, tn, vh, th, dim, k);
            Assert.Equal(k, kept.Length);
            for (int i = 1; i < kept.Length; i++) Assert.True(kept[i - 1] < kept[i]);
            // The visual pivots (largest key norms) are always kept.
            foreach (int p in TopK.RankDescending(vn).Take(Math.Min(4, k))) Assert.Contains(p, kept);
        }, iter: 300);
    }

    [Fact]
    public void WithoutTextTheVisualPivotsStillSelect()
    {
        float[] hidden = [1, 0, 1, 0, 0, 1, -1, 0];
        var kept = DartSelector.Select([5, 1, 1, 1], [], hidden, [], 2, 2, visualPivots: 1, textPivots: 4);
        // Pivot 0 (direction (1,0)); least similar: 3 (-1,0).
        Assert.Equal(new[] { 0, 3 }, kept);
    }
}
