using System.Globalization;

namespace AutoPrune.Pruning;

/// <summary>One question to measure: an image and a question about it.</summary>
public sealed record CalibrationSample(ImageInput Image, string Question);

/// <summary>
/// Measures AutoPrune's complexity signal on sample questions and builds the <see cref="AutoPruneCalibration"/> that
/// spreads this model's range of it over the slope range [0, k0] (what <c>autoprune calibrate</c> writes).
/// </summary>
public static class AutoPruneCalibrator
{
    /// <summary>
    /// Runs each sample through the model with AutoPrune at each of <paramref name="budgets"/> (the signal is measured at
    /// layer 1 on the tokens AutoPrune keeps there, exactly as at run time), pools the values, and maps the 5th
    /// percentile to the steepest slope and the 95th to the flattest.
    /// </summary>
    /// <param name="pruning">AutoPrune options to measure under (method and budget are set per run); default ones if null.</param>
    /// <param name="signal"><see cref="AutoPruneCalibration.SignalNormalized"/> (default) or <see cref="AutoPruneCalibration.SignalRaw"/>.</param>
    /// <param name="progress">Receives the number of runs done.</param>
    public static async Task<AutoPruneCalibration> CalibrateAsync(VisionLanguageModel model, IReadOnlyList<CalibrationSample> samples,
        IReadOnlyList<double>? budgets = null, PruningOptions? pruning = null, string signal = AutoPruneCalibration.SignalNormalized,
        string? dataName = null, IProgress<int>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(samples);
        if (samples.Count < 2) throw new ArgumentException($"Calibration needs at least 2 sample questions (got {samples.Count}); 100 or more give a stable range.", nameof(samples));
        if (signal is not (AutoPruneCalibration.SignalRaw or AutoPruneCalibration.SignalNormalized))
            throw new ArgumentException($"Unknown signal '{signal}': expected '{AutoPruneCalibration.SignalNormalized}' or '{AutoPruneCalibration.SignalRaw}'.", nameof(signal));
        budgets = budgets is { Count: > 0 } ? budgets : [128];
        var template = (pruning ?? new PruningOptions()) with { Method = PruningMethod.AutoPrune, AutoPruneSlope = AutoPruneSlope.Paper };
        template.Validate();
        var values = new List<double>();
        int done = 0;
        foreach (var sample in samples)
            foreach (var budget in budgets)
            {
                ct.ThrowIfCancellationRequested();
                var request = VisionRequest.Create(sample.Question, sample.Image) with
                {
                    Generation = new GenerationOptions { MaxNewTokens = 1 },
                    Pruning = template with { Budget = budget },
                };
                var answer = await model.AskAsync(request, ct).ConfigureAwait(false);
                if (!answer.Report.Signals.TryGetValue(signal, out var v))
                    throw new InvalidOperationException($"The AutoPrune report has no '{signal}' signal: the model is too shallow to measure it at layer 1.");
                if (double.IsFinite(v)) values.Add(v);
                progress?.Report(++done);
            }
        if (values.Count < 2) throw new InvalidOperationException("Fewer than 2 finite signal values were measured.");
        values.Sort();
        var quantiles = new Dictionary<string, double>();
        foreach (int p in (int[])[0, 5, 10, 25, 50, 75, 90, 95, 100]) quantiles[$"p{p}"] = Quantile(values, p / 100.0);
        double low = quantiles["p5"], high = quantiles["p95"];
        if (!(high > low))
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"Every sample gave the same {signal} ({low}): use more varied questions to calibrate."));
        var s = model.Shape;
        var calibration = new AutoPruneCalibration
        {
            Signal = signal,
            Low = low,
            High = high,
            Samples = samples.Count,
            Runs = values.Count,
            Quantiles = quantiles,
            Model = new AutoPruneCalibration.CalibrationModel(s.Layers, s.Heads, s.HiddenSize, s.VisualTokens, Path.GetFileName(model.Info.Directory.TrimEnd('/', '\\'))),
            Data = dataName,
            Budgets = budgets.ToArray(),
            CreatedUtc = DateTime.UtcNow,
        };
        calibration.Validate();
        return calibration;
    }

    /// <summary>Linear-interpolated quantile of sorted values.</summary>
    internal static double Quantile(IReadOnlyList<double> sorted, double q)
    {
        double pos = q * (sorted.Count - 1);
        int i = (int)Math.Floor(pos);
        if (i >= sorted.Count - 1) return sorted[^1];
        return sorted[i] + (pos - i) * (sorted[i + 1] - sorted[i]);
    }
}
