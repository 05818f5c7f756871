using System.Globalization;

namespace AutoPrune.Pruning;

public sealed partial record PruningOptions
{
    /// <summary>
    /// Named starting points for an options file's <c>"Preset"</c> key: <c>autoprune-paper</c> is AutoPrune exactly as
    /// its paper defines it (reproduces the paper's FLOPs tables).
    /// </summary>
    public static IReadOnlyDictionary<string, PruningOptions> Presets { get; } = new Dictionary<string, PruningOptions>(StringComparer.OrdinalIgnoreCase)
    {
        ["autoprune-paper"] = AutoPrunePaper(),
    };

    /// <summary>
    /// AutoPrune exactly as its paper defines it: the paper's slope constants, N0 = 2.5 B then the curve, plain top-k
    /// selection, recycling, positions renumbered contiguously, layer 0 on every visual token.
    /// </summary>
    public static PruningOptions AutoPrunePaper(double budget = 128, BudgetAccounting accounting = BudgetAccounting.Processed) => new()
    {
        Method = PruningMethod.AutoPrune,
        Budget = budget,
        Accounting = accounting,
        Positions = PrunedPositions.Contiguous,
        AutoPruneK0 = 0.4,
        AutoPruneGamma = 0.2,
        AutoPruneSlope = AutoPruneSlope.Paper,
        AutoPruneScheduleShape = AutoPruneScheduleShape.Paper,
        AutoPruneCoverage = 0,
        AutoPruneRecycle = true,
        AutoPruneBeforeLlm = false,
    };

