using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>
/// Range checks of every <see cref="PruningOptions"/> field, run for each request before it is queued (whatever the
/// method, so a NaN budget with method None is refused too rather than silently ignored).
/// </summary>
internal static class PruningOptionsChecks
{
    /// <exception cref="ArgumentOutOfRangeException">A field out of range, named with its value and the range.</exception>
    public static void Validate(PruningOptions p, string paramName)
    {
        ArgumentNullException.ThrowIfNull(p, paramName);
        if (!Enum.IsDefined(p.Method))
            throw new ArgumentOutOfRangeException(paramName, p.Method, $"PruningOptions.Method {(int)p.Method} is not a pruning method.");
        if (!Enum.IsDefined(p.Accounting))
            throw new ArgumentOutOfRangeException(paramName, p.Accounting, $"PruningOptions.Accounting {(int)p.Accounting} is not Processed or Published.");
        Range(nameof(p.Budget), p.Budget, 0, double.MaxValue, lowOpen: true, "a positive number of visual tokens (>= 1) or a fraction in (0, 1)");
        Range(nameof(p.FastVDropRatio), p.FastVDropRatio, 0, 1, highOpen: true);
        Range(nameof(p.PDropLambda), p.PDropLambda, 0, 1, lowOpen: true);
        Range(nameof(p.AdaptPruneSigmaPFactor), p.AdaptPruneSigmaPFactor, 0, 1e3, lowOpen: true);
        Range(nameof(p.AdaptPruneDistanceLimit), p.AdaptPruneDistanceLimit, 0, 1e4);
        Range(nameof(p.AdaptPruneDistanceSigma), p.AdaptPruneDistanceSigma, 0, 1e4, lowOpen: true);
        Range(nameof(p.AdaptPruneSimilaritySigma), p.AdaptPruneSimilaritySigma, 0, 1e4, lowOpen: true);
        Range(nameof(p.AutoPruneX0), p.AutoPruneX0, -1e4, 1e4);
        Range(nameof(p.AutoPruneK0), p.AutoPruneK0, 0, 1e4);
        Range(nameof(p.AutoPruneGamma), p.AutoPruneGamma, 0, 1e4);
        Range(nameof(p.AutoPruneAmplitude), p.AutoPruneAmplitude, 0, 1, lowOpen: true);
        Range(nameof(p.AutoPruneN0Factor), p.AutoPruneN0Factor, 0, 1e4, lowOpen: true);
        Range(nameof(p.AutoPruneMaxScale), p.AutoPruneMaxScale, 0, 1e6, lowOpen: true);
        Range(nameof(p.AutoPruneTextWeight), p.AutoPruneTextWeight, 0, 1e4);
        Range(nameof(p.RecycleFraction), p.RecycleFraction, 0, 1);
        Range(nameof(p.RecycleClusterDivisor), p.RecycleClusterDivisor, 1, 1e6);
        Range(nameof(p.RecycleDensityNeighbours), p.RecycleDensityNeighbours, 1, 1e6);
        Range(nameof(p.VisionZipDominantFraction), p.VisionZipDominantFraction, 0, 1, lowOpen: true);

        void Range(string field, double value, double min, double max, bool lowOpen = false, string? expected = null, bool highOpen = false)
        {
            bool ok = double.IsFinite(value) && (lowOpen ? value > min : value >= min) && (highOpen ? value < max : value <= max);
            if (ok) return;
            string F(double x) => x.ToString("G", CultureInfo.InvariantCulture);
            string range = (lowOpen ? "(" : "[") + F(min) + ", " + (max == double.MaxValue ? "∞" : F(max)) + (highOpen ? ")" : "]");
            throw new ArgumentOutOfRangeException(paramName, value,
                $"PruningOptions.{field} = {F(value)} is out of range: expected {expected ?? "a finite number in " + range}.");
        }
    }
}
