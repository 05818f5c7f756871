using System.Diagnostics;
using System.Text.RegularExpressions;
using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Cli.Tests;

/// <summary>
/// Every C# block of the README files is the text of a file in samples/ReadmeSnippets (which the solution compiles):
/// its using directives, a blank line, then the body of its Run/RunAsync method. Every command of README.md that runs
/// the demo model runs as written, and the README's lists (methods, image formats) are the code's.
/// </summary>
public partial class ReadmeTests(ITestOutputHelper output)
{
    private static readonly string[] Readmes =
    [
        "README.md",
        "src/AutoPrune.Runtime/README.md",
        "src/AutoPrune.Extensions.AI/README.md",
        "src/AutoPrune.SemanticKernel/README.md",
        "src/AutoPrune.MLNet/README.md",
    ];

    [GeneratedRegex(@"^```csharp\n(.*?)^```$", RegexOptions.Singleline | RegexOptions.Multiline)]
    private static partial Regex CSharpBlock();

    /// <summary>The README text of one snippet file.</summary>
    internal static string Render(string path)
    {
        var lines = File.ReadAllLines(path);
        int ns = Array.FindIndex(lines, l => l.StartsWith("namespace ", StringComparison.Ordinal));
        var usings = lines[..ns].Where(l => l.StartsWith("using ", StringComparison.Ordinal)).ToList();
        int method = Array.FindIndex(lines, l => Regex.IsMatch(l, @"^    public static .*\bRun(Async)?\("));
        Assert.True(method > 0 && lines[method + 1] == "    {", $"{path}: no 'public static ... Run(...)' method with its brace on the next line");
        int end = Array.IndexOf(lines, "    }", method + 2);
        var body = lines[(method + 2)..end].Select(l => l.Length >= 8 ? l[8..] : l.Trim());
        return string.Join("\n", usings) + "\n\n" + string.Join("\n", body) + "\n";
    }

    [Fact]
    public void Every_csharp_block_of_every_readme_is_a_compiled_snippet_and_every_snippet_is_shown()
    {
        var snippets = Directory.GetFiles(Path.Combine(Repo.Root, "samples", "ReadmeSnippets"), "*.cs")
            .Where(f => Path.GetFileName(f) != "Program.cs")
            .ToDictionary(f => Path.GetFileName(f), Render);
        var shown = new HashSet<string>();
        foreach (var readme in Readmes)
        {
            var text = File.ReadAllText(Path.Combine(Repo.Root, readme)).Replace("\r\n", "\n");
            var blocks = CSharpBlock().Matches(text).Select(m => m.Groups[1].Value).ToList();
            Assert.NotEmpty(blocks);
            foreach (var block in blocks)
            {
                var match = snippets.FirstOrDefault(s => s.Value == block);
                Assert.True(match.Key is not null,
                    $"{readme}: this C# block is not the text of a file in samples/ReadmeSnippets (usings, blank line, Run body):\n{block}");
                shown.Add(match.Key);
            }
        }
        Assert.Equal(snippets.Keys.Order(), shown.Order());
    }

    [GeneratedRegex(@"^```bash\n(.*?)^```$", RegexOptions.Singleline | RegexOptions.Multiline)]
    private static partial Regex BashBlock();

    /// <summary>
    /// Commands that run the demo model but are not run here, each with why: a test must not take an hour. Each must be
    /// in the README (so this list cannot outlive what it excuses).
    /// </summary>
    private static readonly (string Prefix, string Why)[] NotRun =
    [
        ("samples/AutoPrune.Cli/bin/Release/net10.0/autoprune eval --data tests/data/shapes-vqa-dev/dev-large.jsonl", "the results table's reproduction: 47,200 answers, about an hour"),
    ];

