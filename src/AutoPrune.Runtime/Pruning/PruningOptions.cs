namespace AutoPrune.Pruning;

/// <summary>
/// Pruning knobs. <see cref="Budget"/> &gt;= 1 is a number of visual tokens; a value in (0, 1) is a
/// fraction of the model's visual tokens. Every method constant of the spec is exposed with the
/// spec's default.
/// </summary>
public sealed partial record PruningOptions
{
    /// <summary>The budget of <see cref="Default"/>: 128 visual tokens, averaged over the decoder layers (processed accounting).</summary>
    public const double DefaultBudget = 128;

    /// <summary>
    /// The pruning every surface applies when nothing else is configured: AutoPrune at <see cref="DefaultBudget"/> (128)
    /// visual tokens. It is <see cref="ModelOptions.DefaultPruning"/>'s initial value, which the library, the
    /// <c>IChatClient</c>, Semantic Kernel, ML.NET and the server use, and the CLI's <c>--method</c>/<c>--budget</c>
    /// defaults. On the fixture's 800-question dev set it keeps 96.6% of the unpruned accuracy at 18.1% of the prefill
    /// FLOPs (the README's results: 96.2% at 96, 97.2% at 192). Being a default, it never fails a request: one it cannot
    /// serve (no image, several images, a model or image too small for the budget) runs unpruned and the report says why.
    /// Not the same as <c>new PruningOptions()</c>, whose <see cref="Method"/> is <see cref="PruningMethod.None"/>.
    /// </summary>
    public static PruningOptions Default { get; } = new() { Method = PruningMethod.AutoPrune, Budget = DefaultBudget };

    /// <summary>The method; <see cref="PruningMethod.None"/> in a new instance (see <see cref="Default"/> for the surfaces' default).</summary>
    public PruningMethod Method { get; init; } = PruningMethod.None;

    /// <summary>Visual-token budget: &gt;= 1 tokens, in (0, 1) a fraction of V.</summary>
    public double Budget { get; init; } = DefaultBudget;

    public BudgetAccounting Accounting { get; init; } = BudgetAccounting.Processed;

    /// <summary>
    /// What <see cref="Budget"/> is a budget of on a LLaVA-NeXT image: all its visual tokens together (the default), or
    /// each view (base view and tiles) on its own (see <see cref="Pruning.BudgetScope"/>). The image_newline tokens are
    /// never pruned and never counted.
    /// </summary>
    public BudgetScope BudgetScope { get; init; } = BudgetScope.Request;

    /// <summary>
    /// RoPE positions of the tokens that remain after a prune: each method's own convention (<see cref="PrunedPositions.MethodDefault"/>),
    /// the original positions with gaps, or renumbered contiguously. Original positions keep the image's layout, which
    /// the fixture model needs to count objects (docs/results.md).
    /// </summary>
    public PrunedPositions Positions { get; init; } = PrunedPositions.MethodDefault;

    // FastV
    /// <summary>FastV's paper default drop ratio R (used by the paper-default schedule only; a budget overrides it).</summary>
    public double FastVDropRatio { get; init; } = 0.5;

    // PDrop
    /// <summary>PDrop's paper default per-stage keep ratio lambda (paper-default schedule only).</summary>
    public double PDropLambda { get; init; } = 0.5;

    // AdaptPrune
    /// <summary>sigma_p = factor * g.</summary>
    public double AdaptPruneSigmaPFactor { get; init; } = 0.5;
    public double AdaptPruneDistanceLimit { get; init; } = 5;
    public double AdaptPruneDistanceSigma { get; init; } = 1.5;
    public double AdaptPruneSimilaritySigma { get; init; } = 0.05;

    // AutoPrune. The defaults are AutoPrune as this library runs it: the paper's per-sample logistic curve driven by
    // layer 1's text-image mutual information, calibrated to the model, with the changes docs/results.md measures
    // (a smooth curve over every layer starting before the LLM, coverage in every selection, original positions, no
    // recycling). PruningOptions.AutoPrunePaper() is the paper exactly.

