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
    /// <summary>DivPrune (CVPR 2025): greedy max-min diversity of the projected visual tokens, before the LLM.</summary>
    DivPrune,
    /// <summary>DART (EMNLP 2025): keeps the visual tokens least duplicated with a few pivot tokens, at a shallow layer.</summary>
    Dart,
}

/// <summary>RoPE positions of the tokens left after a prune.</summary>
public enum PrunedPositions
{
    /// <summary>
    /// The method's own convention: original positions for FastV, AdaptPrune and DART (their papers) and for AutoPrune
    /// (this library's default; <see cref="PruningOptions.AutoPrunePaper"/> renumbers, as the paper); contiguous for PDrop,
    /// SparseVLM, VisionZip and DivPrune (their papers).
    /// </summary>
    MethodDefault,

    /// <summary>Every remaining token keeps the position it had in the full prompt (gaps where tokens were removed).</summary>
    Original,

    /// <summary>The remaining tokens are renumbered 0, 1, 2, ... as if the prompt had been shorter.</summary>
    Contiguous,
}

/// <summary>How AutoPrune turns layer 1's text–image mutual information (MI1) into the slope k of its retention curve.</summary>
public enum AutoPruneSlope
{
    /// <summary>The paper: k = max(k0 - gamma * MI1 * 32/H, 0), with constants tuned on LLaVA-1.5-7B.</summary>
    Paper,

    /// <summary>This model's MI1 range, measured by <c>autoprune calibrate</c>, mapped onto [0, k0]; without a calibration, <see cref="Normalized"/>.</summary>
    Calibrated,

    /// <summary>Scale-free default: MI1 as a fraction of its largest possible value for the sample, mapped onto [0, k0].</summary>
    Normalized,
}

/// <summary>How AutoPrune's per-layer counts follow its logistic curve.</summary>
public enum AutoPruneScheduleShape
{
    /// <summary>The paper: N0 = 2.5 B after layer 0, then the curve over the later layers scaled to the budget.</summary>
    Paper,

    /// <summary>N0 chosen with the curve: one logistic over all layers, scaled so the average meets the budget; counts fall smoothly.</summary>
    Smooth,
}

/// <summary>How AutoPrune chooses the tokens that enter the LLM when it selects before layer 0.</summary>
public enum AutoPruneBeforeLlmSelection
{
    /// <summary>The vision tower's [CLS] attention (the first term of the paper's layer-0 score), with the coverage suppression.</summary>
    ClsCoverage,

    /// <summary>Greedy max-min diversity of the projected tokens (as DivPrune), so every distinct region enters the LLM.</summary>
    Diversity,
}

/// <summary>How a visual-token budget is counted.</summary>
public enum BudgetAccounting
{
    /// <summary>Average over all decoder layers of the visual tokens each layer processes (default).</summary>
    Processed,

    /// <summary>Each method's own paper convention.</summary>
    Published,
}

/// <summary>What a visual-token budget is a budget of (see <see cref="PruningOptions.BudgetScope"/>).</summary>
public enum BudgetScope
{
    /// <summary>
    /// The request's visual tokens as one set (the default): a count, or a fraction of the image's visual tokens (for a
    /// LLaVA-NeXT image, its base view and tiles together); the method chooses among all of them.
    /// </summary>
    Request,

    /// <summary>
    /// Each view of a LLaVA-NeXT image (the base view and every tile) keeps its own share: a count budget is per view (a
    /// view with fewer patches keeps all of them), a fraction applies to each view's patches. The request's budget is the
    /// sum of the views' budgets, and every selection gives each view its share of the kept tokens. On a LLaVA-1.5 image
    /// (one view) it is the same as <see cref="Request"/>.
    /// </summary>
    PerView,
}

/// <summary>Shape of the decoder and of the visual token grid, read from the model config.</summary>
public sealed record ModelShape(int Layers, int Heads, int HiddenSize, int IntermediateSize, int VisualTokens, int GridSize)
{
    /// <summary>
    /// A LLaVA-NeXT image's visual patches per view (the base view first, then the tiles, row-major; the image_newline
    /// tokens are not visual tokens), summing to <see cref="VisualTokens"/>; null for one view (LLaVA-1.5).
    /// </summary>
    public IReadOnlyList<int>? ViewPatches { get; init; }

    /// <summary>
    /// Components of a token's rotary position: 1 (LLaVA), or 3 for Qwen2.5-VL's M-RoPE (temporal, height, width), where
    /// every prune keeps each token's original position (renumbering would lose the image's 2D layout).
    /// </summary>
    public int PositionComponents { get; init; } = 1;

    internal void Validate()
    {
        if (Layers < 1) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "A model needs at least one decoder layer.");
        if (Heads < 1) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, "A model needs at least one attention head.");
        if (HiddenSize < 1) throw new ArgumentOutOfRangeException(nameof(HiddenSize), HiddenSize, "Hidden size must be positive.");
        if (IntermediateSize < 1) throw new ArgumentOutOfRangeException(nameof(IntermediateSize), IntermediateSize, "MLP intermediate size must be positive.");
        if (VisualTokens < 1) throw new ArgumentOutOfRangeException(nameof(VisualTokens), VisualTokens, "There must be at least one visual token.");
        if (GridSize < 1) throw new ArgumentOutOfRangeException(nameof(GridSize), GridSize, "Grid size must be positive.");
        if (ViewPatches is { } views && (views.Count == 0 || views.Any(v => v < 0) || views.Sum() != VisualTokens))
            throw new ArgumentException($"The views' patches ({string.Join(", ", views)}) must be non-negative and sum to the {VisualTokens} visual tokens.", nameof(ViewPatches));
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
    IReadOnlyList<string> Notes)
{
    /// <summary>
    /// A LLaVA-NeXT image's patches, where each of <see cref="KeptIndicesPerLayer"/>'s indices lies in the original image
    /// (null for LLaVA-1.5, whose indices are row * grid + column of the one view).
    /// </summary>
    public ImagePatchMap? Patches { get; init; }

    /// <summary>
    /// FLOPs of the vision tower (and projector or merger) for the request's images: work pruning inside the LLM does not
    /// shrink, reported beside <see cref="PrefillFlops"/> (which counts the decoder's prefill only); 0 when not measured.
    /// </summary>
    public double VisionFlops { get; init; }
}

/// <summary>Where a LLaVA-NeXT image's visual patches lie in the original image (for explanations).</summary>
/// <param name="ImageWidth">Width of the original image in pixels.</param>
/// <param name="ImageHeight">Height of the original image in pixels.</param>
/// <param name="Views">Views the image was cut into: the base view (0) and the tiles.</param>
/// <param name="Areas">One area per visual index (the indices of <see cref="PruningReport.KeptIndicesPerLayer"/>).</param>
public sealed record ImagePatchMap(int ImageWidth, int ImageHeight, int Views, IReadOnlyList<PatchArea> Areas);

/// <summary>One visual patch of a LLaVA-NeXT image: its view (0 = base) and its area in the original image, in pixels.</summary>
public readonly record struct PatchArea(int View, float Left, float Top, float Right, float Bottom);
