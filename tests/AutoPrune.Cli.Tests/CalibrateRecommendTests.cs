using System.Text.Json;
using AutoPrune.Pruning;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary><c>calibrate</c>, <c>recommend</c>, <c>--options</c> and <c>eval --variant</c> end to end with real files.</summary>
public class CalibrateRecommendTests
{
    private static async Task<(int Rc, string Out, string Err)> Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (o, e) = (new StringWriter(), new StringWriter());
        Console.SetOut(o);
        Console.SetError(e);
        try { return (await Repo.Cli().Parse(args).InvokeAsync(), o.ToString(), e.ToString()); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

    private static string Dev => Path.Combine(Repo.DevDir, "dev.jsonl");

    [Fact]
    public async Task Calibrate_writes_a_calibration_the_runtime_then_uses()
    {
        var dir = Repo.TempDir();
        var cal = Path.Combine(dir, "cal.json");
        var (rc, output, err) = await Run("calibrate", "--data", Dev, "--limit", "6", "--budgets", "128", "--model", Repo.Model, "--out", cal);
        Assert.True(rc == 0, err);
        Assert.Contains("wrote " + cal, output);
        var c = AutoPruneCalibration.Load(cal);
        Assert.Equal(AutoPruneCalibration.SignalNormalized, c.Signal);
        Assert.Equal(6, c.Samples);
        Assert.True(c.High > c.Low);
        Assert.InRange(c.Low, c.Quantiles["p0"], c.Quantiles["p100"]);
        Assert.Equal(8, c.Model!.Layers);
        Assert.Equal("dev.jsonl", c.Data);

        // ask with an options file naming the calibration: the report says the slope came from it.
        var options = Path.Combine(dir, "options.json");
        File.WriteAllText(options, """{ "Method": "AutoPrune", "Budget": 128, "AutoPruneSlope": "Calibrated", "AutoPruneCalibrationFile": "cal.json" }""");
        (rc, output, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many blue objects are there?", "--model", Repo.Model,
            "--options", options, "--json", "--max-tokens", "2");
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(output);
        Assert.Equal("autoprune", doc.RootElement.GetProperty("method").GetString());
        Assert.Contains(doc.RootElement.GetProperty("notes").EnumerateArray(), n => n.GetString()!.Contains("calibrated on 6 questions"));
        double k = doc.RootElement.GetProperty("signals").GetProperty("k").GetDouble();
        double signal = doc.RootElement.GetProperty("signals").GetProperty("mi1_normalized").GetDouble();
        Assert.Equal(c.Slope(signal, new PruningOptions().AutoPruneK0), k, 9);
    }

    [Fact]
    public async Task Calibrate_refuses_too_few_rows_and_a_directory_as_output()
    {
        var (rc, _, err) = await Run("calibrate", "--data", Dev, "--limit", "1", "--model", Repo.Model);
        Assert.Equal(1, rc);
        Assert.Contains("at least 2", err);
        (rc, _, err) = await Run("calibrate", "--data", Dev, "--limit", "2", "--budgets", "128", "--model", Repo.Model, "--out", Repo.TempDir());
        Assert.Equal(1, rc);
        Assert.Contains("is a directory", err);
    }

    [Fact]
    public async Task Bad_options_and_calibration_files_fail_with_one_line_naming_the_file_and_field()
    {
        var dir = Repo.TempDir();
        var bad = Path.Combine(dir, "bad.json");
        File.WriteAllText(bad, """{ "Method": "AutoPrune", "Budgett": 128 }""");
        var (rc, _, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many?", "--model", Repo.Model, "--options", bad);
        Assert.Equal(1, rc);
        Assert.Contains(bad, err);
        Assert.Contains("unknown field 'Budgett'", err);
        Assert.Single(err.Trim().Split('\n'));

        var cal = Path.Combine(dir, "cal.json");
        File.WriteAllText(cal, """{ "format": "autoprune-calibration/1", "signal": "mi1_normalized", "low": 0.5, "high": 0.2 }""");
        var options = Path.Combine(dir, "o.json");
        File.WriteAllText(options, """{ "Method": "AutoPrune", "AutoPruneSlope": "Calibrated", "AutoPruneCalibrationFile": "cal.json" }""");
        (rc, _, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many?", "--model", Repo.Model, "--options", options);
        Assert.Equal(1, rc);
        Assert.Contains(cal, err);
        Assert.Contains("field 'high'", err);
    }

    [Fact]
    public async Task Explicit_method_and_budget_win_over_the_options_file()
    {
        var options = Path.Combine(Repo.TempDir(), "o.json");
        File.WriteAllText(options, """{ "Method": "FastV", "Budget": 192 }""");
        var (rc, output, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many blue objects are there?", "--model", Repo.Model,
            "--options", options, "--json", "--max-tokens", "1");
        Assert.True(rc == 0, err);
        using (var doc = JsonDocument.Parse(output))
        {
            Assert.Equal("fastv", doc.RootElement.GetProperty("method").GetString());
            Assert.Equal(192, doc.RootElement.GetProperty("budget").GetDouble());
        }
        (rc, output, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many blue objects are there?", "--model", Repo.Model,
            "--options", options, "--budget", "128", "--json", "--max-tokens", "1");
        Assert.True(rc == 0, err);
        using (var doc = JsonDocument.Parse(output))
        {
            Assert.Equal("fastv", doc.RootElement.GetProperty("method").GetString());
            Assert.Equal(128, doc.RootElement.GetProperty("budget").GetDouble());
        }
    }

    [Fact]
    public async Task Recommend_picks_the_cheapest_configuration_that_meets_the_floor_and_writes_options_ask_accepts()
    {
        var dir = Repo.TempDir();
        var outFile = Path.Combine(dir, "best.json");
        var report = Path.Combine(dir, "report.json");
        var (rc, output, err) = await Run("recommend", "--data", Dev, "--limit", "8", "--model", Repo.Model, "--methods", "fastv,divprune",
            "--min-retention", "0.75", "--refine-steps", "1", "--max-tokens", "2", "--out", outFile, "--report", report);
        Assert.True(rc == 0, err);
        Assert.Contains("recommended:", output);

        using var doc = JsonDocument.Parse(File.ReadAllText(report));
        var root = doc.RootElement;
        var points = root.GetProperty("measured").EnumerateArray().ToList();
        Assert.NotEmpty(points);
        var best = root.GetProperty("best");
        Assert.True(best.GetProperty("meets_floor").GetBoolean());
        Assert.True(best.GetProperty("retention").GetDouble() >= 0.75);
        double bestFlops = best.GetProperty("flops_ratio").GetDouble();
        foreach (var p in points.Where(p => p.GetProperty("meets_floor").GetBoolean()))
            Assert.True(bestFlops <= p.GetProperty("flops_ratio").GetDouble() + 1e-12);
        // Each method's scan stops at its first passing coarse budget: nothing above it is measured coarsely.
        foreach (var g in points.GroupBy(p => p.GetProperty("method").GetString()))
        {
            var coarse = g.Where(p => p.GetProperty("stage").GetString() == "coarse").ToList();
            Assert.True(coarse.Count(p => p.GetProperty("meets_floor").GetBoolean()) <= 1);
        }

        var chosen = PruningOptions.Load(outFile);
        Assert.Equal(best.GetProperty("method").GetString(), chosen.Method.ToString().ToLowerInvariant());
        Assert.Equal(best.GetProperty("budget").GetDouble(), chosen.Budget);

        (rc, output, err) = await Run("ask", "-i", Repo.Image(2), "-q", "How many blue objects are there?", "--model", Repo.Model,
            "--options", outFile, "--json", "--max-tokens", "1");
        Assert.True(rc == 0, err);
        using var ask = JsonDocument.Parse(output);
        Assert.Equal(chosen.Method.ToString().ToLowerInvariant(), ask.RootElement.GetProperty("method").GetString());
        Assert.Equal(chosen.Budget, ask.RootElement.GetProperty("budget").GetDouble());
    }

    [Fact]
    public async Task Eval_variants_run_labelled_option_files_at_every_budget()
    {
        var dir = Repo.TempDir();
        var paper = Path.Combine(dir, "paper.json");
        File.WriteAllText(paper, """{ "Preset": "autoprune-paper" }""");
        var outDir = Path.Combine(dir, "out");
        var (rc, _, err) = await Run("eval", "--data", Dev, "--limit", "2", "--model", Repo.Model, "--methods", "autoprune",
            "--budgets", "128,192", "--variant", $"paper={paper}", "--max-tokens", "1", "--out", outDir);
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        var names = doc.RootElement.GetProperty("results").EnumerateArray().Select(r => r.GetProperty("method").GetString() + "@" + r.GetProperty("budget").GetDouble()).ToList();
        Assert.Equal(["none@576", "autoprune@128", "autoprune@192", "paper@128", "paper@192"], names);
        // The paper preset keeps N0 = 2.5 B after layer 0 (320 at 128, 480 at 192; both feasible on 8 layers).
        var preds = File.ReadAllLines(Path.Combine(outDir, "predictions.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        double N0(double budget) => preds.First(p => p.GetProperty("method").GetString() == "paper" && p.GetProperty("budget").GetDouble() == budget)
            .GetProperty("visual_tokens_per_layer")[1].GetDouble();
        Assert.Equal(320, N0(128));
        Assert.Equal(480, N0(192));
        (rc, _, err) = await Run("eval", "--data", Dev, "--limit", "1", "--model", Repo.Model, "--variant", "fastv=" + paper, "--out", outDir);
        Assert.Equal(1, rc);
        Assert.Contains("method name", err);
    }
}
