// Batch visual question answering with an ML.NET pipeline:
//   dotnet run --project samples/MLNetBatch -c Release -- [input.jsonl|input.csv] [options]
// With no input it answers the first rows of tests/data/shapes-vqa-dev/dev.jsonl with samples/models/shapes-llava-tiny.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using AutoPrune;
using AutoPrune.MLNet;
using AutoPrune.Pruning;
using Microsoft.ML;
using Microsoft.ML.Data;
using Spectre.Console;

var opts = BatchOptions.Parse(args);
if (opts is null) return 2;
if (opts.Help) { BatchOptions.PrintUsage(); return 0; }

List<BatchRow> rows;
try { rows = BatchRow.Read(opts.Input, opts.Limit); }
catch (Exception e) when (e is IOException or FormatException or JsonException)
{
    AnsiConsole.MarkupLine($"[red]Cannot read {Markup.Escape(opts.Input)}:[/] {Markup.Escape(e.Message)}");
    return 1;
}
AnsiConsole.MarkupLine($"[grey]{rows.Count} row(s) from[/] {Markup.Escape(opts.Input)}; [grey]model[/] {Markup.Escape(opts.Model)}; " +
                       $"[grey]pruning[/] {opts.Method} (budget {opts.Budget}); [grey]image column[/] {(opts.UseMLImage ? "MLImage (LoadImages)" : "file path")}");

var ml = new MLContext(seed: 0);
var data = ml.Data.LoadFromEnumerable(rows);
string imageFolder = Path.GetDirectoryName(Path.GetFullPath(opts.Input))!;
var options = new VisualQuestionOptions
{
    Generation = new GenerationOptions { MaxNewTokens = opts.MaxNewTokens },
    Pruning = new PruningOptions { Method = opts.Method, Budget = opts.Budget },
    ImageFolder = imageFolder,
};
IEstimator<ITransformer> pipeline = opts.UseMLImage
    ? ml.Transforms.LoadImages("Image", imageFolder, nameof(BatchRow.ImagePath))
        .Append(ml.Transforms.AnswerVisualQuestion("Answer", "Image", nameof(BatchRow.Question), opts.Model, options))
    : ml.Transforms.AnswerVisualQuestion("Answer", nameof(BatchRow.ImagePath), nameof(BatchRow.Question), opts.Model, options);

var model = pipeline.Fit(data); // instant: nothing is trained, the model loads on the first row
var results = ml.Data.CreateEnumerable<BatchResult>(model.Transform(data), reuseRowObject: false);

var table = new Table().Border(TableBorder.Rounded)
    .AddColumn("#").AddColumn("image").AddColumn("question").AddColumn("answer").AddColumn("expected")
    .AddColumn(new TableColumn("kept tokens").RightAligned()).AddColumn(new TableColumn("FLOPs").RightAligned())
    .AddColumn(new TableColumn("prefill ms").RightAligned()).AddColumn("error");
