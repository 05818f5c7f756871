namespace AutoPrune.Pruning;

/// <summary>
/// Pruning knobs. <see cref="Budget"/> &gt;= 1 is a number of visual tokens; a value in (0, 1) is a
/// fraction of the model's visual tokens. Every method constant of the spec is exposed with the
/// spec's default.
/// </summary>
public sealed record PruningOptions
{
    public PruningMethod Method { get; init; } = PruningMethod.None;

    /// <summary>Visual-token budget: &gt;= 1 tokens, in (0, 1) a fraction of V.</summary>
    public double Budget { get; init; } = 128;

    public BudgetAccounting Accounting { get; init; } = BudgetAccounting.Processed;

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

    // AutoPrune
    /// <summary>Logistic midpoint for a 32-layer model; scaled by L/32.</summary>
    public double AutoPruneX0 { get; init; } = 14.9;
    public double AutoPruneK0 { get; init; } = 0.4;
    public double AutoPruneGamma { get; init; } = 0.2;
    public double AutoPruneAmplitude { get; init; } = 0.75;
    public double AutoPruneN0Factor { get; init; } = 2.5;
    /// <summary>Upper end of the bisection interval for the curve scale s.</summary>
    public double AutoPruneMaxScale { get; init; } = 20;
    /// <summary>Weight of the MI0-scaled text attention in the layer-0 pre-selection score.</summary>
    public double AutoPruneTextWeight { get; init; } = 0.3;

    // Recycling (SparseVLM, AutoPrune)
    /// <summary>Fraction of the dropped tokens (plus one) that are recycled.</summary>
    public double RecycleFraction { get; init; } = 0.3;
    /// <summary>n recycled tokens are clustered into floor(n / divisor) + 1 groups.</summary>
    public int RecycleClusterDivisor { get; init; } = 10;
    /// <summary>k of the k-NN density in density-peak clustering.</summary>
    public int RecycleDensityNeighbours { get; init; } = 5;

    // VisionZip
    /// <summary>Dominant share D/B of the VisionZip budget (54/64 = 108/128 = 162/192); C = B - D.</summary>
    public double VisionZipDominantFraction { get; init; } = 54.0 / 64.0;
}
