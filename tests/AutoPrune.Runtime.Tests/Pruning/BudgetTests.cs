using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Runtime.Tests.Pruning;

public class BudgetTests
{
    internal static readonly ModelShape Fixture8 = new(Layers: 8, Heads: 8, HiddenSize: 256, IntermediateSize: 688, VisualTokens: 576, GridSize: 24);

    [Theory]
    [InlineData(64, 576, 64)]
    [InlineData(0.25, 576, 144)]
    [InlineData(1, 576, 1)]
    [InlineData(576, 576, 576)]
    public void ResolveTokensAndFractions(double budget, int v, double expected)
        => Assert.Equal(expected, Budget.Resolve(budget, v), 9);

    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    [InlineData(double.NaN)]
    [InlineData(577)]
    public void ResolveRejectsInvalid(double budget)
        => Assert.Throws<ArgumentOutOfRangeException>(() => Budget.Resolve(budget, 576));

    [Fact]
    public void EightLayerModelCannotAverageBelow72ProcessedWhenLayer0SeesAll()
    {
        // FastV prunes after layer 0 on 8 layers (K = 1): min = (576 + 7*1) / 8 = 72.875.
        double min = Budget.MinimumFeasible(PruningMethod.FastV, BudgetAccounting.Processed, Fixture8);
        Assert.Equal(72.875, min, 9);
        var ex = Assert.Throws<InfeasibleBudgetException>(() =>
            ScheduleSolver.Solve(Fixture8, new PruningOptions { Method = PruningMethod.FastV, Budget = 64 }));
        Assert.Equal(72.875, ex.MinimumFeasibleBudget, 9);
        Assert.Contains("smallest feasible budget is 73", ex.Message);
        Assert.Contains("72.88", ex.Message);
        Assert.Contains("FastV", ex.Message);
        Assert.IsAssignableFrom<ArgumentException>(ex);
    }

    [Theory]
    [InlineData(PruningMethod.FastV)]
    [InlineData(PruningMethod.AdaptPrune)]
    [InlineData(PruningMethod.PDrop)]
    [InlineData(PruningMethod.SparseVLM)]
    [InlineData(PruningMethod.VisionZip)]
    [InlineData(PruningMethod.AutoPrune)]
    public void MinimumIsFeasibleAndJustBelowIsNot(PruningMethod method)
    {
        foreach (var acc in new[] { BudgetAccounting.Processed, BudgetAccounting.Published })
        {
            foreach (var shape in new[] { Fixture8, FlopsModelTests.Llava7B })
            {
                double min = Budget.MinimumFeasible(method, acc, shape);
                var ok = ScheduleSolver.Solve(shape, new PruningOptions { Method = method, Budget = Math.Max(1, Math.Ceiling(min)), Accounting = acc });
                Assert.True(ok.Achieved <= Math.Max(1, Math.Ceiling(min)) + 1e-9);
                if (min >= 2)
                {
                    var ex = Assert.Throws<InfeasibleBudgetException>(() =>
                        ScheduleSolver.Solve(shape, new PruningOptions { Method = method, Budget = Math.Floor(min - 0.5), Accounting = acc }));
                    Assert.Equal(min, ex.MinimumFeasibleBudget, 9);
                }
            }
        }
    }

    [Fact]
    public void FixtureFeasibleProcessedBudgets()
    {
        // The spec's fixture budgets (96, 128, 192) work for the single-prune methods and AutoPrune.
        foreach (var method in new[] { PruningMethod.FastV, PruningMethod.AdaptPrune, PruningMethod.PDrop, PruningMethod.AutoPrune, PruningMethod.VisionZip })
            foreach (double b in new[] { 96.0, 128, 192 })
            {
                var s = ScheduleSolver.Solve(Fixture8, new PruningOptions { Method = method, Budget = b }, mi1HeadSum: 0.3);
                Assert.InRange(s.AchievedProcessed, b - 1, b + 1e-9);
            }
    }
}
