using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using AutoPrune.Pruning;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>
/// <c>eval</c>: accuracy against compute for several methods and budgets on a VQA jsonl file. Rows are processed
/// image-major (every method and budget for one row before the next row), so the model's vision-tower cache
/// computes each image's tower once and every combination reuses it.
/// </summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var data = new Option<FileInfo>("--data", "-d") { Description = "VQA rows as jsonl: id, image (relative to --images-root), question, answer, optional type.", Required = true };
        var imagesRoot = new Option<DirectoryInfo?>("--images-root") { Description = "Folder the rows' image paths are relative to (they may not leave it). Default: the data file's folder." };
        var allowAbsolute = new Option<bool>("--allow-absolute-image-paths") { Description = "Also accept rows whose image path is absolute (refused by default)." };
        var methods = new Option<string>("--methods") { Description = "Comma-separated methods: " + string.Join(",", PruningMethods.Names) + " or 'all'. 'none' (the unpruned reference for retention) always runs.", DefaultValueFactory = _ => "all" };
        var budgets = new Option<string>("--budgets") { Description = "Comma-separated visual-token budgets (counts, or fractions in (0,1)).", DefaultValueFactory = _ => "96,128,192" };
        var accounting = CommonOptions.Accounting();
        var limit = new Option<int?>("--limit") { Description = "Use only the first N good rows." };
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var outDir = new Option<DirectoryInfo>("--out", "-o") { Description = "Output folder: results.json, results.md, accuracy_vs_flops.png, predictions.jsonl.", Required = true };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per answer (answers are short).", DefaultValueFactory = _ => 3 };
        var parallel = new Option<int>("--parallel") { Description = "Rows in flight at once (the model's MaxConcurrentRequests).", DefaultValueFactory = _ => 1 };
        var keepIndices = new Option<bool>("--keep-indices") { Description = "Also write each answer's kept visual-token indices per layer to predictions.jsonl (large)." };
        var pad = new Option<bool>("--pad-to-square") { Description = "LLaVA-1.5's pad-to-square preprocessing." };
        var options = CommonOptions.OptionsFile();
        var variants = new Option<string[]>("--variant")
        {
            Description = "A labelled variant NAME=FILE: the pruning options in FILE (method and constants) at every budget of --budgets, as one more row group. Repeatable.",
            AllowMultipleArgumentsPerToken = false,
        };

        var cmd = new Command("eval", "Accuracy against compute: every method at every budget on a VQA jsonl file, with a table, a plot and per-answer reports.")
        {
            data, imagesRoot, allowAbsolute, methods, budgets, accounting, limit, model, device, outDir, maxTokens, parallel, keepIndices, pad, options, variants,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            var settings = new EvalSettings
            {
                Data = parse.GetValue(data)!.FullName,
                ImagesRoot = parse.GetValue(imagesRoot)?.FullName,
                AllowAbsoluteImagePaths = parse.GetValue(allowAbsolute),
                Methods = ParseMethods(parse.GetValue(methods)!),
                Budgets = ParseBudgets(parse.GetValue(budgets)!),
                Accounting = parse.GetValue(accounting) == "published" ? BudgetAccounting.Published : BudgetAccounting.Processed,
                Limit = parse.GetValue(limit),
                Model = parse.GetValue(model)!,
                Device = parse.GetValue(device)!,
                OutDir = CommonOptions.OutputFolder(parse.GetValue(outDir)!, "--out").FullName,
                MaxNewTokens = parse.GetValue(maxTokens),
                Parallel = parse.GetValue(parallel),
                KeepIndices = parse.GetValue(keepIndices),
                PadToSquare = parse.GetValue(pad),
                BaseOptions = CommonOptions.LoadOptionsFile(parse.GetValue(options)),
                Variants = ParseVariants(parse.GetValue(variants) ?? []),
                CommandLine = "autoprune " + string.Join(' ', parse.Tokens.Select(t => t.Value.Contains(' ') ? $"\"{t.Value}\"" : t.Value)),
            };
            CommonOptions.InRange(settings.Parallel, 1, MaxParallel, "--parallel");
            CommonOptions.InRange(settings.MaxNewTokens, 1, new ModelOptions().MaxNewTokensLimit, "--max-tokens");
            if (settings.Limit is < 1) throw new ArgumentException("--limit must be at least 1.");
            var run = await EvalRunner.RunAsync(settings, ct);
            EvalOutputs.PrintTable(AnsiConsole.Console, run);
            // Every row failed when answered (an unreadable image, say): nothing was measured.
            if (run.Rows == 0) throw new ArgumentException($"No row of '{Path.GetFullPath(settings.Data)}' could be answered ({run.BadRows.Count} skipped; see the warnings above).");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Most rows in flight at once.</summary>
    public const int MaxParallel = 256;

    public static IReadOnlyList<string> ParseMethods(string s)
    {
        var parts = s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Any(m => m.Equals("all", StringComparison.OrdinalIgnoreCase))) return PruningMethods.Names;
        var list = parts.Select(m => PruningMethods.Name(PruningMethods.Parse(m, "--methods"))).ToList();
        if (list.Count == 0) throw new ArgumentException("--methods is empty.");
        return ["none", .. list.Where(m => m != "none").Distinct()];
    }

    /// <summary>NAME=FILE pairs: each file's pruning options become a labelled row group.</summary>
    public static IReadOnlyList<EvalVariant> ParseVariants(IEnumerable<string> specs)
    {
        var list = new List<EvalVariant>();
        foreach (var spec in specs)
        {
            int eq = spec.IndexOf('=');
            if (eq <= 0 || eq == spec.Length - 1) throw new ArgumentException($"--variant '{spec}' must be NAME=FILE (a label and a pruning options file).");
            string name = spec[..eq].Trim();
            if (PruningMethods.TryParse(name, out _) || list.Any(v => v.Name == name))
                throw new ArgumentException($"--variant name '{name}' is a method name or used twice; choose another label.");
            list.Add(new EvalVariant(name, PruningOptions.Load(spec[(eq + 1)..].Trim())));
        }
        return list;
    }

    public static IReadOnlyList<double> ParseBudgets(string s)
    {
        var list = new List<double>();
        foreach (var part in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out var b) || !(b > 0) || double.IsInfinity(b))
                throw new ArgumentException($"Budget '{part}' in --budgets is not a positive number.");
            list.Add(b);
        }
        if (list.Count == 0) throw new ArgumentException("--budgets is empty.");
        return list.Distinct().ToList();
    }
}

