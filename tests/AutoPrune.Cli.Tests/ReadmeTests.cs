using System.Text.RegularExpressions;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary>
/// Every C# block of the README files is the text of a file in samples/ReadmeSnippets (which the solution compiles):
/// its using directives, a blank line, then the body of its Run/RunAsync method.
/// </summary>
public partial class ReadmeTests
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
}
