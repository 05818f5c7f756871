using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>One entry of results.json: a method at a budget.</summary>
public sealed record EvalResult(
    string Method, double Budget, bool Skipped, string? SkipReason, int N, int Errors, double? Accuracy,
    IReadOnlyDictionary<string, double> AccuracyByType, double? Retention, double? AvgVisualTokensPerLayer, double? AvgVisualTokensPublished,
    double? FlopsRatio, double? PrefillMsMedian, double? DecodeMsMedian, double? TotalMsMedian);

/// <summary>The results.json document.</summary>
public sealed record EvalResultsDocument(
    string Command, string Data, string Model, string Device, string BudgetAccounting, int DecoderLayers, int VisualTokens,
    int RowsUsed, int RowsSkipped, IReadOnlyList<BadRow> SkippedRows, int Answers, int MaxNewTokens, int Parallel,
    double WallSeconds, double VisionMsMedian, string StartedUtc, string Machine, IReadOnlyList<string> Types, IReadOnlyList<EvalResult> Results);

public static class EvalOutputs
{
    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
    private static readonly JsonSerializerOptions Line = new(Json) { WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static void WriteAll(EvalRun run)
    {
        var doc = Summarize(run);
        File.WriteAllText(Path.Combine(run.Settings.OutDir, "results.json"), JsonSerializer.Serialize(doc, Json) + "\n");
        File.WriteAllText(Path.Combine(run.Settings.OutDir, "results.md"), Markdown(doc));
        WritePredictions(run, Path.Combine(run.Settings.OutDir, "predictions.jsonl"));
        Plot(doc, Path.Combine(run.Settings.OutDir, "accuracy_vs_flops.png"));
    }

    private static double Median(IEnumerable<double> xs)
    {
        var a = xs.Where(x => !double.IsNaN(x)).OrderBy(x => x).ToArray();
        if (a.Length == 0) return double.NaN;
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    private static double R(double x, int digits) => Math.Round(x, digits);

    public static EvalResultsDocument Summarize(EvalRun run)
    {
        var types = run.RowsUsed.Select(r => r.Type ?? "other").Distinct().OrderBy(t => t, StringComparer.Ordinal).ToList();
        var towers = run.Predictions.Where(p => p.TowerMs > 0).GroupBy(p => p.Row.Line).Select(g => g.First().TowerMs).ToList();
        double towerMedian = Median(towers);
        double? noneAcc = null;
        var results = new List<EvalResult>();
        foreach (var c in run.Combos)
        {
            if (c.SkipReason is not null)
            {
                results.Add(new EvalResult(c.Method, c.Budget, true, c.SkipReason, 0, 0, null, new Dictionary<string, double>(), null, null, null, null, null, null, null));
                continue;
            }
            var preds = run.Predictions.Where(p => p.Combo.Index == c.Index).ToList();
            var ok = preds.Where(p => p.Answer is not null).ToList();
            int errors = preds.Count - ok.Count;
            if (ok.Count == 0)
            {
                string why = preds.Select(p => p.Error).FirstOrDefault(e => e is not null) ?? "no rows";
                results.Add(new EvalResult(c.Method, c.Budget, true, $"every request failed: {why}", 0, errors, null, new Dictionary<string, double>(), null, null, null, null, null, null, null));
                continue;
            }
            double acc = (double)ok.Count(p => p.Correct) / ok.Count;
            if (c.Method == "none") noneAcc = acc;
            var byType = ok.GroupBy(p => p.Row.Type ?? "other").OrderBy(g => g.Key, StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => R((double)g.Count(p => p.Correct) / g.Count(), 4));
            results.Add(new EvalResult(c.Method, c.Budget, false, null, ok.Count, errors, R(acc, 4), byType,
                noneAcc is > 0 ? R(acc / noneAcc.Value, 4) : null,
                R(ok.Average(p => p.Answer!.Report.AvgVisualTokensProcessed), 2),
                R(ok.Average(p => p.Answer!.Report.AvgVisualTokensPublished), 2),
                R(ok.Average(p => p.Answer!.Report.FlopsRatio), 4),
                R(Median(ok.Select(p => p.Answer!.Timings.PrefillMs)), 2),
                R(Median(ok.Select(p => p.Answer!.Timings.DecodeMs)), 2),
                R(Median(ok.Select(p => p.Answer!.Timings.TotalMs + (p.Answer.Timings.PreprocessMs == 0 ? (p.TowerMs > 0 ? p.TowerMs : towerMedian) : 0))), 2)));
        }
        var s = run.Settings;
        return new EvalResultsDocument(s.CommandLine, RelativeToCwd(s.Data), RelativeToCwd(run.ModelInfo.Directory), run.ModelInfo.Device,
            s.Accounting.ToString().ToLowerInvariant(), run.Shape.Layers, run.Shape.VisualTokens,
            run.Rows, run.BadRows.Count, run.BadRows, run.Predictions.Count, s.MaxNewTokens, s.Parallel,
            R(run.WallSeconds, 1), R(towerMedian, 2), run.StartedUtc.ToString("yyyy-MM-ddTHH:mm:ssZ", Inv),
            $"{Environment.ProcessorCount} logical cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}",
            types, results);
    }

    private static string RelativeToCwd(string path)
    {
        var rel = Path.GetRelativePath(Environment.CurrentDirectory, path);
        return rel.StartsWith("..", StringComparison.Ordinal) ? path : rel;
    }

    private static string P(double? x) => x is double v ? (100 * v).ToString("F1", Inv) : "–";

    public static string Markdown(EvalResultsDocument d)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# Accuracy against compute: {d.Data}");
        sb.AppendLine();
        sb.AppendLine($"Model `{d.Model}` ({d.DecoderLayers} decoder layers, {d.VisualTokens} visual tokens), device {d.Device}, " +
                      $"`{d.BudgetAccounting}` budget accounting, {d.RowsUsed} rows ({d.RowsSkipped} bad rows skipped), {d.Answers} answers, " +
                      $"wall time {d.WallSeconds.ToString("F1", Inv)} s on {d.Machine}.");
        sb.AppendLine();
        sb.AppendLine($"Command: `{d.Command}`");
        sb.AppendLine();
        sb.AppendLine("Accuracy in %, per question type and overall; retention = accuracy / unpruned accuracy; tokens/layer = visual tokens each decoder layer " +
                      "processes, averaged over layers; FLOPs = prefill FLOPs relative to unpruned; prefill = median prefill latency (ms).");
        sb.AppendLine();
        sb.Append("| Method | Budget | Tokens/layer | FLOPs |");
        foreach (var t in d.Types) sb.Append($" {t} |");
        sb.AppendLine(" Acc | Retention | Prefill ms |");
        sb.Append("|---|---:|---:|---:|");
        foreach (var _ in d.Types) sb.Append("---:|");
        sb.AppendLine("---:|---:|---:|");
        foreach (var r in d.Results)
        {
            string budget = r.Method == "none" ? $"{r.Budget.ToString("0.###", Inv)} (all)" : r.Budget.ToString("0.###", Inv);
            if (r.Skipped)
            {
                sb.Append($"| {r.Method} | {budget} | – | – |");
                foreach (var _ in d.Types) sb.Append(" – |");
                sb.AppendLine($" skipped | – | – |");
                continue;
            }
            sb.Append($"| {r.Method} | {budget} | {r.AvgVisualTokensPerLayer?.ToString("F1", Inv)} | {P(r.FlopsRatio)}% |");
            foreach (var t in d.Types) sb.Append($" {(r.AccuracyByType.TryGetValue(t, out var a) ? P(a) : "–")} |");
            sb.AppendLine($" **{P(r.Accuracy)}** | {P(r.Retention)}% | {r.PrefillMsMedian?.ToString("F1", Inv)} |");
        }
        var skipped = d.Results.Where(r => r.Skipped).ToList();
        if (skipped.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("Skipped combinations:");
            foreach (var r in skipped) sb.AppendLine($"- {r.Method} at {r.Budget.ToString("0.###", Inv)}: {r.SkipReason}");
        }
        var errs = d.Results.Where(r => r.Errors > 0).ToList();
        if (errs.Count > 0)
        {
            sb.AppendLine();
            foreach (var r in errs) sb.AppendLine($"- {r.Method} at {r.Budget.ToString("0.###", Inv)}: {r.Errors} request(s) failed (see predictions.jsonl), excluded from n.");
        }
        if (d.SkippedRows.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine($"Bad data rows skipped ({d.SkippedRows.Count}):");
            foreach (var b in d.SkippedRows.Take(50)) sb.AppendLine($"- line {b.Line}: {b.Reason}");
            if (d.SkippedRows.Count > 50) sb.AppendLine($"- … and {d.SkippedRows.Count - 50} more (results.json lists all)");
        }
        sb.AppendLine();
        sb.AppendLine("![Retention against FLOPs](accuracy_vs_flops.png)");
        return sb.ToString();
    }

    private sealed record PredictionLine(
        int Line, string Id, string Image, string Question, string Answer, string? Type, string Method, double Budget,
        string? Prediction, bool Correct, string? Error, string? FinishReason, int? GeneratedTokens,
        double? AvgVisualTokensPerLayer, double? AvgVisualTokensPublished, int[]? VisualTokensPerLayer, double? FlopsRatio, double? PrefillFlops,
        IReadOnlyDictionary<string, double>? Signals, IReadOnlyList<string>? Notes, IReadOnlyList<int[]>? KeptIndicesPerLayer,
        double? PreprocessMs, double? VisionMs, double? PrefillMs, double? DecodeMs, double? TotalMs);

    private static void WritePredictions(EvalRun run, string path)
    {
        using var w = new StreamWriter(path, false, new UTF8Encoding(false));
        string root = Path.GetDirectoryName(Path.GetFullPath(run.Settings.Data))!;
        foreach (var p in run.Predictions)
        {
            var a = p.Answer;
            var rep = a?.Report;
            var line = new PredictionLine(p.Row.Line, p.Row.Id, Path.GetRelativePath(run.Settings.ImagesRoot ?? root, p.Row.ImagePath), p.Row.Question, p.Row.Answer, p.Row.Type,
                p.Combo.Method, p.Combo.Budget, a?.Text.Trim(), p.Correct, p.Error, a?.FinishReason.ToString().ToLowerInvariant(), a?.TokenIds.Count,
                rep is null ? null : R(rep.AvgVisualTokensProcessed, 3), rep is null ? null : R(rep.AvgVisualTokensPublished, 3), rep?.VisualTokensPerLayer,
                rep is null ? null : R(rep.FlopsRatio, 5), rep?.PrefillFlops, rep?.Signals, rep?.Notes,
                run.Settings.KeepIndices ? rep?.KeptIndicesPerLayer : null,
                a is null ? null : R(a.Timings.PreprocessMs, 2), a is null ? null : R(a.Timings.VisionMs, 2), a is null ? null : R(a.Timings.PrefillMs, 2),
                a is null ? null : R(a.Timings.DecodeMs, 2), a is null ? null : R(a.Timings.TotalMs, 2));
            w.WriteLine(JsonSerializer.Serialize(line, Line));
        }
    }

    /// <summary>Retention (y) against prefill FLOPs ratio (x), one line per method; 'none' is the single point (1, 1).</summary>
    public static void Plot(EvalResultsDocument d, string path)
    {
        var plt = new ScottPlot.Plot();
        var palette = new ScottPlot.Palettes.Category10();
        int i = 0;
        foreach (var g in d.Results.Where(r => !r.Skipped && r.Retention is not null).GroupBy(r => r.Method))
        {
            var pts = g.OrderBy(r => r.FlopsRatio).ToList();
            var xs = pts.Select(r => r.FlopsRatio!.Value).ToArray();
            var ys = pts.Select(r => r.Retention!.Value).ToArray();
            var sc = plt.Add.Scatter(xs, ys);
            sc.LegendText = g.Key == "none" ? "none (unpruned)" : g.Key;
            sc.Color = palette.GetColor(i++);
            sc.MarkerSize = g.Key == "none" ? 11 : 8;
            sc.LineWidth = 2;
            if (g.Key != "none")
                foreach (var r in pts)
                {
                    var label = plt.Add.Text(r.Budget.ToString("0.###", Inv), r.FlopsRatio!.Value, r.Retention!.Value);
                    label.LabelFontSize = 10;
                    label.LabelFontColor = sc.Color;
                    label.LabelAlignment = ScottPlot.Alignment.MiddleLeft;
                    label.OffsetX = 7;
                }
        }
        plt.Title($"Retention vs prefill FLOPs ({d.RowsUsed} rows, {d.BudgetAccounting} budgets; labels = budget)");
        plt.XLabel("Prefill FLOPs / unpruned");
        plt.YLabel("Accuracy / unpruned accuracy");
        plt.ShowLegend(ScottPlot.Alignment.LowerRight);
        plt.Axes.Margins(0.08, 0.12);
        plt.SavePng(path, 900, 560);
    }

    public static void PrintTable(IAnsiConsole console, EvalRun run)
    {
        if (Console.IsOutputRedirected && console.Profile.Width < 200) console.Profile.Width = 200; // files and pipes: no wrapping
        var d = Summarize(run);
        var t = new Table().Border(TableBorder.Rounded)
            .AddColumn("Method").AddColumn(new TableColumn("Budget").RightAligned()).AddColumn(new TableColumn("Tokens/layer").RightAligned())
            .AddColumn(new TableColumn("FLOPs").RightAligned());
        foreach (var ty in d.Types) t.AddColumn(new TableColumn(Markup.Escape(ty)).RightAligned());
        t.AddColumn(new TableColumn("Acc").RightAligned()).AddColumn(new TableColumn("Retention").RightAligned()).AddColumn(new TableColumn("Prefill ms").RightAligned());
        foreach (var r in d.Results)
        {
            var cells = new List<string> { r.Method, r.Budget.ToString("0.###", Inv) };
            if (r.Skipped)
            {
                cells.AddRange(["[grey]skipped[/]", "–"]);
                cells.AddRange(d.Types.Select(_ => "–"));
                cells.AddRange(["–", "–", "–"]);
            }
            else
            {
                cells.AddRange([r.AvgVisualTokensPerLayer?.ToString("F1", Inv) ?? "", P(r.FlopsRatio) + "%"]);
                cells.AddRange(d.Types.Select(ty => r.AccuracyByType.TryGetValue(ty, out var a) ? P(a) : "–"));
                cells.AddRange([$"[bold]{P(r.Accuracy)}[/]", P(r.Retention) + "%", r.PrefillMsMedian?.ToString("F1", Inv) ?? ""]);
            }
            t.AddRow(cells.ToArray());
        }
        console.Write(t);
        console.MarkupLine(Markup.Escape($"{d.RowsUsed} rows, {d.RowsSkipped} bad rows skipped, {d.Answers} answers, {d.WallSeconds:F1} s wall."));
    }
}
