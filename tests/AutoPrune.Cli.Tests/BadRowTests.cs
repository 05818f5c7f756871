using System.Diagnostics;
using AutoPrune.Cli;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary>
/// Issue 28, item 13: one bad row of an eval or verify file (a lone surrogate escaped in its question, bad JSON, a
/// missing field, a missing image) is skipped with its line number and counted in a summary, and a file with no usable
/// row ends in one <c>error:</c> line and exit code 1. Runs the real CLI as a separate process (its stderr whole).
/// </summary>
public sealed class BadRowTests : IDisposable
{
    private readonly string _dir = Repo.TempDir();
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private static (int ExitCode, string Stdout, string Stderr) Run(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "autoprune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)), "the command hung");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Line 1 is good; lines 2-5 are each bad in one way (the surrogate is the JSON escape, six characters).</summary>
    private string Data(bool withGood = true)
    {
        var path = Path.Combine(_dir, withGood ? "rows.jsonl" : "bad.jsonl");
        File.WriteAllLines(path,
        [
            withGood ? """{"id": 0, "image": "images/0002.png", "question": "How many blue objects are there?", "answer": "0"}""" : """{"id": 0, "image": "images/0002.png", "answer": "0"}""",
            """{"id": 1, "image": "images/0003.png", "question": "q\ud800?", "answer": "0"}""",
            """{"id": 2, "image": "images/0003.png", "question": """,
            """{"id": 3, "image": "images/0003.png", "answer": "0"}""",
            """{"id": 4, "image": "images/no-such-image.png", "question": "How many?", "answer": "0"}""",
        ]);
        return path;
    }

    private static void AssertSkippedWithLines(string stderr)
    {
        Assert.Contains("line 2: field 'question' is not valid text", stderr);
        Assert.Contains("line 3: malformed JSON", stderr);
        Assert.Contains("line 4: missing field 'question'", stderr);
        Assert.Contains("line 5: image file 'images/no-such-image.png' not found", stderr);
    }

    [Fact]
    public void Eval_skips_each_bad_row_with_its_line_and_answers_the_good_one()
    {
        var (rc, stdout, stderr) = Run("eval", "--data", Data(), "--images-root", Repo.DevDir, "--methods", "none", "--budgets", "128",
            "--model", Repo.Model, "--device", "cpu", "--out", Path.Combine(_dir, "out"));
        Assert.True(rc == 0, stderr);
        AssertSkippedWithLines(stderr);
        Assert.Contains("eval: 1 rows used, 4 skipped", stderr);
        Assert.DoesNotContain("error:", stderr);
        Assert.True(File.Exists(Path.Combine(_dir, "out", "results.json")), stdout);
    }

    [Fact]
    public void Verify_skips_each_bad_row_with_its_line_and_counts_them()
    {
        var (rc, _, stderr) = Run("verify", "--data", Data(), "--images-root", Repo.DevDir, "--device", "ilgpu-cpu", "--method", "none",
            "--model", Repo.Model, "--max-tokens", "2");
        Assert.True(rc == 0, stderr);
        AssertSkippedWithLines(stderr);
        Assert.Contains("verify: 1 row(s) used, 4 skipped (lines 2, 3, 4, 5)", stderr);
    }

    [Fact]
    public void A_file_without_a_usable_row_is_one_error_line_and_exit_code_1()
    {
        foreach (var command in new[] { "eval", "verify" })
        {
            var (rc, _, stderr) = Run(command, "--data", Data(withGood: false), "--images-root", Repo.DevDir, "--model", Repo.Model, "--device", command == "eval" ? "cpu" : "ilgpu-cpu",
                "--out", Path.Combine(_dir, command == "eval" ? "out-none" : "verify.json"));
            Assert.Equal(1, rc);
            var errors = stderr.Split('\n').Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToList();
            var error = Assert.Single(errors);
            Assert.Contains("No usable rows in", error);
            Assert.Contains("5 row(s) skipped", error);
            Assert.Contains("line 1: missing field 'question'", stderr);
        }
    }

    [Fact]
    public void The_reader_reports_a_lone_surrogate_in_any_field_without_throwing()
    {
        var path = Path.Combine(_dir, "surrogate.jsonl");
        File.WriteAllLines(path, ["""{"id": "a\udc00", "image": "images/0002.png", "question": "q", "answer": "0"}""", """{"id": 1, "image": "images/0002.png", "question": "q", "answer": "0"}"""]);
        var (rows, bad) = EvalData.Read(path, Repo.DevDir);
        Assert.Equal(2, Assert.Single(rows).Line);
        Assert.Equal((1, "field 'id' is not valid text (a lone UTF-16 surrogate such as \\ud800)"), (Assert.Single(bad).Line, bad[0].Reason));
    }
}