public sealed record EvalSettings
{
    public required string Data { get; init; }
    public string? ImagesRoot { get; init; }
    public bool AllowAbsoluteImagePaths { get; init; }
    public required IReadOnlyList<string> Methods { get; init; }
    public required IReadOnlyList<double> Budgets { get; init; }
    public BudgetAccounting Accounting { get; init; } = BudgetAccounting.Processed;
    public int? Limit { get; init; }
    public required string Model { get; init; }
    public string Device { get; init; } = "auto";
    public required string OutDir { get; init; }
    public int MaxNewTokens { get; init; } = 3;
    public int Parallel { get; init; } = 1;
    public bool KeepIndices { get; init; }
    public bool PadToSquare { get; init; }
    /// <summary>Options every method starts from (constants, calibration); method, budget and accounting are set per combination.</summary>
    public PruningOptions? BaseOptions { get; init; }
    public IReadOnlyList<EvalVariant> Variants { get; init; } = [];
    public string CommandLine { get; init; } = "";
}

/// <summary>A labelled set of pruning options evaluated at every budget.</summary>
public sealed record EvalVariant(string Name, PruningOptions Options);

/// <summary>One method (or labelled variant) at one budget: the options every row runs with, or why it is skipped.</summary>
public sealed record EvalCombo(int Index, string Method, double Budget, string? SkipReason)
{
    public PruningOptions Options { get; init; } = new();
}

/// <summary>One answer of one row for one combination.</summary>
public sealed record EvalPrediction(EvalRow Row, EvalCombo Combo, VisionAnswer? Answer, string? Error, double TowerMs)
{
    public bool Correct => Answer is not null && EvalData.IsCorrect(Answer.Text, Row.Answer);
    /// <summary>Latency of this request on its own: measured total, plus the image's preprocessing and vision tower when this request took them from the cache.</summary>
    public double StandaloneTotalMs => Answer is null ? double.NaN : Answer.Timings.TotalMs + (Answer.Timings.PreprocessMs == 0 ? TowerMs : 0);
}

