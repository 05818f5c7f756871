using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Runtime.Tests.Pruning;

/// <summary>Pruning options files and AutoPrune calibration files: round trips, presets, and errors that name the file and the field.</summary>
public class OptionsAndCalibrationFileTests
{
    private static string Temp(string name, string text)
    {
        var dir = Path.Combine(Path.GetTempPath(), "autoprune-options-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void OptionsRoundTripThroughJsonWithEveryField()
    {
        var o = new PruningOptions
        {
            Method = PruningMethod.Dart,
            Budget = 0.25,
            Accounting = BudgetAccounting.Published,
            Positions = PrunedPositions.Original,
            AutoPruneCoverage = 0.5,
            AutoPruneScheduleShape = AutoPruneScheduleShape.Smooth,
            AutoPruneSlope = AutoPruneSlope.Normalized,
            DartTextPivots = 2,
            RecycleClusterDivisor = 7,
        };
        var back = PruningOptions.Parse(o.ToJson());
        Assert.Equal(o, back);
        var file = Temp("o.json", o.ToJson());
        Assert.Equal(o, PruningOptions.Load(file));
    }

    [Fact]
    public void KeysAreCaseInsensitiveAndEnumsAreNames()
    {
        var o = PruningOptions.Parse("""{ "method": "autoprune", "BUDGET": 96, "accounting": "published", /* a comment */ }""");
        Assert.Equal(PruningMethod.AutoPrune, o.Method);
        Assert.Equal(96, o.Budget);
        Assert.Equal(BudgetAccounting.Published, o.Accounting);
    }

    [Fact]
    public void PaperPresetIsAutoPruneAsPublishedAndOtherKeysOverrideIt()
    {
        var o = PruningOptions.Parse("""{ "Preset": "autoprune-paper", "Budget": 64 }""");
        Assert.Equal(PruningOptions.AutoPrunePaper(64), o);
        Assert.Equal(AutoPruneScheduleShape.Paper, o.AutoPruneScheduleShape);
        Assert.Equal(AutoPruneSlope.Paper, o.AutoPruneSlope);
        Assert.Equal(PrunedPositions.Contiguous, o.Positions);
        Assert.Equal(0, o.AutoPruneCoverage);
        Assert.True(o.AutoPruneRecycle);
    }

    [Theory]
    [InlineData("""{ "Budgt": 128 }""", "unknown field 'Budgt'")]
    [InlineData("""{ "Budget": "many" }""", "field 'Budget'")]
    [InlineData("""{ "Method": "fastest" }""", "field 'Method'")]
    [InlineData("""{ "Budget": -5 }""", "field 'Budget' = -5")]
    [InlineData("""{ "RecycleFraction": 1.5 }""", "field 'RecycleFraction' = 1.5")]
    [InlineData("""{ "AutoPruneK0": 1e400 }""", "field 'AutoPruneK0'")]
    [InlineData("""{ "DartVisualPivots": -1 }""", "field 'DartVisualPivots' = -1")]
    [InlineData("""{ "Preset": "fastest" }""", "field 'Preset' is 'fastest'")]
    [InlineData("""[1, 2]""", "expected a JSON object")]
    [InlineData("""{ "Budget": 1""", "not valid JSON")]
    [InlineData("""{ "Budget": 1, "budget": 2 }""", "field appears twice: 'budget'")]
    public void BadOptionsNameTheFileAndTheField(string json, string expected)
    {
        var file = Temp("bad.json", json);
        var e = Assert.ThrowsAny<ArgumentException>(() => PruningOptions.Load(file));
        Assert.Contains(file, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MissingOptionsFileIsAClearError()
    {
        var e = Assert.Throws<ArgumentException>(() => PruningOptions.Load("/nonexistent/options.json"));
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void RelativeCalibrationPathInAnOptionsFileIsRelativeToThatFile()
    {
        var file = Temp("o.json", """{ "Method": "AutoPrune", "AutoPruneCalibrationFile": "cal.json" }""");
        var o = PruningOptions.Load(file);
        Assert.Equal(Path.Combine(Path.GetDirectoryName(file)!, "cal.json"), o.AutoPruneCalibrationFile);
    }

    private const string GoodCalibration = """
        { "format": "autoprune-calibration/1", "signal": "mi1_normalized", "low": 0.25, "high": 0.45, "samples": 10,
          "quantiles": { "p5": 0.25, "p50": 0.35, "p95": 0.45 },
          "model": { "layers": 8, "heads": 4, "hidden_size": 192, "visual_tokens": 576, "name": "tiny" } }
        """;

    [Fact]
    public void CalibrationMapsTheRangeLinearlyOntoTheSlopeRange()
    {
        var c = AutoPruneCalibration.Parse(GoodCalibration);
        Assert.Equal(0.4, c.Slope(0.20, 0.4), 12); // below low: steepest
        Assert.Equal(0.4, c.Slope(0.25, 0.4), 12);
        Assert.Equal(0.2, c.Slope(0.35, 0.4), 12);
        Assert.Equal(0.0, c.Slope(0.45, 0.4), 12);
        Assert.Equal(0.0, c.Slope(0.90, 0.4), 12); // above high: flat
        Assert.Equal(0.0, c.Slope(double.NaN, 0.4));
        Assert.Equal(c.ToJson(), AutoPruneCalibration.Parse(c.ToJson()).ToJson());
    }

    [Theory]
    [InlineData("\"format\": \"autoprune-calibration/1\"", "\"format\": \"v9\"", "field 'format'")]
    [InlineData("\"low\": 0.25", "\"low\": 0.5", "field 'high'")]
    [InlineData("\"signal\": \"mi1_normalized\"", "\"signal\": \"entropy\"", "field 'signal'")]
    [InlineData("\"samples\": 10", "\"samples\": 10, \"extra\": 1", "'extra'")]
    [InlineData("\"high\": 0.45", "\"high\": \"big\"", "field 'high'")]
    [InlineData("\"layers\": 8", "\"layers\": 0", "field 'model'")]
    public void BadCalibrationNamesTheFileAndTheField(string from, string to, string expected)
    {
        var file = Temp("autoprune-calibration.json", GoodCalibration.Replace(from, to));
        var e = Assert.ThrowsAny<ArgumentException>(() => AutoPruneCalibration.Load(file));
        Assert.Contains(file, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void CalibrationOfAnotherModelShapeIsRefused()
    {
        var c = AutoPruneCalibration.Parse(GoodCalibration);
        c.EnsureMatches(new ModelShape(8, 4, 192, 512, 576, 24));
        var e = Assert.Throws<ArgumentException>(() => c.EnsureMatches(new ModelShape(32, 32, 4096, 11008, 576, 24)));
        Assert.Contains("calibrate", e.Message);
    }
}
