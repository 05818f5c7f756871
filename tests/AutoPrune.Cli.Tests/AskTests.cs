using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary><c>autoprune ask</c> as a user runs it (a separate process): questions with and without images, and method names.</summary>
public class AskTests
{
    private static (int ExitCode, string Stdout, string Stderr) Run(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "autoprune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The one default of every surface (<c>PruningOptions.Default</c>): <c>ask</c> without --method/--budget prunes with autoprune at 128.</summary>
    [Fact]
    public void Ask_with_an_image_and_no_pruning_option_prunes_with_autoprune_at_128()
    {
        var (rc, stdout, stderr) = Run("ask", "-i", Path.Combine(Repo.Root, "tests", "data", "shapes-vqa-dev", "images", "0002.png"), "-q", "How many blue objects are there?",
            "--model", Repo.Model, "--device", "cpu", "--max-tokens", "4", "--json");
        Assert.True(rc == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var json = doc.RootElement;
        Assert.Equal("0", json.GetProperty("answer").GetString());
        Assert.Equal("autoprune", json.GetProperty("method").GetString());
        Assert.Equal(128, json.GetProperty("budget").GetDouble());
        Assert.Equal(AutoPrune.Pruning.PruningOptions.DefaultBudget, json.GetProperty("budget").GetDouble());
        Assert.InRange(json.GetProperty("avg_visual_tokens_per_layer").GetDouble(), 127.5, 128.5);
    }

    [Fact]
    public void Ask_without_an_image_answers_and_the_default_method_falls_back_to_none_with_a_note()
    {
        var (rc, stdout, stderr) = Run("ask", "-q", "What shape has three sides?", "--model", Repo.Model, "--device", "cpu", "--max-tokens", "4", "--json");
        Assert.True(rc == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var json = doc.RootElement;
        Assert.Equal("none", json.GetProperty("method").GetString());
        Assert.Equal(0, json.GetProperty("visual_tokens").GetInt32());
        Assert.All(json.GetProperty("visual_tokens_per_layer").EnumerateArray(), n => Assert.Equal(0, n.GetInt32()));
        Assert.Contains(json.GetProperty("notes").EnumerateArray(), n => n.GetString()!.Contains("'autoprune'", StringComparison.Ordinal));

        // Without --json the note is on stderr under the answer's summary.
        var (rc2, _, stderr2) = Run("ask", "-q", "What shape has three sides?", "--model", Repo.Model, "--device", "cpu", "--max-tokens", "2");
        Assert.Equal(0, rc2);
        Assert.Contains("note: The default method 'autoprune' cannot serve this request", stderr2);
    }

    [Fact]
    public void Ask_without_an_image_and_an_explicit_method_fails_with_one_line_naming_it()
    {
        var (rc, stdout, stderr) = Run("ask", "-q", "What shape has three sides?", "--model", Repo.Model, "--device", "cpu", "--method", "fastv");
        Assert.Equal(1, rc);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: Pruning method 'fastv' cannot serve this request", line);
        Assert.Contains("no image", line);
    }

    [Fact]
    public void Method_names_are_parsed_by_the_runtime_and_unknown_ones_list_the_valid_names()
    {
        var (rc, stdout, stderr) = Run("ask", "-i", Repo.Image(2), "-q", "How many blue objects are there?", "--model", Repo.Model, "--device", "cpu",
            "--method", "Adapt_Prune", "--max-tokens", "2", "--json");
        Assert.True(rc == 0, stderr);
        using (var doc = JsonDocument.Parse(stdout)) Assert.Equal("adaptprune", doc.RootElement.GetProperty("method").GetString());

        var (bad, _, err) = Run("ask", "-i", Repo.Image(2), "-q", "q", "--model", Repo.Model, "--method", "turbo");
        Assert.NotEqual(0, bad);
        Assert.Contains("Unknown pruning method 'turbo'", err);
        Assert.Contains(string.Join(", ", AutoPrune.Pruning.PruningMethods.Names), err);
    }
}