    /// <summary>Logistic midpoint for a 32-layer model; scaled by L/32.</summary>
    public double AutoPruneX0 { get; init; } = 14.9;
    /// <summary>
    /// The steepest slope k of the curve. The paper's formula is k = max(0.4 - 0.2 MI1, 0) (k0 = 0.4, the paper preset);
    /// the calibrated default maps the model's MI1 range onto [0, 0.2], the paper's typical slopes for LLaVA-1.5-7B
    /// (MI1 around 0.8-1), because the steepest curves leave the last layers too few tokens to count objects.
    /// </summary>
    public double AutoPruneK0 { get; init; } = 0.2;
    /// <summary>The paper's MI1 coefficient in k = max(k0 - gamma MI1 32/H, 0) (<see cref="AutoPruneSlope.Paper"/> only).</summary>
    public double AutoPruneGamma { get; init; } = 0.2;
    public double AutoPruneAmplitude { get; init; } = 0.75;
    /// <summary>The paper's N0 = factor x B after layer 0 (<see cref="AutoPruneScheduleShape.Paper"/> only).</summary>
    public double AutoPruneN0Factor { get; init; } = 2.5;
    /// <summary>Upper end of the bisection interval for the curve scale s.</summary>
    public double AutoPruneMaxScale { get; init; } = 20;
    /// <summary>Weight of the MI0-scaled text attention in the layer-0 pre-selection score.</summary>
    public double AutoPruneTextWeight { get; init; } = 0.3;

    /// <summary>How layer 1's mutual information sets the curve's slope k (see <see cref="Pruning.AutoPruneSlope"/>).</summary>
    public AutoPruneSlope AutoPruneSlope { get; init; } = AutoPruneSlope.Calibrated;
    /// <summary>A calibration file written by <c>autoprune calibrate</c> (else the model folder's <c>autoprune-calibration.json</c>); a relative path in an options file is relative to that file.</summary>
    public string? AutoPruneCalibrationFile { get; init; }
    /// <summary>A calibration given directly (takes precedence over <see cref="AutoPruneCalibrationFile"/> and the model folder's file).</summary>
    public AutoPruneCalibration? AutoPruneCalibration { get; init; }
    /// <summary>How the per-layer counts follow the curve (see <see cref="Pruning.AutoPruneScheduleShape"/>).</summary>
    public AutoPruneScheduleShape AutoPruneScheduleShape { get; init; } = AutoPruneScheduleShape.Smooth;
    /// <summary>
    /// Smooth schedule only: layer 0 runs on the tokens the curve gives it, chosen before the LLM (see
    /// <see cref="Pruning.AutoPruneBeforeLlmSelection"/>), instead of on all V.
    /// </summary>
    public bool AutoPruneBeforeLlm { get; init; } = true;
    /// <summary>How the tokens that enter layer 0 are chosen when <see cref="AutoPruneBeforeLlm"/> is on.</summary>
    public AutoPruneBeforeLlmSelection AutoPruneBeforeLlmSelection { get; init; } = AutoPruneBeforeLlmSelection.ClsCoverage;
    /// <summary>
    /// Strength of the coverage suppression in AutoPrune's selections, in [0, 1]: 0 is the paper's plain top-k by score;
    /// 1 damps a token close to and like one already kept the most, so every distinct region keeps a token.
    /// </summary>
    public double AutoPruneCoverage { get; init; } = 1;
    /// <summary>Feature-similarity sigma of the coverage suppression (on 1 - cosine of the tokens' features).</summary>
    public double AutoPruneCoverageSimilaritySigma { get; init; } = 0.2;
    /// <summary>Grid-distance sigma of the coverage suppression, in patches.</summary>
    public double AutoPruneCoverageDistanceSigma { get; init; } = 1.5;
    /// <summary>Grid-distance limit of the coverage suppression, in patches.</summary>
    public double AutoPruneCoverageDistanceLimit { get; init; } = 5;
    /// <summary>Whether AutoPrune recycles dropped tokens into merged ones (the paper does; on the fixture it costs accuracy).</summary>
    public bool AutoPruneRecycle { get; init; }

    // Recycling (SparseVLM, AutoPrune)
    /// <summary>Fraction of the dropped tokens (plus one) that are recycled.</summary>
    public double RecycleFraction { get; init; } = 0.3;
    /// <summary>n recycled tokens are clustered into floor(n / divisor) + 1 groups.</summary>
    public int RecycleClusterDivisor { get; init; } = 10;
    /// <summary>k of the k-NN density in density-peak clustering.</summary>
    public int RecycleDensityNeighbours { get; init; } = 5;

    // DART
    /// <summary>Visual pivot tokens (largest key L1 norm) DART keeps and compares against.</summary>
    public int DartVisualPivots { get; init; } = 4;
    /// <summary>Text pivot tokens (after the image, largest key L1 norm) DART compares against.</summary>
    public int DartTextPivots { get; init; } = 4;

    // VisionZip
    /// <summary>Dominant share D/B of the VisionZip budget (54/64 = 108/128 = 162/192); C = B - D.</summary>
    public double VisionZipDominantFraction { get; init; } = 54.0 / 64.0;
}
