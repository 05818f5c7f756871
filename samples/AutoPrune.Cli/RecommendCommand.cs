using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using AutoPrune.Pruning;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>One configuration the search measured.</summary>
public sealed record RecommendPoint(string Method, double Budget, int N, double Accuracy, double Retention, double FlopsRatio,
    double AvgVisualTokensPerLayer, bool MeetsFloor, string Stage);

/// <summary>What <c>recommend</c> found: the cheapest configuration that keeps the floor, and everything it measured.</summary>
public sealed record Recommendation(string Data, int Rows, double UnprunedAccuracy, double MinRetention, string BudgetAccounting,
    RecommendPoint? Best, IReadOnlyList<RecommendPoint> Measured, double WallSeconds);

/// <summary>
/// <c>recommend</c>: answers "which method and budget should I use?" on the user's own data. Measures the unpruned
/// accuracy, then for each method scans budgets from small to large until the retention floor is met (coarse: a few
/// fractions of the visual tokens), narrows the step between the last budget that failed and the first that passed
/// (fine: bisection), and picks the configuration with the fewest prefill FLOPs that met the floor. The vision tower runs
/// once per image (every image's features stay cached for the whole search).
/// </summary>
public static class RecommendCommand
{
    /// <summary>Coarse budgets, as fractions of the model's visual tokens.</summary>
    internal static readonly double[] CoarseFractions = [0.05, 0.1, 0.15, 0.2, 0.25, 0.33, 0.5, 0.75];

