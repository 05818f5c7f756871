using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using AutoPrune.Diagnostics;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>
/// <c>verify</c>: answers VQA rows on the CPU (the reference, computing with the device's fp16 storage points unless
/// <c>--reference-precision fp32</c>) and on another device, and compares the greedy answers, the kept visual tokens
/// and the full last-position logits. Exit code 0 only when all of them agree.
/// </summary>
public static class VerifyCommand
{
    public static Command Create()
    {
        var data = new Option<FileInfo>("--data", "-d") { Description = "VQA rows as jsonl (id, image, question, answer), as for eval.", Required = true };
        var imagesRoot = new Option<DirectoryInfo?>("--images-root") { Description = "Folder the rows' image paths are relative to (they may not leave it). Default: the data file's folder." };
        var allowAbsolute = new Option<bool>("--allow-absolute-image-paths") { Description = "Also accept rows whose image path is absolute (refused by default)." };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N good rows." };
        var model = CommonOptions.Model();
        var device = new Option<string>("--device") { Description = "The device to check against the CPU: cuda, cuda:N or ilgpu-cpu.", DefaultValueFactory = _ => "cuda" };
        var method = CommonOptions.Method();
        method.DefaultValueFactory = _ => "none";
        var budget = CommonOptions.Budget();
        var tolerance = new Option<double>("--tolerance") { Description = "Largest allowed |logit difference| at the last prompt position.", DefaultValueFactory = _ => 2e-2 };
        var minOverlap = new Option<double>("--min-kept-overlap")
        {
            Description = "Pass when the kept visual tokens overlap by at least this share at every layer of every row (default 1: equal). fp16 can swap near-tied tokens; see the README.",
            DefaultValueFactory = _ => 1.0,
        };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per answer.", DefaultValueFactory = _ => 8 };
        var precision = new Option<string>("--reference-precision")
        {
            Description = "How the CPU reference computes: match-device (fp16 where the GPU code path stores fp16, so pruning decisions are comparable) or fp32.",
            DefaultValueFactory = _ => "match-device",
        };
        precision.AcceptOnlyFromAmong("match-device", "fp32");
        var outFile = new Option<FileInfo?>("--out", "-o") { Description = "Write the comparison as JSON to this file." };
        var options = CommonOptions.OptionsFile();
        var cudaGraphs = CommonOptions.CudaGraphs();
        var cmd = new Command("verify", "Check a device against the CPU: same greedy answers, kept visual tokens and last-position logits within a tolerance on VQA rows.")
        {
            data, imagesRoot, allowAbsolute, limit, model, device, method, budget, tolerance, minOverlap, maxTokens, precision, outFile, options, cudaGraphs,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            var file = parse.GetValue(data)!;
            if (parse.GetValue(limit) is < 1) throw new ArgumentException("--limit must be at least 1.");
            if (!(parse.GetValue(tolerance) is var tol0 && double.IsFinite(tol0) && tol0 >= 0)) throw new ArgumentException("--tolerance must be a finite number of at least 0.");
            CommonOptions.InRange(parse.GetValue(maxTokens), 1, new ModelOptions().MaxNewTokensLimit, "--max-tokens");
            if (!(parse.GetValue(minOverlap) is var mo && mo is >= 0 and <= 1)) throw new ArgumentException("--min-kept-overlap must be between 0 and 1.");
            if (parse.GetValue(outFile) is { } target) CommonOptions.OutputFile(target, "--out");
            var (rows, bad) = EvalData.Read(file.FullName, parse.GetValue(imagesRoot)?.FullName, parse.GetValue(limit), parse.GetValue(allowAbsolute));
            foreach (var b in bad) CommonOptions.Err.MarkupLine($"[yellow]warning:[/] {Markup.Escape($"{file.Name} line {b.Line}: {b.Reason}; row skipped")}");
            if (rows.Count == 0) throw new ArgumentException(EvalData.NoUsableRows(file.FullName, bad.Count));
            CommonOptions.Err.MarkupLine(Markup.Escape(EvalData.Summary("verify", rows.Count, bad)));
            var pruning = CommonOptions.Pruning(parse, options, method, budget, accounting: null);
            var items = rows.Select(r => (r.ImagePath, r.Question)).ToList();
            Task<DeviceComparisonReport> Compare(IProgress<int>? progress) => DeviceComparison.RunAsync(parse.GetValue(model)!, parse.GetValue(device)!,
                items, pruning, parse.GetValue(maxTokens), progress: progress, ct: ct,
                referencePrecision: parse.GetValue(precision) == "fp32" ? CpuPrecision.Fp32 : CpuPrecision.MatchDevice, cudaGraphs: parse.GetValue(cudaGraphs));
            var report = Console.IsErrorRedirected
                ? await Compare(null)
                : await CommonOptions.Err.Progress().AutoClear(true).StartAsync(async ctx =>
                {
                    var task = ctx.AddTask($"Comparing {parse.GetValue(device)} with the CPU", maxValue: rows.Count);
                    return await Compare(new Progress<int>(n => task.Value = n));
                });
            if (Console.IsOutputRedirected && AnsiConsole.Console.Profile.Width < 200) AnsiConsole.Console.Profile.Width = 200;
            double tol = parse.GetValue(tolerance);
            string F(double x) => x.ToString("E2", CultureInfo.InvariantCulture);
            foreach (var d in report.Details.Where(d => !d.SameAnswer || !d.SameKeptTokens || d.MaxAbsLogitDifference > tol))
                AnsiConsole.MarkupLine(Markup.Escape($"differs: {Path.GetFileName(d.Image)} \"{d.Question}\": cpu '{d.ReferenceAnswer}', device '{d.DeviceAnswer}', " +
                    $"max |Δ logit| {F(d.MaxAbsLogitDifference)}{(d.SameKeptTokens ? "" : $", kept visual tokens differ from layer {d.FirstDifferentLayer} (at least {d.MinKeptOverlap:P1} shared)")}"));
            bool ok = report.Agrees(tol, parse.GetValue(minOverlap));
            AnsiConsole.MarkupLine(Markup.Escape(
                $"{report.Device}{(report.CudaGraphs ? " (CUDA graphs)" : "")} vs {report.ReferenceDevice} ({report.ReferencePrecision}), {report.Method}: {report.SameAnswers}/{report.Rows} answers equal, {report.SameTopTokens}/{report.Rows} first tokens equal, " +
                $"{report.SameKeptTokens}/{report.Rows} kept-token sets equal (at least {report.MinKeptOverlap:P1} shared at every layer); " +
                $"last-position logits max |Δ| {F(report.MaxAbsLogitDifference)} (mean of row maxima {F(report.MeanMaxAbsLogitDifference)}), tolerance {F(tol)}: {(ok ? "PASS" : "FAIL")}"));
            if (parse.GetValue(outFile) is { } f)
            {
                if (f.Directory is { } dir) Directory.CreateDirectory(dir.FullName);
                File.WriteAllText(f.FullName, JsonSerializer.Serialize(report, EvalOutputs.Json) + "\n");
            }
            return ok ? 0 : 2;
        }));
        return cmd;
    }
}
