namespace AutoPrune.Pruning;

/// <summary>Visual-token pruning policy (see shared/specs/pruning-methods.md).</summary>
public enum PruningMethod
{
    None,
    FastV,
    PDrop,
    SparseVLM,
    VisionZip,
    AdaptPrune,
    AutoPrune,
}

/// <summary>How a visual-token budget is counted.</summary>
public enum BudgetAccounting
{
    /// <summary>Average over all decoder layers of the visual tokens each layer processes (default).</summary>
    Processed,

    /// <summary>Each method's own paper convention.</summary>
    Published,
}

/// <summary>Shape of the decoder and of the visual token grid, read from the model config.</summary>
public sealed record ModelShape(int Layers, int Heads, int HiddenSize, int IntermediateSize, int VisualTokens, int GridSize)
{
    internal void Validate()
    {
        if (Layers < 1) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "A model needs at least one decoder layer.");
        if (Heads < 1) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, "A model needs at least one attention head.");
        if (HiddenSize < 1) throw new ArgumentOutOfRangeException(nameof(HiddenSize), HiddenSize, "Hidden size must be positive.");
        if (IntermediateSize < 1) throw new ArgumentOutOfRangeException(nameof(IntermediateSize), IntermediateSize, "MLP intermediate size must be positive.");
        if (VisualTokens < 1) throw new ArgumentOutOfRangeException(nameof(VisualTokens), VisualTokens, "There must be at least one visual token.");
        if (GridSize < 1) throw new ArgumentOutOfRangeException(nameof(GridSize), GridSize, "Grid size must be positive.");
    }
}

/// <summary>
/// The budget cannot be met by the method on this model. <see cref="MinimumFeasibleBudget"/> is the
/// smallest average (in the chosen accounting) the method can reach.
/// </summary>
public sealed class InfeasibleBudgetException : ArgumentException
{
    public InfeasibleBudgetException(PruningMethod method, BudgetAccounting accounting, double budget, double minimumFeasibleBudget, string message)
        : base(message, "Budget")
    {
        Method = method;
        Accounting = accounting;
        Budget = budget;
        MinimumFeasibleBudget = minimumFeasibleBudget;
    }

    public PruningMethod Method { get; }
    public BudgetAccounting Accounting { get; }

    /// <summary>The budget asked for, in visual tokens.</summary>
    public double Budget { get; }

    /// <summary>Smallest average visual-token count (chosen accounting) this method can reach on this model.</summary>
    public double MinimumFeasibleBudget { get; }
}

/// <summary>What a pruned prefill did: budgets, per-layer counts, FLOPs, kept tokens and method signals.</summary>
public sealed record PruningReport(
    PruningMethod Method,
    double BudgetAsked,
    BudgetAccounting Accounting,
    double AvgVisualTokensProcessed,
    double AvgVisualTokensPublished,
    int[] VisualTokensPerLayer,
    double PrefillFlops,
    double UnprunedPrefillFlops,
    double FlopsRatio,
    IReadOnlyList<int[]> KeptIndicesPerLayer,
    IReadOnlyDictionary<string, double> Signals,
    IReadOnlyList<string> Notes);