    /// <summary>The command lines of README.md's bash blocks (continuations joined), in order.</summary>
    internal static List<string> Commands()
    {
        var text = File.ReadAllText(Path.Combine(Repo.Root, "README.md")).Replace("\r\n", "\n");
        var lines = new List<string>();
        foreach (Match block in BashBlock().Matches(text))
        {
            string pending = "";
            foreach (var raw in block.Groups[1].Value.Split('\n'))
            {
                var line = raw.Trim();
                if (line.EndsWith('\\')) { pending += line[..^1] + " "; continue; }
                line = pending + line;
                pending = "";
                if (line.Length > 0 && !line.StartsWith('#')) lines.Add(line);
            }
        }
        return lines;
    }

    /// <summary>
    /// A command of the demo model: the CLI or a sample run from the repository, without another model (<c>-m</c>,
    /// <c>--model</c>), a GPU (<c>--device cuda</c>), generated weights or a server that runs until stopped.
    /// </summary>
    internal static bool UsesTheDemoModel(string line) =>
        (line.StartsWith("dotnet run --project samples/", StringComparison.Ordinal) || line.StartsWith("samples/AutoPrune.Cli/bin/", StringComparison.Ordinal))
        && !Regex.IsMatch(line, @"(^| )(-m|--model) ") && !line.Contains("--device cuda", StringComparison.Ordinal)
        && !line.Contains("--random-weights", StringComparison.Ordinal) && !Regex.IsMatch(line, @" -- serve\b");