public sealed record EvalRun(EvalSettings Settings, ModelInfo ModelInfo, ModelShape Shape, IReadOnlyList<EvalCombo> Combos, IReadOnlyList<EvalRow> RowsUsed,
    IReadOnlyList<BadRow> BadRows, List<EvalPrediction> Predictions, double WallSeconds, DateTime StartedUtc)
{
    public int Rows => RowsUsed.Count;
}

public static class EvalRunner
{
    public static async Task<EvalRun> RunAsync(EvalSettings s, CancellationToken ct = default)
    {
        var started = DateTime.UtcNow;
        var wall = Stopwatch.StartNew();
        var (rows, bad) = EvalData.Read(s.Data, s.ImagesRoot, s.Limit, s.AllowAbsoluteImagePaths);
        foreach (var b in bad) CommonOptions.Err.MarkupLine($"[yellow]warning:[/] {Markup.Escape($"{Path.GetFileName(s.Data)} line {b.Line}: {b.Reason}; row skipped")}");
        if (rows.Count == 0) throw new ArgumentException(EvalData.NoUsableRows(s.Data, bad.Count));
        Directory.CreateDirectory(s.OutDir);

        using var vlm = await CommonOptions.LoadAsync(s.Model, new ModelOptions
        {
            Device = s.Device,
            PadToSquare = s.PadToSquare,
            MaxConcurrentRequests = s.Parallel,
            VisionCacheSize = Math.Max(4, 2 * s.Parallel),
        }, quiet: true);

        var combos = BuildCombos(s, vlm.Shape);
        foreach (var c in combos.Where(c => c.SkipReason is not null))
            CommonOptions.Err.MarkupLine($"[yellow]skipped:[/] {Markup.Escape($"{c.Method} at budget {Fmt(c.Budget)}: {c.SkipReason}")}");
        var active = combos.Where(c => c.SkipReason is null).ToList();

        var predictions = new List<EvalPrediction>();
        var rowBad = new List<BadRow>();
        var usedRows = new List<EvalRow>();
        var gate = new object();
        int done = 0, noneCorrect = 0, noneN = 0, prunedCorrect = 0, prunedN = 0;

        async Task<(List<EvalPrediction>? Preds, BadRow? Bad)> RunRow(EvalRow row)
        {
            var preds = new List<EvalPrediction>(active.Count);
            double tower = 0;
            foreach (var c in active)
            {
                ct.ThrowIfCancellationRequested();
                var request = VisionRequest.Create(row.Question, ImageInput.FromFile(row.ImagePath)) with
                {
                    Generation = new GenerationOptions { MaxNewTokens = s.MaxNewTokens },
                    Pruning = c.Options,
                };
                try
                {
                    var a = await vlm.AskAsync(request, ct);
                    if (a.Timings.PreprocessMs > 0) tower = a.Timings.PreprocessMs + a.Timings.VisionMs;
                    preds.Add(new EvalPrediction(row, c, a, null, tower));
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // The first request of a row reads the image: a failure there means the row itself is bad.
                    if (c.Index == active[0].Index) return (null, new BadRow(row.Line, $"could not be answered: {e.Message}"));
                    preds.Add(new EvalPrediction(row, c, null, $"{e.GetType().Name}: {e.Message}", tower));
                }
            }
            return (preds, null);
        }

        void Record(EvalRow row, List<EvalPrediction>? preds, BadRow? badRow)
        {
            lock (gate)
            {
                done++;
                if (badRow is not null) { rowBad.Add(badRow); return; }
                usedRows.Add(row);
                predictions.AddRange(preds!);
                foreach (var p in preds!)
                {
                    if (p.Answer is null) continue;
                    if (p.Combo.Method == "none") { noneN++; if (p.Correct) noneCorrect++; }
                    else { prunedN++; if (p.Correct) prunedCorrect++; }
                }
            }
        }

        string Status() => $"row {done}/{rows.Count} · none {Pct(noneCorrect, noneN)} · pruned (all methods) {Pct(prunedCorrect, prunedN)}";

        async Task Loop(Action tick)
        {
            if (s.Parallel == 1)
                foreach (var row in rows) { var (p, b) = await RunRow(row); Record(row, p, b); tick(); }
            else
                await Parallel.ForEachAsync(rows, new ParallelOptions { MaxDegreeOfParallelism = s.Parallel, CancellationToken = ct },
                    async (row, _) => { var (p, b) = await RunRow(row); Record(row, p, b); tick(); });
        }

        CommonOptions.Err.MarkupLine(Markup.Escape($"eval: {rows.Count} rows × {active.Count} method/budget combinations ({s.Accounting.ToString().ToLowerInvariant()} accounting), {s.Parallel} in flight"));
        if (Console.IsErrorRedirected)
        {
            int step = Math.Max(1, rows.Count / 10), last = 0;
            await Loop(() =>
            {
                lock (gate)
                    if (done - last >= step || done == rows.Count) { last = done; Console.Error.WriteLine($"eval: {Status()} · {wall.Elapsed.TotalSeconds:F0} s"); }
            });
        }
        else
        {
            await CommonOptions.Err.Progress()
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    var task = ctx.AddTask(Markup.Escape(Status()), maxValue: Math.Max(1, rows.Count));
                    await Loop(() => { lock (gate) { task.Value = done; task.Description = Markup.Escape(Status()); } });
                });
        }

        // Deterministic output order: data order, then combination order.
        var order = rows.Select((r, i) => (r.Line, i)).ToDictionary(t => t.Line, t => t.i);
        predictions.Sort((a, b) => a.Row.Line != b.Row.Line ? order[a.Row.Line].CompareTo(order[b.Row.Line]) : a.Combo.Index.CompareTo(b.Combo.Index));
        usedRows.Sort((a, b) => a.Line.CompareTo(b.Line));
        foreach (var b in rowBad) CommonOptions.Err.MarkupLine($"[yellow]warning:[/] {Markup.Escape($"{Path.GetFileName(s.Data)} line {b.Line}: {b.Reason}; row skipped")}");
        var allBad = bad.Concat(rowBad).OrderBy(b => b.Line).ToList();
        wall.Stop();
        var run = new EvalRun(s, vlm.Info, vlm.Shape, combos, usedRows, allBad, predictions, wall.Elapsed.TotalSeconds, started);
        EvalOutputs.WriteAll(run);
        CommonOptions.Err.MarkupLine(Markup.Escape($"eval: {usedRows.Count} rows used, {allBad.Count} skipped, {predictions.Count} answers in {run.WallSeconds:F1} s; wrote {s.OutDir}"));
        return run;
    }

    /// <summary>
    /// 'none' once (the full budget), then every other method at every budget, then every variant at every budget;
    /// infeasible budgets are skipped with the reason.
    /// </summary>
    public static List<EvalCombo> BuildCombos(EvalSettings s, ModelShape shape)
    {
        var start = s.BaseOptions ?? new PruningOptions();
        var combos = new List<EvalCombo> { new(0, "none", shape.VisualTokens, null) { Options = start with { Method = PruningMethod.None, Accounting = s.Accounting } } };
        var groups = s.Methods.Where(m => m != "none").Select(m => (Label: m, Options: start with { Method = PruningMethods.Parse(m, "--methods") }))
            .Concat(s.Variants.Select(v => (Label: v.Name, v.Options)));
        foreach (var (label, template) in groups)
            foreach (var b in s.Budgets)
            {
                var options = template with { Budget = b, Accounting = s.Accounting };
                string? skip = null;
                try
                {
                    double tokens = AutoPrune.Pruning.Budget.Resolve(b, shape.VisualTokens);
                    double min = AutoPrune.Pruning.Budget.MinimumFeasible(options.Method, s.Accounting, shape, options);
                    if (tokens + 1e-9 < min)
                        skip = $"infeasible: {label} cannot average fewer than {min.ToString("0.#", CultureInfo.InvariantCulture)} {s.Accounting.ToString().ToLowerInvariant()} visual tokens per layer on this {shape.Layers}-layer model (smallest feasible budget {Math.Ceiling(min - 1e-9)})";
                }
                catch (ArgumentException e) { skip = e.Message; }
                combos.Add(new EvalCombo(combos.Count, label, b, skip) { Options = options });
            }
        return combos;
    }

    internal static string Pct(int k, int n) => n == 0 ? "-" : (100.0 * k / n).ToString("F1", CultureInfo.InvariantCulture) + "%";
    internal static string Fmt(double b) => b.ToString("0.###", CultureInfo.InvariantCulture);
}