int n = 0, graded = 0, correct = 0, failed = 0;
double prefillSum = 0, flopsSum = 0;
var sw = Stopwatch.StartNew();
using (var csv = new StreamWriter(opts.Output, false, new UTF8Encoding(false)))
{
    csv.WriteLine("image,question,answer,expected,kept_visual_tokens,flops_ratio,prefill_ms,error");
    AnsiConsole.Progress().AutoClear(true).Start(ctx =>
    {
        var task = ctx.AddTask("answering", maxValue: rows.Count);
        foreach (var r in results) // streams: one row is answered per step of the cursor
        {
            n++;
            bool ok = r.Error.Length == 0;
            if (!ok) failed++;
            else { prefillSum += r.PrefillMs; flopsSum += r.FlopsRatio; }
            if (r.Expected.Length > 0) { graded++; if (ok && string.Equals(r.Answer.Trim(), r.Expected.Trim(), StringComparison.OrdinalIgnoreCase)) correct++; }
            csv.WriteLine(string.Join(',', Csv(r.ImagePath), Csv(r.Question), Csv(r.Answer), Csv(r.Expected),
                F(r.KeptVisualTokens), F(r.FlopsRatio), F(r.PrefillMs), Csv(r.Error)));
            if (n <= opts.TableRows)
                table.AddRow(n.ToString(CultureInfo.InvariantCulture), Markup.Escape(r.ImagePath), Markup.Escape(r.Question),
                    ok ? $"[bold]{Markup.Escape(r.Answer)}[/]" : "", Markup.Escape(r.Expected),
                    F(r.KeptVisualTokens), F(r.FlopsRatio), ok ? r.PrefillMs.ToString("F0", CultureInfo.InvariantCulture) : "",
                    ok ? "" : $"[red]{Markup.Escape(r.Error)}[/]");
            task.Increment(1);
        }
    });
}
(model as IDisposable)?.Dispose(); // disposes the model the stage loaded
AnsiConsole.Write(table);
if (n > opts.TableRows) AnsiConsole.MarkupLine($"[grey](table shows the first {opts.TableRows} of {n} rows; all are in the CSV)[/]");
int answered = n - failed;
AnsiConsole.MarkupLine($"{n} rows in {sw.Elapsed.TotalSeconds:F1} s ({(n > 0 ? sw.Elapsed.TotalMilliseconds / n : 0):F0} ms/row incl. model load), " +
                       $"{failed} failed" +
                       (graded > 0 ? $", exact match {correct}/{graded} ({100.0 * correct / graded:F1}%)" : "") +
                       (answered > 0 ? $", mean prefill {prefillSum / answered:F0} ms, mean FLOPs ratio {flopsSum / answered:F3}" : ""));
AnsiConsole.MarkupLine($"CSV written to [bold]{Markup.Escape(Path.GetFullPath(opts.Output))}[/]");
return 0;

static string F(float v) => float.IsNaN(v) ? "" : v.ToString("0.###", CultureInfo.InvariantCulture);
static string Csv(string s) => s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;

/// <summary>An input row of the batch.</summary>
public sealed class BatchRow
{
    public string ImagePath { get; set; } = "";
    public string Question { get; set; } = "";
    public string Expected { get; set; } = "";

    /// <summary>Reads JSONL (fields image, question, optional answer) or CSV with a header naming image and question (and optionally answer).</summary>
    public static List<BatchRow> Read(string path, int limit)
    {
        var rows = new List<BatchRow>();
        bool csv = path.EndsWith(".csv", StringComparison.OrdinalIgnoreCase);
        using var reader = new StreamReader(path);
        int lineNo = 0, imageIx = -1, questionIx = -1, answerIx = -1;
        string? line;
        while ((line = reader.ReadLine()) is not null && (limit <= 0 || rows.Count < limit))
        {
            lineNo++;
            if (line.Trim().Length == 0) continue;
            if (!csv)
            {
                using var doc = JsonDocument.Parse(line);
                var o = doc.RootElement;
                rows.Add(new BatchRow
                {
                    ImagePath = Str(o, "image") ?? Str(o, "image_path") ?? throw new FormatException($"line {lineNo}: no \"image\" field"),
                    Question = Str(o, "question") ?? throw new FormatException($"line {lineNo}: no \"question\" field"),
                    Expected = Str(o, "answer") ?? "",
                });
                continue;
            }
            var cells = SplitCsv(line);
            if (imageIx < 0)
            {
                var header = cells.Select(c => c.Trim().ToLowerInvariant()).ToList();
                imageIx = header.FindIndex(h => h is "image" or "image_path" or "path");
                questionIx = header.IndexOf("question");
                answerIx = header.IndexOf("answer");
                if (imageIx < 0 || questionIx < 0) throw new FormatException("the CSV header must name an 'image' and a 'question' column");
                continue;
            }
            rows.Add(new BatchRow
            {
                ImagePath = imageIx < cells.Count ? cells[imageIx] : "",
                Question = questionIx < cells.Count ? cells[questionIx] : "",
                Expected = answerIx >= 0 && answerIx < cells.Count ? cells[answerIx] : "",
            });
        }
        return rows;
    }