    /// <summary>
    /// Issue 28, item 4: every README command with the demo model runs as written: by bash, in README order, in one
    /// folder where the repository's <c>samples</c> and <c>tests</c> are at hand (so later commands see what earlier ones
    /// wrote, e.g. recommend's options file), and must exit 0. <c>dotnet run</c> gets <c>--no-build</c>: the test's own
    /// build built every sample (so the commands do not build in Debug beside the tests), and the project by its real path.
    /// </summary>
    [Fact]
    public async Task Every_readme_command_with_the_demo_model_runs_as_written()
    {
        var all = Commands();
        foreach (var (prefix, _) in NotRun) Assert.Contains(all, l => l.StartsWith(prefix, StringComparison.Ordinal));
        var commands = all.Where(UsesTheDemoModel).Where(l => !NotRun.Any(n => l.StartsWith(n.Prefix, StringComparison.Ordinal))).ToList();
        Assert.True(commands.Count >= 12, $"only {commands.Count} demo-model commands found in README.md");
        var dir = Repo.TempDir();
        foreach (var sub in new[] { "samples", "tests" }) Directory.CreateSymbolicLink(Path.Combine(dir, sub), Path.Combine(Repo.Root, sub));
        // The project by its real path (MSBuild refuses one reached through the symbolic link: its restore is of the real path).
        var prelude = $"dotnet() {{ if [ \"$1\" = run ] && [ \"$2\" = --project ]; then local p=$3; shift 3; command dotnet run --no-build --project \"{Repo.Root}/$p\" \"$@\"; else command dotnet \"$@\"; fi; }}\n";
        foreach (var command in commands)
        {
            var clock = Stopwatch.StartNew();
            var psi = new ProcessStartInfo("bash") { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(prelude + command);
            using var p = Process.Start(psi)!;
            var stdoutTask = p.StandardOutput.ReadToEndAsync();
            var stderrTask = p.StandardError.ReadToEndAsync();
            using var limit = new CancellationTokenSource(TimeSpan.FromMinutes(5));
            try { await p.WaitForExitAsync(limit.Token); }
            catch (OperationCanceledException) { p.Kill(entireProcessTree: true); Assert.Fail($"README command did not finish in 5 minutes: {command}"); }
            string stdout = await stdoutTask, stderr = await stderrTask;
            output.WriteLine($"{clock.Elapsed.TotalSeconds,6:F1} s  rc {p.ExitCode}  {command}");
            Assert.True(p.ExitCode == 0, $"README command failed (exit {p.ExitCode}): {command}\nstdout: {stdout}\nstderr: {stderr}");
            // What the README says these print.
            if (command.Contains("ask --image tests/data/shapes-vqa-dev/images/0002.png --question \"How many blue objects are there?\"", StringComparison.Ordinal))
                Assert.Equal("0", stdout.Trim());
            if (Regex.IsMatch(command, @"samples/(SemanticKernelChat|HostedChat) -c Release( +#.*)?$"))
                Assert.Contains("answer:   0", stdout);
            // The samples prune with the one default (issue 28, item 3): autoprune at 128.
            if (command.Contains("samples/SemanticKernelChat", StringComparison.Ordinal))
                Assert.Contains("pruning:  autoprune, 128 visual tokens per layer", stdout);
            if (command.Contains("samples/MLNetBatch", StringComparison.Ordinal))
                Assert.Matches(@"pruning\s+AutoPrune\s+\(budget\s+128\)", stdout); // the console wraps the line
        }
        Assert.True(File.Exists(Path.Combine(dir, "autoprune-options.json")), "recommend wrote no options file");
        Assert.True(File.Exists(Path.Combine(dir, "out", "results.json")), "eval wrote no results");
    }

    /// <summary>
    /// Issue 28, item 7: every list of the pruning methods (a run of method names that starts the list with <c>none</c>,
    /// in the READMEs, the CLI help texts and the samples; or a package description's list of papers) names all of them.
    /// </summary>
    [Fact]
    public void Every_list_of_methods_in_the_docs_names_every_method()
    {
        var names = PruningMethods.Names.OrderByDescending(n => n.Length).ToList();
        string one = "(?:" + string.Join("|", names.Select(Regex.Escape)) + ")";
        var run = new Regex($@"(?<![a-z]){one}(?:[`\s,]*(?:and\s+|or\s+)?`?{one}(?![a-z]))+", RegexOptions.Singleline);
        var docs = Readmes.Append("src/AutoPrune.AspNetCore/README.md").Append("samples/AutoPrune.Cli/README.md")
            .Concat(Directory.GetFiles(Path.Combine(Repo.Root, "samples"), "*.cs", SearchOption.AllDirectories)
                .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")).Select(f => Path.GetRelativePath(Repo.Root, f)));
        int lists = 0;
        foreach (var file in docs)
        {
            var text = File.ReadAllText(Path.Combine(Repo.Root, file)).ToLowerInvariant();
            foreach (Match m in run.Matches(text))
            {
                if (!m.Value.StartsWith("none", StringComparison.Ordinal) || run.Matches(m.Value).Count == 0 || Regex.Matches(m.Value, one).Count < 5) continue; // an example's few methods
                lists++;
                var missing = PruningMethods.Names.Where(n => !Regex.IsMatch(m.Value, $@"(?<![a-z]){Regex.Escape(n)}(?![a-z])")).ToList();
                Assert.True(missing.Count == 0, $"{file} lists methods without {string.Join(", ", missing)}: {m.Value}");
            }
        }
        Assert.True(lists >= 3, $"found only {lists} method lists");
        // Package descriptions name the papers (PyramidDrop is pdrop).
        foreach (var csproj in Directory.GetFiles(Path.Combine(Repo.Root, "src"), "*.csproj", SearchOption.AllDirectories))
        {
            var description = Regex.Match(File.ReadAllText(csproj), "<Description>(.*?)</Description>").Groups[1].Value.ToLowerInvariant().Replace("pyramiddrop", "pdrop");
            var named = PruningMethods.Names.Where(n => n != "none" && description.Contains(n, StringComparison.Ordinal)).ToList();
            if (named.Count >= 4) Assert.True(named.Count == PruningMethods.Names.Count - 1, $"{csproj}: its description names {string.Join(", ", named)}");
        }
    }

    /// <summary>Issue 28, item 7: the image formats of <c>--help</c> are the README's.</summary>
    [Fact]
    public void The_image_formats_of_the_help_are_the_readmes()
    {
        var readme = File.ReadAllText(Path.Combine(Repo.Root, "README.md"));
        Assert.Contains($"Images: {CommonOptions.ImageFormats} (SkiaSharp's decoders", readme);
        var ask = AskCommand.Create();
        var option = ask.Options.Single(o => o.Name == "--image");
        Assert.Contains(CommonOptions.ImageFormats, option.Description);
        Assert.Contains(CommonOptions.ImageFormats, ExplainCommand.Create().Options.Single(o => o.Name == "--image").Description);
    }
}