    public static Command Create()
    {
        var data = new Option<FileInfo>("--data", "-d") { Description = "Your questions with answers as jsonl (id, image, question, answer), as for eval.", Required = true };
        var imagesRoot = new Option<DirectoryInfo?>("--images-root") { Description = "Folder the rows' image paths are relative to. Default: the data file's folder." };
        var floor = new Option<double>("--min-retention") { Description = "Smallest acceptable accuracy relative to the unpruned model (0.95 = keep 95%).", DefaultValueFactory = _ => 0.95 };
        var methods = new Option<string>("--methods") { Description = "Methods to consider (comma list or 'all').", DefaultValueFactory = _ => "all" };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N good rows." };
        var accounting = CommonOptions.Accounting();
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var options = CommonOptions.OptionsFile();
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per answer (answers are short).", DefaultValueFactory = _ => 3 };
        var refine = new Option<int>("--refine-steps") { Description = "Bisection steps between the last failing and the first passing coarse budget.", DefaultValueFactory = _ => 3 };
        var outFile = new Option<FileInfo>("--out", "-o") { Description = "Options file to write for the recommended configuration (read by --options, PruningOptions.Load and an IConfiguration section).", DefaultValueFactory = _ => new FileInfo("autoprune-options.json") };
        var report = new Option<FileInfo?>("--report") { Description = "Also write every measured point as JSON here." };
        var cmd = new Command("recommend", "Find the cheapest method and budget (in prefill FLOPs) that keeps a retention floor on your data, and write it as an options file.")
        {
            data, imagesRoot, floor, methods, limit, accounting, model, device, options, maxTokens, refine, outFile, report,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            double minRetention = parse.GetValue(floor);
            if (!(minRetention > 0 && minRetention <= 1)) throw new ArgumentException($"--min-retention must be in (0, 1] (got {minRetention.ToString(CultureInfo.InvariantCulture)}).");
            if (parse.GetValue(limit) is < 1) throw new ArgumentException("--limit must be at least 1.");
            if (parse.GetValue(maxTokens) < 1) throw new ArgumentException("--max-tokens must be at least 1.");
            int refineSteps = parse.GetValue(refine);
            if (refineSteps is < 0 or > 10) throw new ArgumentException("--refine-steps must be between 0 and 10.");
            var file = parse.GetValue(data)!;
            var (rows, bad) = EvalData.Read(file.FullName, parse.GetValue(imagesRoot)?.FullName, parse.GetValue(limit));
            foreach (var b in bad) CommonOptions.Err.MarkupLine($"[yellow]warning:[/] {Markup.Escape($"{file.Name} line {b.Line}: {b.Reason}; row skipped")}");
            if (rows.Count == 0) throw new ArgumentException(EvalData.NoUsableRows(file.FullName, bad.Count));
            CommonOptions.Err.MarkupLine(Markup.Escape(EvalData.Summary("recommend", rows.Count, bad)));
            var methodList = EvalCommand.ParseMethods(parse.GetValue(methods)!).Where(m => m != "none").Select(m => PruningMethods.Parse(m, "--methods")).ToList();
            if (methodList.Count == 0) throw new ArgumentException("--methods names no pruning method.");
            var acc = parse.GetValue(accounting) == "published" ? BudgetAccounting.Published : BudgetAccounting.Processed;
            var baseOptions = CommonOptions.LoadOptionsFile(parse.GetValue(options)) ?? new PruningOptions();
            var outPath = parse.GetValue(outFile)!.FullName;
            if (Directory.Exists(outPath)) throw new ArgumentException($"Cannot write '{outPath}': it is a directory.");

            using var vlm = await CommonOptions.LoadAsync(parse.GetValue(model)!, new ModelOptions
            {
                Device = parse.GetValue(device)!,
                VisionCacheSize = Math.Min(rows.Count, 1024),
            }, quiet: true);
            var search = new Search(vlm, rows, parse.GetValue(maxTokens), acc, baseOptions, minRetention);
            var result = await search.RunAsync(methodList, refineSteps, file.FullName, ct);

            Print(result);
            if (result.Best is { } best)
            {
                var chosen = baseOptions with { Method = PruningMethods.Parse(best.Method), Budget = best.Budget, Accounting = acc };
                CommonOptions.WriteFile(outPath, chosen.ToJson() + "\n");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"recommended: {best.Method} at budget {best.Budget:0.##} ({best.AvgVisualTokensPerLayer:0.#} visual tokens per layer, {best.FlopsRatio:P1} of the unpruned prefill FLOPs), " +
                    $"retention {best.Retention:P1} on {best.N} rows (floor {minRetention:P0}); wrote {outPath}"));
            }
            if (parse.GetValue(report) is { } rep)
                CommonOptions.WriteFile(rep.FullName, JsonSerializer.Serialize(result, EvalOutputs.Json) + "\n");
            if (result.Best is null)
            {
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"error: no method kept {minRetention:P0} of the unpruned accuracy at any budget tried; run unpruned (method none) or lower --min-retention."));
                return 2;
            }
            return 0;
        }));
        return cmd;
    }

    private static void Print(Recommendation r)
    {
        var inv = CultureInfo.InvariantCulture;
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Method").AddColumn(new TableColumn("Budget").RightAligned()).AddColumn(new TableColumn("Tokens/layer").RightAligned())
            .AddColumn(new TableColumn("FLOPs").RightAligned()).AddColumn(new TableColumn("Acc").RightAligned()).AddColumn(new TableColumn("Retention").RightAligned())
            .AddColumn("Stage").AddColumn("Meets floor");
        foreach (var p in r.Measured.OrderBy(p => p.Method, StringComparer.Ordinal).ThenBy(p => p.Budget))
            table.AddRow(p.Method, p.Budget.ToString("0.##", inv), p.AvgVisualTokensPerLayer.ToString("F1", inv), p.FlopsRatio.ToString("P1", inv),
                (100 * p.Accuracy).ToString("F1", inv), p.Retention.ToString("P1", inv), p.Stage, p.MeetsFloor ? "yes" : "no");
        if (Console.IsOutputRedirected && AnsiConsole.Console.Profile.Width < 160) AnsiConsole.Console.Profile.Width = 160;
        AnsiConsole.Write(table);
        Console.WriteLine(string.Create(inv, $"unpruned accuracy {100 * r.UnprunedAccuracy:F1}% on {r.Rows} rows; {r.Measured.Count} configurations measured in {r.WallSeconds:F0} s"));
    }

    /// <summary>The measurements: every configuration is answered on every row (the images' vision features stay cached).</summary>
    private sealed class Search(VisionLanguageModel vlm, IReadOnlyList<EvalRow> rows, int maxNewTokens, BudgetAccounting accounting, PruningOptions baseOptions, double floor)
    {
        private readonly List<RecommendPoint> _measured = [];
        private double _unpruned;

        public async Task<Recommendation> RunAsync(IReadOnlyList<PruningMethod> methods, int refineSteps, string data, CancellationToken ct)
        {
            var wall = System.Diagnostics.Stopwatch.StartNew();
            var (noneAcc, _, _) = await MeasureAsync(baseOptions with { Method = PruningMethod.None }, ct);
            _unpruned = noneAcc;
            if (noneAcc == 0) throw new ArgumentException("The unpruned model answers none of the rows correctly: retention is undefined on this data.");
            var shape = vlm.Shape;
            foreach (var method in methods)
            {
                var template = baseOptions with { Method = method, Accounting = accounting };
                double min = Math.Ceiling(Budget.MinimumFeasible(method, accounting, shape, template) - 1e-9);
                var coarse = CoarseFractions.Select(f => Math.Max(1, Math.Round(f * shape.VisualTokens))).Where(b => b >= min && b < shape.VisualTokens).Distinct().ToList();
                if (coarse.Count == 0 || coarse[0] > min) coarse.Insert(0, Math.Max(1, min));
                double? lastFail = null, firstPass = null;
                foreach (var b in coarse)
                {
                    var p = await PointAsync(template, b, "coarse", ct);
                    if (p.MeetsFloor) { firstPass = b; break; }
                    lastFail = b;
                }
                if (firstPass is not double hi) continue;
                double lo = lastFail ?? hi;
                for (int step = 0; step < refineSteps && hi - lo > 1; step++)
                {
                    double mid = Math.Floor((lo + hi) / 2);
                    if (mid <= lo || mid >= hi) break;
                    var p = await PointAsync(template, mid, "fine", ct);
                    if (p.MeetsFloor) hi = mid; else lo = mid;
                }
            }
            var best = _measured.Where(p => p.MeetsFloor).OrderBy(p => p.FlopsRatio).ThenByDescending(p => p.Retention).FirstOrDefault();
            return new Recommendation(data, rows.Count, _unpruned, floor, accounting.ToString().ToLowerInvariant(), best, _measured, wall.Elapsed.TotalSeconds);
        }

        private async Task<RecommendPoint> PointAsync(PruningOptions template, double budget, string stage, CancellationToken ct)
        {
            var (acc, flops, tokens) = await MeasureAsync(template with { Budget = budget }, ct);
            var p = new RecommendPoint(PruningMethods.Name(template.Method), budget, rows.Count, acc, acc / _unpruned, flops, tokens, acc / _unpruned >= floor - 1e-12, stage);
            _measured.Add(p);
            CommonOptions.Err.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"recommend: {p.Method} at {budget:0.##}: retention {p.Retention:P1}, FLOPs {p.FlopsRatio:P1} ({stage})")));
            return p;
        }

        private async Task<(double Accuracy, double Flops, double Tokens)> MeasureAsync(PruningOptions pruning, CancellationToken ct)
        {
            int correct = 0;
            double flops = 0, tokens = 0;
            foreach (var row in rows)
            {
                var request = VisionRequest.Create(row.Question, ImageInput.FromFile(row.ImagePath)) with
                {
                    Generation = new GenerationOptions { MaxNewTokens = maxNewTokens },
                    Pruning = pruning,
                };
                var a = await vlm.AskAsync(request, ct);
                if (EvalData.IsCorrect(a.Text, row.Answer)) correct++;
                flops += a.Report.FlopsRatio;
                tokens += a.Report.AvgVisualTokensProcessed;
            }
            return ((double)correct / rows.Count, flops / rows.Count, tokens / rows.Count);
        }
    }
}