    private static string? Str(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) ? (v.ValueKind == JsonValueKind.String ? v.GetString() : v.ToString()) : null;

    private static List<string> SplitCsv(string line)
    {
        var cells = new List<string>();
        var sb = new StringBuilder();
        bool quoted = false;
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < line.Length && line[i + 1] == '"') { sb.Append('"'); i++; }
                else if (c == '"') quoted = false;
                else sb.Append(c);
            }
            else if (c == '"') quoted = true;
            else if (c == ',') { cells.Add(sb.ToString()); sb.Clear(); }
            else sb.Append(c);
        }
        cells.Add(sb.ToString());
        return cells;
    }
}

/// <summary>An output row: the input columns plus the stage's answer and report columns.</summary>
public sealed class BatchResult
{
    public string ImagePath { get; set; } = "";
    public string Question { get; set; } = "";
    public string Expected { get; set; } = "";
    public string Answer { get; set; } = "";
    [ColumnName("Answer_KeptVisualTokens")] public float KeptVisualTokens { get; set; }
    [ColumnName("Answer_FlopsRatio")] public float FlopsRatio { get; set; }
    [ColumnName("Answer_PrefillMs")] public float PrefillMs { get; set; }
    [ColumnName("Answer_Error")] public string Error { get; set; } = "";
}

internal sealed record BatchOptions(string Input, string Model, string Output, int Limit, int MaxNewTokens,
    PruningMethod Method, double Budget, bool UseMLImage, int TableRows, bool Help)
{
    public static void PrintUsage() => Console.WriteLine("""
        MLNetBatch: answer questions about images with an ML.NET pipeline (AutoPrune.MLNet).

        usage: dotnet run --project samples/MLNetBatch -c Release -- [input.jsonl|input.csv] [options]

          input                 JSONL (image, question[, answer]) or CSV with a header (image, question[, answer]);
                                image paths are relative to the input file. Default: tests/data/shapes-vqa-dev/dev.jsonl
          --model DIR           LLaVA checkpoint folder (default: samples/models/shapes-llava-tiny)
          --out FILE            CSV to write (default: mlnet-answers.csv)
          --limit N             first N rows only, 0 for all (default: 20)
          --max-new-tokens N    (default: 16)
          --method M            pruning method: none, fastv, pdrop, sparsevlm, visionzip, adaptprune, divprune, dart, autoprune (default: autoprune)
          --budget B            visual-token budget, tokens (>= 1) or a fraction (default: 128)
          --mlimage             load images into an MLImage column with LoadImages instead of passing paths
          --table-rows N        rows shown in the table (default: 50)
        """);

    public static BatchOptions? Parse(string[] args)
    {
        string root = FindRoot();
        string? input = null;
        string model = Path.Combine(root, "samples", "models", "shapes-llava-tiny");
        string output = "mlnet-answers.csv";
        int limit = 20, maxNew = 16, tableRows = 50;
        var method = PruningOptions.Default.Method;   // autoprune at 128, the default of every surface
        double budget = PruningOptions.DefaultBudget;
        bool mlImage = false, help = false;
        try
        {
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "-h" or "--help": help = true; break;
                    case "--model": model = Next(); break;
                    case "--out": output = Next(); break;
                    case "--limit": limit = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--max-new-tokens": maxNew = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--method": method = PruningMethods.Parse(Next(), "--method"); break;
                    case "--budget": budget = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--mlimage": mlImage = true; break;
                    case "--table-rows": tableRows = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case var a when a.StartsWith('-'): throw new FormatException($"unknown option {a}");
                    case var a: input = a; break;
                }
            }
        }
        catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
        {
            Console.Error.WriteLine($"error: {e.Message} (see --help)");
            return null;
        }
        input ??= Path.Combine(root, "tests", "data", "shapes-vqa-dev", "dev.jsonl");
        return new BatchOptions(input, model, output, limit, maxNew, method, budget, mlImage, tableRows, help);
    }

    private static string FindRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
        }
        return Directory.GetCurrentDirectory();
    }
}
