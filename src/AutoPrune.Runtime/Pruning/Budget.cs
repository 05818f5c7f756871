using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>Budget resolution and feasibility checks.</summary>
public static class Budget
{
    /// <summary>
    /// Resolves a user budget to a number of visual tokens: values &gt;= 1 are tokens, values in (0, 1) a
    /// fraction of <paramref name="visualTokens"/>. The result may be fractional (e.g. 0.3 * 576 = 172.8).
    /// </summary>
    public static double Resolve(double budget, int visualTokens)
    {
        if (visualTokens < 1) throw new ArgumentOutOfRangeException(nameof(visualTokens), visualTokens, "There must be at least one visual token.");
        if (double.IsNaN(budget) || double.IsInfinity(budget) || budget <= 0)
            throw new ArgumentOutOfRangeException(nameof(budget), budget, "The visual-token budget must be a positive number of tokens (>= 1) or a fraction in (0, 1).");
        double tokens = budget < 1 ? budget * visualTokens : budget;
        if (tokens > visualTokens)
            throw new ArgumentOutOfRangeException(nameof(budget), budget, $"The visual-token budget {budget.ToString(CultureInfo.InvariantCulture)} exceeds the model's {visualTokens} visual tokens.");
        return tokens;
    }

    /// <summary>
    /// Resolves <paramref name="options"/>' budget on <paramref name="shape"/> to a number of visual tokens for the whole
    /// request, following <see cref="PruningOptions.BudgetScope"/>: under <see cref="BudgetScope.PerView"/> the sum of the
    /// views' budgets (<see cref="ViewBudgets"/>).
    /// </summary>
    public static double Resolve(PruningOptions options, ModelShape shape)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(shape);
        if (options.BudgetScope != BudgetScope.PerView || shape.ViewPatches is null) return Resolve(options.Budget, shape.VisualTokens);
        return ViewBudgets(options, shape).Sum();
    }

    /// <summary>
    /// Each view's budget under <see cref="BudgetScope.PerView"/>: a count B gives a view min(B, its patches), a fraction f
    /// gives f times its patches. A count larger than a whole view (Grid² patches) is refused: it would prune nothing.
    /// </summary>
    public static double[] ViewBudgets(PruningOptions options, ModelShape shape)
    {
        var views = shape.ViewPatches ?? [shape.VisualTokens];
        double b = options.Budget;
        if (double.IsNaN(b) || double.IsInfinity(b) || b <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), b, "PruningOptions.Budget must be a positive number of tokens (>= 1) or a fraction in (0, 1).");
        int perView = Math.Max(views.Max(), shape.GridSize * shape.GridSize);
        if (b >= 1 && b > perView)
            throw new ArgumentOutOfRangeException(nameof(options), b,
                $"PruningOptions.Budget = {b.ToString(CultureInfo.InvariantCulture)} is a budget per view (PruningOptions.BudgetScope = PerView), but a view has at most {perView} visual tokens.");
        return views.Select(v => b < 1 ? b * v : Math.Min(b, v)).ToArray();
    }

    /// <summary>
    /// Smallest average visual-token count (in <paramref name="accounting"/>) that <paramref name="method"/>
    /// can reach on <paramref name="shape"/>. A budget below it raises <see cref="InfeasibleBudgetException"/>.
    /// </summary>
    public static double MinimumFeasible(PruningMethod method, BudgetAccounting accounting, ModelShape shape, PruningOptions? options = null)
    {
        options ??= new PruningOptions();
        shape.Validate();
        return method switch
        {
            PruningMethod.None => shape.VisualTokens,
            PruningMethod.FastV or PruningMethod.AdaptPrune or PruningMethod.Dart => SinglePruneSchedule.Minimum(shape, accounting),
            PruningMethod.PDrop => PDropSchedule.Minimum(shape, accounting),
            PruningMethod.SparseVLM => SparseVlmSchedule.Minimum(shape, accounting, options),
            PruningMethod.VisionZip or PruningMethod.DivPrune => VisionZipSchedule.Minimum(),
            PruningMethod.AutoPrune => AutoPruneSchedule.Minimum(shape, accounting, options),
            _ => throw new ArgumentOutOfRangeException(nameof(method), method, "Unknown pruning method."),
        };
    }

    /// <summary>Throws <see cref="InfeasibleBudgetException"/> when <paramref name="budgetTokens"/> is below the method's minimum.</summary>
    internal static void EnsureFeasible(PruningMethod method, BudgetAccounting accounting, ModelShape shape, double budgetTokens, double minimum)
    {
        if (budgetTokens + 1e-9 >= minimum) return;
        throw Infeasible(method, accounting, shape, budgetTokens, minimum);
    }

    internal static InfeasibleBudgetException Infeasible(PruningMethod method, BudgetAccounting accounting, ModelShape shape, double budgetTokens, double minimum)
    {
        var inv = CultureInfo.InvariantCulture;
        int smallest = (int)Math.Ceiling(minimum - 1e-9);
        string what = accounting == BudgetAccounting.Processed ? "processed" : "published";
        string message =
            $"{method} cannot meet a budget of {budgetTokens.ToString("0.##", inv)} visual tokens ({what} accounting) on this model " +
            $"({shape.Layers} layers, {shape.VisualTokens} visual tokens): it cannot average fewer than {minimum.ToString("0.##", inv)} " +
            $"{what} visual tokens per layer. The smallest feasible budget is {smallest}.";
        return new InfeasibleBudgetException(method, accounting, budgetTokens, minimum, message);
    }
}
