using AutoPrune.Compute.Cuda;
using ILGPU.Runtime;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// AutoPrune's layer-0 selection (the paper preset, no selection before the LLM) in one launch: the coverage kernel
/// computes the text mean, the pre-selection score ([CLS] head mean + w·MI0·text mean) and the unit rows itself, with
/// the arithmetic of the five launches it replaces (column mean, [CLS] mean, pre-selection, unit rows, coverage), so
/// it keeps the same rows, in the same plan, with the same damped scores.
/// </summary>
public sealed class CoveragePreselectionTests(IlgpuCpuFixture fx) : IClassFixture<IlgpuCpuFixture>
{
    private const int Grid = 6, Patches = Grid * Grid, Heads = 2, ClsHeads = 3, T = 5, D = 12, Prefix = 2;

    private sealed record Result(float[] S, int[] Kept, int[] KeptLocal, int[] Plan);

    [Theory]
    [InlineData(30, 9, 1)]
    [InlineData(36, 20, 2)]
    [InlineData(25, 1, 3)]
    public void OneLaunchKeepsWhatTheFiveDid(int v, int k, int seed)
    {
        var rng = new Random(seed);
        float[] Values(int n) => Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble()).ToArray();
        var attn = Values(Heads * T * v);
        var hidden = Values(v * D).Select(x => x - 0.5f).ToArray();
        var cls = Values(ClsHeads * Patches);
        var mi = new[] { (float)(rng.NextDouble() * 40), 0f };
        // Patches in a shuffled order, one candidate without a patch (a [CLS] row: scored +∞, kept first).
        var visual = Enumerable.Range(0, Patches).OrderBy(_ => rng.Next()).Take(v).ToArray();
        visual[v / 2] = -4;
        var coverage = new CoverageShape(v, D, k, Grid, 2, 4.0, 2 * 1.5 * 1.5, 2 * 0.5 * 0.5, 1, GridMode: 1, Prefix, T, WritePlan: 1);
        var five = Run(attn, hidden, cls, mi, visual, coverage, fused: false);
        var one = Run(attn, hidden, cls, mi, visual, coverage, fused: true);
        Assert.Equal(five.Kept, one.Kept);
        Assert.Equal(five.KeptLocal, one.KeptLocal);
        Assert.Equal(five.Plan, one.Plan);
        Assert.Equal(five.S, one.S);
        Assert.Contains(v / 2, five.KeptLocal.Take(k)); // the row without a patch scores +∞
    }

    private Result Run(float[] attnHost, float[] hiddenHost, float[] clsHost, float[] miHost, int[] visualHost, CoverageShape p, bool fused)
    {
        var acc = fx.Device.Accelerator;
        var ops = fx.Ops;
        int v = p.N, k = p.K;
        using var attn = acc.Allocate1D(attnHost);
        using var hidden = acc.Allocate1D(hiddenHost);
        using var cls = acc.Allocate1D(clsHost);
        using var mi = acc.Allocate1D(miHost);
        using var visual = acc.Allocate1D(visualHost);
        using var s = acc.Allocate1D<float>(v);
        using var inv = acc.Allocate1D<float>(v);
        using var at = acc.Allocate1D<int>(Patches);
        using var kept = acc.Allocate1D<int>(v);
        using var keptLocal = acc.Allocate1D<int>(Math.Max(1, k));
        using var plan = acc.Allocate1D<int>(Prefix + k + T);
        if (fused)
            ops.CoverageNms(attn.View, default, s.View, hidden.View, inv.View, visual.View, at.View, kept.View, keptLocal.View, plan.View,
                p with { ScoreRows = T, Heads = Heads, Normalize = 1, Preselect = 1, ClsHeads = ClsHeads, ClsPatches = Patches, TextWeight = 0.7f }, cls.View, mi.View);
        else
        {
            using var textMean = acc.Allocate1D<float>(v);
            using var clsMean = acc.Allocate1D<float>(Patches);
            using var pre = acc.Allocate1D<float>(v);
            using var unit = acc.Allocate1D<float>(v * D);
            ops.ColumnMean(attn.View, default, textMean.View, new PlanShape(v, k, Prefix, T, 0, 0, Heads, T, 0, 0));
            ops.ClsMean(cls.View, ClsHeads, Patches, clsMean.View);
            ops.Preselection(clsMean.View, textMean.View, visual.View, mi.View, pre.View, v, T, Heads, 0.7f, Patches);
            ops.L2NormalizeRows(hidden.View, 0, v, D, unit.View);
            ops.CoverageNms(default, pre.View, s.View, unit.View, default, visual.View, at.View, kept.View, keptLocal.View, plan.View, p);
            ops.Queue.Synchronize();
        }
        ops.Queue.Synchronize();
        return new Result(s.GetAsArray1D(), kept.GetAsArray1D(), keptLocal.GetAsArray1D(), plan.GetAsArray1D());
    }
}
