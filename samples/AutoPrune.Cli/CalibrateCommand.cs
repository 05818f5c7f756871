using System.CommandLine;
using System.Globalization;
using AutoPrune.Pruning;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>
/// <c>calibrate</c>: measures AutoPrune's complexity signal (layer 1's text–image mutual information) on sample questions
/// and writes the calibration file that maps this model's range of it onto the paper's slope range. Written into the
/// model folder (the default), it is picked up by every later load of that model.
/// </summary>
public static class CalibrateCommand
{
    public static Command Create()
    {
        var data = new Option<FileInfo>("--data", "-d") { Description = "Sample questions as jsonl (id, image, question; answer is not needed), as for eval.", Required = true };
        var imagesRoot = new Option<DirectoryInfo?>("--images-root") { Description = "Folder the rows' image paths are relative to. Default: the data file's folder." };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N good rows." };
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var budgets = new Option<string>("--budgets") { Description = "Budgets to measure at (the signal is pooled over them).", DefaultValueFactory = _ => "96,128,192" };
        var signal = new Option<string>("--signal") { Description = "mi1_normalized (MI1 over its bound: scale-free, the default) or mi1 (MI1 summed over heads, as the paper).", DefaultValueFactory = _ => AutoPruneCalibration.SignalNormalized };
        signal.AcceptOnlyFromAmong(AutoPruneCalibration.SignalNormalized, AutoPruneCalibration.SignalRaw);
        var options = CommonOptions.OptionsFile();
        var outFile = new Option<FileInfo?>("--out", "-o") { Description = $"Where to write the calibration. Default: {AutoPruneCalibration.FileName} in the model folder." };
        var cmd = new Command("calibrate", "Measure AutoPrune's complexity signal on sample questions and write this model's calibration file.")
        {
            data, imagesRoot, limit, model, device, budgets, signal, options, outFile,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            if (parse.GetValue(limit) is < 2) throw new ArgumentException("--limit must be at least 2.");
            var file = parse.GetValue(data)!;
            var (rows, bad) = EvalData.Read(file.FullName, parse.GetValue(imagesRoot)?.FullName, parse.GetValue(limit), requireAnswer: false);
            foreach (var b in bad) CommonOptions.Err.MarkupLine($"[yellow]warning:[/] {Markup.Escape($"{file.Name} line {b.Line}: {b.Reason}; row skipped")}");
            if (rows.Count < 2) throw new ArgumentException($"'{file.FullName}' has {rows.Count} usable row(s) ({bad.Count} skipped); calibration needs at least 2 (100 or more give a stable range).");
            CommonOptions.Err.MarkupLine(Markup.Escape(EvalData.Summary("calibrate", rows.Count, bad)));
            var budgetList = EvalCommand.ParseBudgets(parse.GetValue(budgets)!);
            var baseOptions = CommonOptions.LoadOptionsFile(parse.GetValue(options));
            string modelDir = parse.GetValue(model)!;
            var target = parse.GetValue(outFile)?.FullName ?? Path.Combine(Path.GetFullPath(modelDir), AutoPruneCalibration.FileName);
            using var vlm = await CommonOptions.LoadAsync(modelDir, new ModelOptions { Device = parse.GetValue(device)!, VisionCacheSize = 4 }, quiet: true);
            var samples = rows.Select(r => new CalibrationSample(ImageInput.FromFile(r.ImagePath), r.Question)).ToList();
            int total = samples.Count * budgetList.Count;
            Task<AutoPruneCalibration> Run(IProgress<int>? progress) => AutoPruneCalibrator.CalibrateAsync(vlm, samples, budgetList, baseOptions, parse.GetValue(signal)!,
                file.Name, progress, ct);
            var calibration = Console.IsErrorRedirected
                ? await Run(null)
                : await CommonOptions.Err.Progress().AutoClear(true).StartAsync(async ctx =>
                {
                    var task = ctx.AddTask("Measuring MI1", maxValue: total);
                    return await Run(new Progress<int>(n => task.Value = n));
                });
            CommonOptions.WriteFile(target, calibration.ToJson() + "\n");
            var inv = CultureInfo.InvariantCulture;
            var q = calibration.Quantiles;
            Console.WriteLine(string.Create(inv,
                $"{calibration.Signal} over {calibration.Runs} runs ({calibration.Samples} questions x {budgetList.Count} budgets): " +
                $"min {q["p0"]:0.####}, p5 {q["p5"]:0.####}, median {q["p50"]:0.####}, p95 {q["p95"]:0.####}, max {q["p100"]:0.####}"));
            double k0 = (baseOptions ?? new PruningOptions()).AutoPruneK0;
            Console.WriteLine(string.Create(inv,
                $"slope k = {k0} at or below {calibration.Low:0.####}, 0 at or above {calibration.High:0.####} (median question: k = {calibration.Slope(q["p50"], k0):0.###})"));
            Console.WriteLine($"wrote {target}");
            return 0;
        }));
        return cmd;
    }
}
