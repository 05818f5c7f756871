using System.CommandLine;
using AutoPrune.Loading;
using AutoPrune.Pruning;
using Spectre.Console;

namespace AutoPrune.Cli;

/// <summary>Options and helpers shared by the CLI's commands.</summary>
internal static class CommonOptions
{
    /// <summary>The default model: samples/models/shapes-llava-tiny next to the app or up the source tree.</summary>
    public static string DefaultModelDirectory()
    {
        const string rel = "samples/models/shapes-llava-tiny";
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                var candidate = Path.Combine(d.FullName, rel);
                if (Directory.Exists(candidate)) return candidate;
            }
        return rel;
    }

    public static Option<string> Model() => new("--model", "-m")
    {
        Description = "Model folder (Hugging Face LLaVA layout). Default: samples/models/shapes-llava-tiny.",
        DefaultValueFactory = _ => DefaultModelDirectory(),
    };

    public static Option<string> Device() => new("--device")
    {
        Description = "auto (an NVIDIA GPU when the driver, a device and cuBLAS are present, else the CPU), cpu, cuda[:N] (fails naming what is missing) or ilgpu-cpu (the GPU code path emulated on the CPU, for checking).",
        DefaultValueFactory = _ => "auto",
    };

    public static Option<bool> CudaGraphs() => new("--cuda-graphs")
    {
        Description = "Replay decode steps and the vision tower as CUDA graphs (off by default until it has run on a GPU; ilgpu-cpu emulates them by replaying the recorded launches; the CPU backend refuses it).",
    };

    /// <summary>--method: any name <see cref="PruningMethods.Parse"/> accepts (case, '-' and '_' ignored).</summary>
    public static Option<string> Method()
    {
        var o = new Option<string>("--method")
        {
            Description = "Pruning method: " + string.Join(", ", PruningMethods.Names) + $". Default: {DefaultMethodName} (a default falls back to none, with a note, on a request it cannot serve, e.g. without an image).",
            DefaultValueFactory = _ => DefaultMethodName,
        };
        o.Validators.Add(r =>
        {
            var value = r.GetValueOrDefault<string>();
            if (!PruningMethods.TryParse(value, out _))
                r.AddError($"Unknown pruning method '{value}' for --method: expected one of {string.Join(", ", PruningMethods.Names)}.");
        });
        return o;
    }

    /// <summary>Whether the user gave <paramref name="option"/> on the command line (not its default).</summary>
    public static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    public static Option<double> Budget() => new("--budget", "-b")
    {
        Description = $"Visual-token budget: a count (e.g. 128) or a fraction of the visual tokens (e.g. 0.22). Default: {PruningOptions.DefaultBudget:0}.",
        DefaultValueFactory = _ => PruningOptions.DefaultBudget,
    };

    /// <summary>The image formats every command reads (SkiaSharp's decoders), as the README lists them.</summary>
    public const string ImageFormats = "PNG, JPEG, WebP, GIF, BMP, ICO or WBMP";

    /// <summary>The default method's name: <see cref="PruningOptions.Default"/>'s, the default of every surface.</summary>
    public static string DefaultMethodName => PruningMethods.Name(PruningOptions.Default.Method);

    /// <summary><c>--options FILE</c>: pruning options as JSON (written by <c>recommend</c>, or by hand).</summary>
    public static Option<FileInfo?> OptionsFile() => new("--options")
    {
        Description = "Pruning options file (JSON: Method, Budget, constants, AutoPrune calibration; what 'recommend' writes). Explicit --method/--budget win over it.",
    };

    public static AutoPrune.Pruning.PruningOptions? LoadOptionsFile(FileInfo? file) => file is null ? null : AutoPrune.Pruning.PruningOptions.Load(file.FullName);

    public static Option<string> Accounting()
    {
        var o = new Option<string>("--budget-accounting") { Description = "processed (average tokens each decoder layer really processes) or published (each paper's convention).", DefaultValueFactory = _ => "processed" };
        o.AcceptOnlyFromAmong("processed", "published");
        return o;
    }

    /// <summary>
    /// The pruning options of a command: the <c>--options</c> file when given (else the defaults), with <c>--method</c>,
    /// <c>--budget</c> and <c>--budget-accounting</c> applied over it when they were given explicitly (or when there is no file).
    /// </summary>
    public static PruningOptions Pruning(ParseResult parse, Option<FileInfo?> optionsFile, Option<string> method, Option<double> budget, Option<string>? accounting)
    {
        var file = LoadOptionsFile(parse.GetValue(optionsFile));
        var o = file ?? new PruningOptions();
        bool Set(Option opt) => file is null || Given(parse, opt);
        if (Set(method)) o = o with { Method = PruningMethods.Parse(parse.GetValue(method)!, "--method") };
        if (Set(budget)) o = o with { Budget = parse.GetValue(budget) };
        if (accounting is not null && Set(accounting))
            o = o with { Accounting = parse.GetValue(accounting) == "published" ? BudgetAccounting.Published : BudgetAccounting.Processed };
        return o;
    }

    /// <summary>
    /// The request's pruning from --options/--method/--budget: a method given on the command line or in an options file is
    /// explicit (a request it cannot serve is an error); the default method falls back to none on such a request, and the
    /// report's notes say why.
    /// </summary>
    public static VisionRequest WithPruning(VisionRequest request, ParseResult parse, Option<FileInfo?> optionsFile, Option<string> method, Option<double> budget, Option<string> accounting)
    {
        var pruning = Pruning(parse, optionsFile, method, budget, accounting);
        bool explicitly = Given(parse, method) || parse.GetValue(optionsFile) is not null;
        return explicitly ? request with { Pruning = pruning } : request with { DefaultPruning = pruning };
    }

    /// <summary>One line on what pruning did and what it cost, for humans.</summary>
    public static string Summary(VisionAnswer a)
    {
        var r = a.Report;
        var line = $"[{r.Method}] {r.AvgVisualTokensProcessed:F1} of {a.VisualTokens} visual tokens per layer, " +
            $"{r.FlopsRatio:P1} of unpruned prefill FLOPs; vision {a.Timings.VisionMs:F0} ms, prefill {a.Timings.PrefillMs:F0} ms, " +
            $"total {a.Timings.TotalMs:F0} ms on {a.Device}";
        return r.Notes.Count == 0 ? line : line + Environment.NewLine + string.Join(Environment.NewLine, r.Notes.Select(n => "note: " + n));
    }

    /// <summary>Writes to stderr so --json output on stdout stays clean.</summary>
    public static IAnsiConsole Err { get; } = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });

    /// <summary>Loads a model with a progress bar on stderr (unless quiet).</summary>
    public static async Task<VisionLanguageModel> LoadAsync(string dir, ModelOptions options, bool quiet)
    {
        if (quiet || Console.IsErrorRedirected)
            return await VisionLanguageModel.LoadAsync(dir, options);
        VisionLanguageModel? model = null;
        await Err.Progress().AutoClear(true).StartAsync(async ctx =>
        {
            var task = ctx.AddTask($"Loading {Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/'))}", maxValue: 1.0);
            var progress = new Progress<LoadProgress>(p => { task.Value = p.Fraction; task.Description = $"Loading: {p.Stage}"; });
            model = await VisionLanguageModel.LoadAsync(dir, options, progress);
            task.Value = 1.0;
        });
        return model!;
    }

    /// <summary>Writes a text file, creating its folder; a path that is a directory or cannot be written is a clear error.</summary>
    public static void WriteFile(string path, string text)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ArgumentException($"Cannot write '{full}': it is a directory.");
        try
        {
            if (Path.GetDirectoryName(full) is { } dir) Directory.CreateDirectory(dir);
            File.WriteAllText(full, text);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"Cannot write '{full}': {e.Message}");
        }
    }

    /// <summary>
    /// Runs a command body: every failure ends in one line on stderr and exit code 1, never a stack trace. Expected failures
    /// (bad files, bad values, a model that cannot load) print their message; anything else also names its type.
    /// Cancellation (Ctrl+C) is left to System.CommandLine.
    /// </summary>
    public static async Task<int> Guard(Func<Task<int>> body)
    {
        try { return await body(); }
        catch (OperationCanceledException) { throw; }
        catch (Exception e)
        {
            bool expected = e is ModelLoadException or ArgumentException or NotSupportedException or IOException or InvalidOperationException
                or UnauthorizedAccessException or TimeoutException or FormatException;
            string message = string.Join(' ', e.Message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            Console.Error.WriteLine(expected ? $"error: {message}" : $"error: {e.GetType().Name}: {message}");
            return 1;
        }
    }

    /// <summary>An integer option within [min, max]; user numbers never size anything before this check.</summary>
    public static int InRange(int value, int min, int max, string option)
        => value >= min && value <= max ? value : throw new ArgumentException($"{option} must be between {min:N0} and {max:N0} (got {value:N0}).");

    /// <summary>An output file path: not an existing directory, and its folder exists or can be made. Checked before any work.</summary>
    public static FileInfo OutputFile(FileInfo file, string option)
    {
        if (Directory.Exists(file.FullName))
            throw new ArgumentException($"{option} '{file.FullName}' is a directory; give the path of a file to write.");
        var parent = file.Directory;
        if (parent is not null && File.Exists(parent.FullName))
            throw new ArgumentException($"{option} '{file.FullName}': '{parent.FullName}' is a file, not a folder.");
        return file;
    }

    /// <summary>An output folder path: not an existing file. Checked before any work.</summary>
    public static DirectoryInfo OutputFolder(DirectoryInfo dir, string option)
    {
        if (File.Exists(dir.FullName))
            throw new ArgumentException($"{option} '{dir.FullName}' is a file; give the path of a folder to write into.");
        return dir;
    }
}
