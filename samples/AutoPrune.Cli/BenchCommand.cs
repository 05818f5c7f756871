using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using AutoPrune.Pruning;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>
/// <c>bench</c>: prefill and decode latency, tokens per second and memory for each method at each budget on one image,
/// medians over repeats after warm-up, with the speed-up against unpruned measured in the same run.
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var image = new Option<FileInfo?>("--image", "-i") { Description = "Image file (" + CommonOptions.ImageFormats + "; required unless --speed or --random-weights)." };
        var question = new Option<string>("--question", "-q") { Description = "The question.", DefaultValueFactory = _ => "How many objects are there?" };
        var methods = new Option<string>("--methods") { Description = "Comma-separated methods or 'all'; 'none' (the reference) always runs first.", DefaultValueFactory = _ => "all" };
        var budgets = new Option<string>("--budgets") { Description = "Comma-separated visual-token budgets.", DefaultValueFactory = _ => "96,128,192" };
        var accounting = CommonOptions.Accounting();
        var repeats = new Option<int>("--repeats", "-r") { Description = "Measured runs per method and budget (median reported).", DefaultValueFactory = _ => 7 };
        var warmup = new Option<int>("--warmup", "-w") { Description = "Unmeasured runs before each method and budget.", DefaultValueFactory = _ => 2 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Largest number of tokens generated per run.", DefaultValueFactory = _ => 8 };
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var outFile = new Option<FileInfo?>("--out", "-o") { Description = "Write the results as JSON to this file." };
        var speed = new Option<bool>("--speed") { Description = "Time the stages with synthetic inputs (vision tower, projector, prefill per method and budget, decode ms/token, device memory) instead of answering the image." };
        var random = new Option<string?>("--random-weights") { Description = "With --speed (implied): generate random fp16 weights for this architecture instead of loading --model: llava-1.5-7b, llava-1.5-13b, llava-1.6-vicuna-7b, llava-1.6-mistral-7b (LLaVA-1.6 on a 672x672 image: 2,928 visual tokens), tiny-test, tiny-next-test or tiny-32-layers (the fixture's sizes with 32 decoder layers: the GPU counters of the 7B layer count)." };
        var decodeTokens = new Option<int>("--decode-tokens") { Description = "With --speed: tokens generated to time decoding.", DefaultValueFactory = _ => 32 };
        var cudaGraphs = CommonOptions.CudaGraphs();

        var cmd = new Command("bench", "Latency, tokens/s and memory per method and budget on one image, with speed-ups against unpruned.")
        {
            image, question, methods, budgets, accounting, repeats, warmup, maxTokens, model, device, outFile, speed, random, decodeTokens, cudaGraphs,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            const int maxRuns = AutoPrune.Diagnostics.SpeedBenchmark.MaxRepeats;
            int reps = CommonOptions.InRange(parse.GetValue(repeats), 1, maxRuns, "--repeats");
            int warm = CommonOptions.InRange(parse.GetValue(warmup), 0, maxRuns, "--warmup");
            int maxNew = CommonOptions.InRange(parse.GetValue(maxTokens), 1, new ModelOptions().MaxNewTokensLimit, "--max-tokens");
            CommonOptions.InRange(parse.GetValue(decodeTokens), 1, 1 << 20, "--decode-tokens");
            if (parse.GetValue(outFile) is { } target) CommonOptions.OutputFile(target, "--out");
            if (parse.GetValue(speed) || parse.GetValue(random) is not null)
            {
                var methodList = !CommonOptions.Given(parse, methods)
                    ? [PruningMethod.FastV, PruningMethod.AutoPrune]
                    : EvalCommand.ParseMethods(parse.GetValue(methods)!).Select(m => PruningMethods.Parse(m)).Where(m => m != PruningMethod.None).ToList();
                var budgetList = !CommonOptions.Given(parse, budgets) ? [192, 128, 64] : EvalCommand.ParseBudgets(parse.GetValue(budgets)!);
                var options = new AutoPrune.Diagnostics.SpeedBenchmarkOptions
                {
                    ModelDirectory = parse.GetValue(random) is null ? parse.GetValue(model) : null,
                    Architecture = parse.GetValue(random) ?? "",
                    Device = parse.GetValue(device)!,
                    Methods = methodList,
                    Budgets = budgetList,
                    Repeats = !CommonOptions.Given(parse, repeats) ? 5 : reps,
                    Warmup = !CommonOptions.Given(parse, warmup) ? 1 : warm,
                    DecodeTokens = parse.GetValue(decodeTokens),
                    CudaGraphs = parse.GetValue(cudaGraphs),
                };
                var progress = new Progress<string>(m => CommonOptions.Err.MarkupLine(Markup.Escape($"bench: {m}")));
                var report = await Task.Run(() => AutoPrune.Diagnostics.SpeedBenchmark.Run(options, progress, ct), ct);
                SpeedPrinter.Print(AnsiConsole.Console, report);
                WriteJson(parse.GetValue(outFile), report);
                return 0;
            }
            var img = parse.GetValue(image) ?? throw new ArgumentException("--image is required (or use --speed / --random-weights for synthetic timings).");
            if (!img.Exists) throw new ArgumentException($"Image file '{img.FullName}' does not exist.");
            var acc = parse.GetValue(accounting) == "published" ? BudgetAccounting.Published : BudgetAccounting.Processed;
            using var vlm = await CommonOptions.LoadAsync(parse.GetValue(model)!, new ModelOptions { Device = parse.GetValue(device)!, MaxConcurrentRequests = 1, CudaGraphs = parse.GetValue(cudaGraphs) }, quiet: true);
            var settings = new EvalSettings
            {
                Data = "", Model = "", OutDir = "", Accounting = acc,
                Methods = EvalCommand.ParseMethods(parse.GetValue(methods)!), Budgets = EvalCommand.ParseBudgets(parse.GetValue(budgets)!),
            };
            var combos = EvalRunner.BuildCombos(settings, vlm.Shape);
            var doc = await BenchRunner.RunAsync(vlm, img.FullName, parse.GetValue(question)!, combos, acc, reps, warm, maxNew, ct);
            BenchRunner.Print(AnsiConsole.Console, doc);
            WriteJson(parse.GetValue(outFile), doc);
            return 0;
        }));
        return cmd;
    }

    private static void WriteJson<T>(FileInfo? f, T doc)
    {
        if (f is null) return;
        if (f.Directory is { } dir) Directory.CreateDirectory(dir.FullName);
        File.WriteAllText(f.FullName, JsonSerializer.Serialize(doc, EvalOutputs.Json) + "\n");
        CommonOptions.Err.MarkupLine(Markup.Escape($"bench: wrote {f.FullName}"));
    }
}