    /// <summary>
    /// Reads pruning options from a JSON file (keys are the property names, any case; enums by name; an optional
    /// <c>"Preset"</c> first). Errors name the file and the field.
    /// </summary>
    /// <exception cref="ArgumentException">The file is missing, not JSON, has an unknown field or a value out of range.</exception>
    public static PruningOptions Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var full = Path.GetFullPath(path);
        string text;
        try { text = Loading.InputFile.ReadAllText(full, new InputFileLimits().OptionsBytes, "Pruning options file", "InputFileLimits.OptionsBytes"); }
        catch (IOException e) { throw new ArgumentException(e.Message, nameof(path), e); }
        var options = Parse(text, $"Pruning options file '{full}'");
        // A relative calibration path in the file is relative to the file.
        if (options.AutoPruneCalibrationFile is { Length: > 0 } cal && !Path.IsPathRooted(cal))
            options = options with { AutoPruneCalibrationFile = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(full)!, cal)) };
        return options;
    }

    /// <summary>Parses pruning options from JSON text; <paramref name="source"/> names it in errors.</summary>
    public static PruningOptions Parse(string json, string source = "pruning options")
    {
        ArgumentNullException.ThrowIfNull(json);
        return PruningOptionsJson.Parse(json, source);
    }

    /// <summary>The options as JSON that <see cref="Load"/> / <see cref="Parse"/> read back (and an <c>IConfiguration</c> section binds).</summary>
    public string ToJson() => PruningOptionsJson.Serialize(this);

    /// <summary>
    /// Checks every field: enums defined, numbers finite and in range. Runs for every request before it is queued
    /// (whatever the method, so a NaN budget with method None is refused too) and for every options file.
    /// </summary>
    /// <param name="source">What the options came from, for the message (an options file, a configuration section); null for a request's options.</param>
    /// <exception cref="ArgumentOutOfRangeException">A field out of range, named with its value and the range.</exception>
    public void Validate(string? source = null)
    {
        string Name(string field) => source is null ? $"PruningOptions.{field}" : $"{source}: field '{field}'";
        void Defined<T>(string field, T v) where T : struct, Enum
        {
            if (!Enum.IsDefined(v))
                throw new ArgumentOutOfRangeException(field, v, $"{Name(field)} {Convert.ToInt64(v, CultureInfo.InvariantCulture)} is not {(typeof(T) == typeof(PruningMethod) ? "a pruning method" : "one of " + string.Join(", ", Enum.GetNames<T>()))}.");
        }
        void Range(string field, double value, double min, double max, bool lowOpen = false, string? expected = null, bool highOpen = false)
        {
            bool ok = double.IsFinite(value) && (lowOpen ? value > min : value >= min) && (highOpen ? value < max : value <= max);
            if (ok) return;
            string F(double x) => x.ToString("G", CultureInfo.InvariantCulture);
            string range = (lowOpen ? "(" : "[") + F(min) + ", " + (max == double.MaxValue ? "∞" : F(max)) + (highOpen ? ")" : "]");
            throw new ArgumentOutOfRangeException(field, value, $"{Name(field)} = {F(value)} is out of range: expected {expected ?? "a finite number in " + range}.");
        }
        if (!Enum.IsDefined(Method))
            throw new ArgumentOutOfRangeException(nameof(Method), Method, $"{Name(nameof(Method))} {(int)Method} is not a pruning method.");
        if (!Enum.IsDefined(Accounting))
            throw new ArgumentOutOfRangeException(nameof(Accounting), Accounting, $"{Name(nameof(Accounting))} {(int)Accounting} is not Processed or Published.");
        Defined(nameof(Positions), Positions);
        Defined(nameof(BudgetScope), BudgetScope);
        Defined(nameof(AutoPruneSlope), AutoPruneSlope);
        Defined(nameof(AutoPruneScheduleShape), AutoPruneScheduleShape);
        Defined(nameof(AutoPruneBeforeLlmSelection), AutoPruneBeforeLlmSelection);
        Range(nameof(Budget), Budget, 0, double.MaxValue, lowOpen: true, "a positive number of visual tokens (>= 1) or a fraction in (0, 1)");
        Range(nameof(FastVDropRatio), FastVDropRatio, 0, 1, highOpen: true);
        Range(nameof(PDropLambda), PDropLambda, 0, 1, lowOpen: true);
        Range(nameof(AdaptPruneSigmaPFactor), AdaptPruneSigmaPFactor, 0, 1e3, lowOpen: true);
        Range(nameof(AdaptPruneDistanceLimit), AdaptPruneDistanceLimit, 0, 1e4);
        Range(nameof(AdaptPruneDistanceSigma), AdaptPruneDistanceSigma, 0, 1e4, lowOpen: true);
        Range(nameof(AdaptPruneSimilaritySigma), AdaptPruneSimilaritySigma, 0, 1e4, lowOpen: true);
        Range(nameof(AutoPruneX0), AutoPruneX0, -1e4, 1e4);
        Range(nameof(AutoPruneK0), AutoPruneK0, 0, 1e4);
        Range(nameof(AutoPruneGamma), AutoPruneGamma, 0, 1e4);
        Range(nameof(AutoPruneAmplitude), AutoPruneAmplitude, 0, 1, lowOpen: true);
        Range(nameof(AutoPruneN0Factor), AutoPruneN0Factor, 0, 1e4, lowOpen: true);
        Range(nameof(AutoPruneMaxScale), AutoPruneMaxScale, 0, 1e6, lowOpen: true);
        Range(nameof(AutoPruneTextWeight), AutoPruneTextWeight, 0, 1e4);
        Range(nameof(AutoPruneCoverage), AutoPruneCoverage, 0, 1);
        Range(nameof(AutoPruneCoverageSimilaritySigma), AutoPruneCoverageSimilaritySigma, 0, 1e4, lowOpen: true);
        Range(nameof(AutoPruneCoverageDistanceSigma), AutoPruneCoverageDistanceSigma, 0, 1e4, lowOpen: true);
        Range(nameof(AutoPruneCoverageDistanceLimit), AutoPruneCoverageDistanceLimit, 0, 1e4);
        Range(nameof(RecycleFraction), RecycleFraction, 0, 1);
        Range(nameof(RecycleClusterDivisor), RecycleClusterDivisor, 1, 1e6);
        Range(nameof(RecycleDensityNeighbours), RecycleDensityNeighbours, 1, 1e6);
        Range(nameof(DartVisualPivots), DartVisualPivots, 0, 1e6);
        Range(nameof(DartTextPivots), DartTextPivots, 0, 1e6);
        Range(nameof(VisionZipDominantFraction), VisionZipDominantFraction, 0, 1, lowOpen: true);
        AutoPruneCalibration?.Validate(Name(nameof(AutoPruneCalibration)));
    }
}
