using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace AutoPrune.Pruning;

/// <summary>
/// One model's distribution of AutoPrune's complexity signal (layer 1's text–image mutual information), measured by
/// <c>autoprune calibrate</c> on sample questions, and the map from it to the slope k of the retention curve:
/// <c>k = k0 * clamp((High - signal) / (High - Low), 0, 1)</c>, so a question as focused as the calibration set's
/// 5th-percentile one (<see cref="Low"/>) gets the steepest curve and one at the 95th percentile (<see cref="High"/>)
/// the flattest, as the paper's <c>k = 0.4 - 0.2 MI1</c> does for LLaVA-1.5-7B's MI range.
/// </summary>
public sealed record AutoPruneCalibration
{
    /// <summary>The file name the runtime looks for in a model folder.</summary>
    public const string FileName = "autoprune-calibration.json";

    /// <summary>The only format this version reads and writes.</summary>
    public const string CurrentFormat = "autoprune-calibration/1";

    [JsonPropertyName("format")] public string Format { get; init; } = CurrentFormat;

    /// <summary>The signal measured: <c>mi1</c> (MI summed over heads, as the paper) or <c>mi1_normalized</c> (as a fraction of its maximum).</summary>
    [JsonPropertyName("signal")] public string Signal { get; init; } = SignalNormalized;

    /// <summary>Signal value that maps to the steepest slope (k = k0); the 5th percentile of the calibration set.</summary>
    [JsonPropertyName("low")] public double Low { get; init; }

    /// <summary>Signal value that maps to the flattest curve (k = 0); the 95th percentile of the calibration set.</summary>
    [JsonPropertyName("high")] public double High { get; init; }

    /// <summary>Questions measured.</summary>
    [JsonPropertyName("samples")] public int Samples { get; init; }

    /// <summary>Signal values measured (questions x budgets).</summary>
    [JsonPropertyName("runs")] public int Runs { get; init; }

    /// <summary>Percentiles of the signal over the calibration set ("p0", "p5", ..., "p100").</summary>
    [JsonPropertyName("quantiles")] public IReadOnlyDictionary<string, double> Quantiles { get; init; } = new Dictionary<string, double>();

    /// <summary>The model it was measured on (checked against the model it is used with).</summary>
    [JsonPropertyName("model")] public CalibrationModel? Model { get; init; }

    /// <summary>Where the questions came from, when, and with which budget; informational.</summary>
    [JsonPropertyName("data")] public string? Data { get; init; }
    [JsonPropertyName("budgets")] public IReadOnlyList<double>? Budgets { get; init; }
    [JsonPropertyName("created_utc")] public DateTime? CreatedUtc { get; init; }

    /// <summary>
    /// The scale-free default used without a calibration: MI1 as a fraction of its bound (see
    /// <see cref="MutualInformation.ComputeWithBound"/>) mapped onto [0, k0] between <see cref="Low"/> and <see cref="High"/>.
    /// </summary>
    public static AutoPruneCalibration ScaleFreeDefault { get; } = new() { Signal = SignalNormalized, Low = 0.2, High = 0.5, Samples = 0 };

    public const string SignalRaw = "mi1";
    public const string SignalNormalized = "mi1_normalized";

    /// <summary>The slope for a measured signal value: k0 at or below <see cref="Low"/>, 0 at or above <see cref="High"/>, linear between.</summary>
    public double Slope(double signal, double k0)
    {
        if (!double.IsFinite(signal)) return 0;
        double t = (High - signal) / (High - Low);
        return k0 * Math.Clamp(t, 0, 1);
    }

    /// <summary>Shape facts of the model a calibration was measured on.</summary>
    public sealed record CalibrationModel(
        [property: JsonPropertyName("layers")] int Layers,
        [property: JsonPropertyName("heads")] int Heads,
        [property: JsonPropertyName("hidden_size")] int HiddenSize,
        [property: JsonPropertyName("visual_tokens")] int VisualTokens,
        [property: JsonPropertyName("name")] string? Name);

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Reads and checks a calibration file; errors name the file and the field.</summary>
    /// <exception cref="ArgumentException">Missing, not JSON, an unknown or missing field, or values that cannot map a slope.</exception>
    public static AutoPruneCalibration Load(string path, long maxBytes = 1L << 20)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var full = Path.GetFullPath(path);
        string text;
        try { text = Loading.InputFile.ReadAllText(full, maxBytes, "AutoPrune calibration file", "InputFileLimits.OptionsBytes"); }
        catch (IOException e) { throw new ArgumentException(e.Message, nameof(path), e); }
        return Parse(text, $"AutoPrune calibration file '{full}'");
    }

    /// <summary>Parses and checks calibration JSON; <paramref name="source"/> names it in errors.</summary>
    public static AutoPruneCalibration Parse(string json, string source = "AutoPrune calibration")
    {
        AutoPruneCalibration? c;
        try { c = JsonSerializer.Deserialize<AutoPruneCalibration>(json, Json); }
        catch (JsonException e)
        {
            string field = e.Path is { Length: > 2 } p ? p.TrimStart('$', '.') : "?";
            throw new ArgumentException($"{source}: invalid at field '{field}' (line {(e.LineNumber ?? 0) + 1}): {e.Message}");
        }
        if (c is null) throw new ArgumentException($"{source}: expected a JSON object.");
        c.Validate(source);
        return c;
    }

    /// <summary>Checks the fields that the runtime uses.</summary>
    public void Validate(string source = "AutoPrune calibration")
    {
        void Fail(string field, string problem) => throw new ArgumentException($"{source}: field '{field}' {problem}.");
        if (Format != CurrentFormat) Fail("format", $"is '{Format}'; this version reads '{CurrentFormat}'");
        if (Signal is not (SignalRaw or SignalNormalized)) Fail("signal", $"is '{Signal}'; expected '{SignalRaw}' or '{SignalNormalized}'");
        if (!double.IsFinite(Low)) Fail("low", "must be a finite number");
        if (!double.IsFinite(High)) Fail("high", "must be a finite number");
        if (!(High > Low)) Fail("high", string.Create(CultureInfo.InvariantCulture, $"({High}) must be greater than 'low' ({Low})"));
        if (Samples < 0) Fail("samples", "must not be negative");
        if (Runs < 0) Fail("runs", "must not be negative");
        foreach (var (k, v) in Quantiles)
            if (!double.IsFinite(v)) Fail($"quantiles.{k}", "must be a finite number");
        if (Model is { } m && (m.Layers < 1 || m.Heads < 1 || m.HiddenSize < 1 || m.VisualTokens < 1))
            Fail("model", "must have positive layers, heads, hidden_size and visual_tokens");
    }

    /// <summary>
    /// Throws when this calibration was measured on another text model (layers, heads or hidden size differ). The number
    /// of visual tokens is not compared: it changes with the feature strategy and, for LLaVA-NeXT, with each image.
    /// </summary>
    public void EnsureMatches(ModelShape shape, string source = "AutoPrune calibration")
    {
        if (Model is not { } m) return;
        if (m.Layers != shape.Layers || m.Heads != shape.Heads || m.HiddenSize != shape.HiddenSize)
            throw new ArgumentException(
                $"{source} was measured on a model with {m.Layers} layers, {m.Heads} heads and hidden size {m.HiddenSize}; " +
                $"this model has {shape.Layers}, {shape.Heads} and {shape.HiddenSize}. Run 'autoprune calibrate' for this model.");
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);
}