/// <summary>Prints a <see cref="AutoPrune.Diagnostics.SpeedReport"/>.</summary>
public static class SpeedPrinter
{
    public static void Print(IAnsiConsole console, AutoPrune.Diagnostics.SpeedReport r)
    {
        static string F(double? x, string fmt = "F2") => x is double v ? v.ToString(fmt, CultureInfo.InvariantCulture) : "–";
        if (Console.IsOutputRedirected && console.Profile.Width < 160) console.Profile.Width = 160;
        console.MarkupLine(Markup.Escape($"{r.Model} ({r.Weights}) on {r.Device}{(r.CudaGraphs ? " with CUDA graphs" : "")}: {r.DecoderLayers} decoder layers, {r.VisualTokens} visual tokens{(r.ImageViews > 1 ? $" from {r.ImageViews} views" : "")}; loaded in {F(r.LoadSeconds, "F1")} s"));
        var t = new Table().Border(TableBorder.Rounded).AddColumn("Stage").AddColumn("Method");
        foreach (var h in new[] { "Budget", "Visual tokens/layer", "Prompt tokens", "ms (median)", "ms (min)", "ms/layer", "FLOPs", "Speed-up" })
            t.AddColumn(new TableColumn(h).RightAligned());
        t.AddRow("vision tower", "", "", "", "", F(r.VisionTowerMs), "", "", "", "");
        t.AddRow("projector", "", "", "", "", F(r.ProjectorMs), "", "", "", "");
        foreach (var p in r.Prefill.Where(p => p.Skipped is null))
            t.AddRow("prefill", p.Method, F(p.Budget, "0.###"), F(p.AvgVisualTokensPerLayer, "F1"), p.PromptTokens.ToString(CultureInfo.InvariantCulture),
                F(p.PrefillMs), F(p.PrefillMsMin), F(p.MsPerLayer, "F3"), F(p.FlopsRatio * 100, "F1") + "%", F(p.SpeedupVsUnpruned) + "×");
        t.AddRow("decode", "none", "", "", "", F(r.DecodeMsPerToken), "", "", "", $"{F(1000 / r.DecodeMsPerToken, "F0")} tok/s");
        console.Write(t);
        string mem = r.PeakDeviceMemoryMb is double pk ? $"peak device memory {F(pk, "F0")} MB (weights {F(r.WeightsDeviceMemoryMb ?? 0, "F0")} MB; our buffers, without the CUDA context and cuBLAS workspace); " : "";
        if (r.DeviceUsedMb is double du) mem += $"GPU memory in use at most {F(du, "F0")} MB (driver's count, whole device); ";
        foreach (var p in r.Prefill.Where(p => p.Skipped is not null))
            console.MarkupLine(Markup.Escape($"skipped {p.Method} at {p.Budget}: {p.Skipped}"));
        if (r.VisionCounters is { } vc) console.MarkupLine(Markup.Escape($"device counters, vision tower: {vc}"));
        if (r.ProjectorCounters is { } pc) console.MarkupLine(Markup.Escape($"device counters, projector: {pc}"));
        foreach (var p in r.Prefill.Where(p => p.Counters is not null))
            console.MarkupLine(Markup.Escape($"device counters, prefill {p.Method} at {F(p.Budget, "0.###")}: {p.Counters}"));
        if (r.DecodeCountersPerToken is { } dc) console.MarkupLine(Markup.Escape($"device counters, one decode token: {dc}"));
        if (r.LongAttention is { } la) console.MarkupLine(Markup.Escape($"long attention: {la}"));
        console.MarkupLine(Markup.Escape($"Medians over {r.Repeats} runs after {r.Warmup} warm-up; decode over {r.DecodeTokens} tokens; {mem}peak working set {F(r.PeakWorkingSetMb, "F0")} MB."));
    }
}

public sealed record BenchEntry(
    string Method, double Budget, bool Skipped, string? SkipReason, int Repeats,
    double? AvgVisualTokensPerLayer, double? FlopsRatio, int? PromptTokens, int? DecodeSteps,
    double? PrefillMsMedian, double? PrefillMsMin, double? DecodeMsMedian, double? DecodeMsPerToken, double? DecodeTokensPerSecond, double? PrefillTokensPerSecond,
    double? TotalMsMedian, double? PrefillSpeedup, double? DecodeSpeedup, double? PrefillPlusDecodeSpeedup,
    double? AllocatedMbPerRequest, double? PeakWorkingSetMb);

public sealed record BenchDocument(
    string Image, string Question, string Model, string Device, string BudgetAccounting, int Repeats, int Warmup, int MaxNewTokens,
    double VisionMsUncached, string Machine, double LoadAverage1m, double PeakWorkingSetMb, IReadOnlyList<BenchEntry> Results);

public static class BenchRunner
{
    private static double Median(IEnumerable<double> xs)
    {
        var a = xs.OrderBy(x => x).ToArray();
        return a.Length == 0 ? double.NaN : a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    /// <summary>Decode steps the engine ran: one per generated token after the first, plus one that produced EOS.</summary>
    private static int DecodeSteps(VisionAnswer a, int maxNew) => a.FinishReason switch
    {
        AnswerFinishReason.Stop => a.TokenIds.Count,
        AnswerFinishReason.StopSequence => Math.Max(0, a.TokenIds.Count - 1),
        _ => Math.Max(0, maxNew - 1),
    };

    public static async Task<BenchDocument> RunAsync(VisionLanguageModel vlm, string image, string question, IReadOnlyList<EvalCombo> combos,
        BudgetAccounting accounting, int repeats, int warmup, int maxNew, CancellationToken ct)
    {
        VisionRequest Req(EvalCombo c) => VisionRequest.Create(question, ImageInput.FromFile(image)) with
        {
            Generation = new GenerationOptions { MaxNewTokens = maxNew },
            Pruning = new PruningOptions { Method = PruningMethods.Parse(c.Method), Budget = c.Budget, Accounting = accounting },
        };
        // The first request computes the vision tower; the cache serves every later one, so the table is about the LLM.
        var first = await vlm.AskAsync(Req(combos[0]), ct);
        double visionMs = first.Timings.PreprocessMs + first.Timings.VisionMs;
        var entries = new List<BenchEntry>();
        BenchEntry? reference = null;
        var proc = Process.GetCurrentProcess();
        foreach (var c in combos)
        {
            if (c.SkipReason is not null)
            {
                entries.Add(new BenchEntry(c.Method, c.Budget, true, c.SkipReason, 0, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null));
                continue;
            }
            for (int i = 0; i < warmup; i++) await vlm.AskAsync(Req(c), ct);
            var answers = new List<VisionAnswer>(); // grows with the runs: never sized from a number on the command line
            long alloc0 = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < repeats; i++) answers.Add(await vlm.AskAsync(Req(c), ct));
            long alloc = GC.GetTotalAllocatedBytes(precise: true) - alloc0;
            proc.Refresh();
            var a0 = answers[0];
            double prefill = Median(answers.Select(a => a.Timings.PrefillMs));
            double decode = Median(answers.Select(a => a.Timings.DecodeMs));
            int steps = DecodeSteps(a0, maxNew);
            double? perToken = steps > 0 ? Median(answers.Select(a => a.Timings.DecodeMs / Math.Max(1, DecodeSteps(a, maxNew)))) : null;
            var e = new BenchEntry(c.Method, c.Budget, false, null, repeats,
                Math.Round(a0.Report.AvgVisualTokensProcessed, 2), Math.Round(a0.Report.FlopsRatio, 4), a0.PromptTokens, steps,
                Math.Round(prefill, 2), Math.Round(answers.Min(a => a.Timings.PrefillMs), 2), Math.Round(decode, 2),
                perToken is double p ? Math.Round(p, 3) : null, perToken is double q && q > 0 ? Math.Round(1000 / q, 1) : null,
                Math.Round(a0.PromptTokens / (prefill / 1000), 0),
                Math.Round(Median(answers.Select(a => a.Timings.TotalMs)), 2), null, null, null,
                Math.Round(alloc / (double)repeats / (1 << 20), 2), Math.Round(proc.PeakWorkingSet64 / (double)(1 << 20), 1));
            if (c.Method == "none") reference = e;
            if (reference is not null)
                e = e with
                {
                    PrefillSpeedup = Math.Round(reference.PrefillMsMedian!.Value / prefill, 2),
                    DecodeSpeedup = reference.DecodeMsPerToken is double rp && e.DecodeMsPerToken is double ep && ep > 0 ? Math.Round(rp / ep, 2) : null,
                    PrefillPlusDecodeSpeedup = Math.Round((reference.PrefillMsMedian!.Value + reference.DecodeMsMedian!.Value) / (prefill + decode), 2),
                };
            entries.Add(e);
        }
        proc.Refresh();
        double load = double.NaN;
        try { load = double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture); } catch { }
        return new BenchDocument(image, question, vlm.Info.Directory, vlm.Info.Device, accounting.ToString().ToLowerInvariant(), repeats, warmup, maxNew,
            Math.Round(visionMs, 2), $"{Environment.ProcessorCount} logical cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}",
            load, Math.Round(proc.PeakWorkingSet64 / (double)(1 << 20), 1), entries);
    }

    public static void Print(IAnsiConsole console, BenchDocument d)
    {
        static string F(double? x, string fmt = "F1") => x is double v ? v.ToString(fmt, CultureInfo.InvariantCulture) : "–";
        if (Console.IsOutputRedirected && console.Profile.Width < 200) console.Profile.Width = 200; // files and pipes: no wrapping
        var t = new Table().Border(TableBorder.Rounded).AddColumn("Method");
        foreach (var h in new[] { "Budget", "Tokens/layer", "FLOPs", "Prefill ms", "Prefill tok/s", "Decode ms/tok", "Decode tok/s", "Prefill ×", "Prefill+decode ×", "Alloc MB/req", "Peak WS MB" })
            t.AddColumn(new TableColumn(h).RightAligned());
        foreach (var e in d.Results)
        {
            if (e.Skipped)
            {
                t.AddRow([e.Method, F(e.Budget, "0.###"), "[grey]skipped[/]", .. Enumerable.Repeat("–", 9)]);
                continue;
            }
            t.AddRow(e.Method, F(e.Budget, "0.###"), F(e.AvgVisualTokensPerLayer), F(e.FlopsRatio * 100) + "%", F(e.PrefillMsMedian), F(e.PrefillTokensPerSecond, "F0"),
                F(e.DecodeMsPerToken, "F2"), F(e.DecodeTokensPerSecond, "F0"), F(e.PrefillSpeedup, "F2"), F(e.PrefillPlusDecodeSpeedup, "F2"), F(e.AllocatedMbPerRequest), F(e.PeakWorkingSetMb));
        }
        console.Write(t);
        console.MarkupLine(Markup.Escape($"Medians over {d.Repeats} runs after {d.Warmup} warm-up runs each; vision tower (uncached, once) {d.VisionMsUncached:F1} ms; " +
            $"peak working set {d.PeakWorkingSetMb:F0} MB (process-wide, so far); load average {d.LoadAverage1m:F2} on {d.Machine}."));
        foreach (var e in d.Results.Where(e => e.Skipped)) console.MarkupLine(Markup.Escape($"skipped {e.Method} at {e.Budget}: {e.SkipReason}"));
    }
}
