using System.CommandLine;
using System.Text.Json;
using AutoPrune.Cli;
using AutoPrune.Pruning;
using Xunit;

// The commands print to the process's console, and some tests capture it: run the CLI tests one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace AutoPrune.Cli.Tests;

/// <summary>Shared paths: the repository root is found by walking up from the test binaries to AutoPrune.sln.</summary>
internal static class Repo
{
    public static readonly string Root = FindRoot();
    public static string Model => Path.Combine(Root, "samples", "models", "shapes-llava-tiny");
    public static string DevDir => Path.Combine(Root, "tests", "data", "shapes-vqa-dev");
    public static string Image(int i) => Path.Combine(DevDir, "images", $"{i:0000}.png");

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
        throw new InvalidOperationException("AutoPrune.sln not found above " + AppContext.BaseDirectory);
    }

    public static RootCommand Cli()
    {
        var root = new RootCommand("test");
        root.Subcommands.Add(AskCommand.Create());
        root.Subcommands.Add(ExplainCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(VerifyCommand.Create());
        root.Subcommands.Add(CalibrateCommand.Create());
        root.Subcommands.Add(RecommendCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        return root;
    }

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "autoprune-cli-tests-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }
}

/// <summary>The jsonl reader: good rows kept, bad rows reported by line number.</summary>
public class EvalDataTests
{
    [Fact]
    public void Bad_rows_are_reported_with_line_numbers_and_skipped()
    {
        var dir = Repo.TempDir();
        var data = Path.Combine(dir, "rows.jsonl");
        File.WriteAllLines(data,
        [
            $$"""{"id": 1, "image": "{{Repo.Image(0)}}", "question": "Is there a green circle?", "answer": "no", "type": "exists"}""",
            """{"id": 2, "image": "images/does-not-exist.png", "question": "q", "answer": "a"}""",
            "",
            $$"""{"id": 3, "image": "{{Repo.Image(1)}}", "answer": "no"}""",
            """{"id": 4, "image": "x.png", "question": "q", "answer": """,
            "[1, 2]",
            $$"""{"id": "five", "image": "{{Repo.Image(2)}}", "question": "How many?", "answer": 3}""",
        ]);
        var (rows, bad) = EvalData.Read(data, imagesRoot: null, allowAbsolutePaths: true);
        Assert.Equal([1, 7], rows.Select(r => r.Line));
        Assert.Equal("five", rows[1].Id);
        Assert.Equal("3", rows[1].Answer);
        Assert.Null(rows[1].Type);
        Assert.Equal([2, 4, 5, 6], bad.Select(b => b.Line));
        Assert.Contains("not found", bad[0].Reason);
        Assert.Contains("'question'", bad[1].Reason);
        Assert.Contains("malformed JSON", bad[2].Reason);
        Assert.Contains("JSON object", bad[3].Reason);

        var (limited, _) = EvalData.Read(data, null, limit: 1, allowAbsolutePaths: true);
        Assert.Single(limited);
    }

    [Theory]
    [InlineData(" Yes\n", "yes", true)]
    [InlineData("CIRCLE", "circle", true)]
    [InlineData("2", "3", false)]
    [InlineData("", "0", false)]
    public void Answers_compare_after_trim_and_case_fold(string pred, string gold, bool ok) => Assert.Equal(ok, EvalData.IsCorrect(pred, gold));

    [Fact]
    public void Method_and_budget_lists_parse()
    {
        Assert.Equal(["none", "fastv", "autoprune"], EvalCommand.ParseMethods("fastv, autoprune"));
        Assert.Equal(9, EvalCommand.ParseMethods("all").Count);
        Assert.Throws<ArgumentException>(() => EvalCommand.ParseMethods("fastv,bogus"));
        Assert.Equal([96.0, 0.25], EvalCommand.ParseBudgets("96,0.25,96"));
        Assert.Throws<ArgumentException>(() => EvalCommand.ParseBudgets("96,-1"));
    }
}

/// <summary>`eval` and `bench` end to end, in process, on the fixture model.</summary>
public class CommandTests
{
    [Fact]
    public async Task Eval_writes_results_table_plot_and_predictions_and_counts_bad_rows()
    {
        var dir = Repo.TempDir();
        var data = Path.Combine(dir, "rows.jsonl");
        // Relative image paths resolved against --images-root; the bad rows sit between good ones.
        var dev = File.ReadLines(Path.Combine(Repo.DevDir, "dev.jsonl")).Take(5).ToList();
        File.WriteAllLines(data,
        [
            dev[0],
            """{"id": "gone", "image": "images/missing.png", "question": "Is there a circle?", "answer": "yes"}""",
            dev[1],
            """{"id": "noanswer", "image": "images/0000.png", "question": "Is there a circle?"}""",
            "{not json",
            dev[2], dev[3], dev[4],
        ]);
        var outDir = Path.Combine(dir, "out");
        int rc = await Repo.Cli().Parse(["eval", "--data", data, "--images-root", Repo.DevDir, "--model", Repo.Model,
            "--methods", "fastv,sparsevlm", "--budgets", "128", "--limit", "4", "--out", outDir]).InvokeAsync();
        Assert.Equal(0, rc);

        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        var root = doc.RootElement;
        Assert.Equal(4, root.GetProperty("rows_used").GetInt32());
        Assert.Equal(3, root.GetProperty("rows_skipped").GetInt32());
        Assert.Equal([2, 4, 5], root.GetProperty("skipped_rows").EnumerateArray().Select(b => b.GetProperty("line").GetInt32()));
        Assert.Equal("processed", root.GetProperty("budget_accounting").GetString());
        var results = root.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["none", "fastv", "sparsevlm"], results.Select(r => r.GetProperty("method").GetString()));

        var none = results[0];
        Assert.Equal(4, none.GetProperty("n").GetInt32());
        Assert.Equal(1.0, none.GetProperty("flops_ratio").GetDouble(), 6);
        Assert.Equal(576, none.GetProperty("avg_visual_tokens_per_layer").GetDouble(), 6);
        double noneAcc = none.GetProperty("accuracy").GetDouble();

        var fastv = results[1];
        Assert.False(fastv.GetProperty("skipped").GetBoolean());
        Assert.Equal(128, fastv.GetProperty("budget").GetDouble());
        Assert.Equal(4, fastv.GetProperty("n").GetInt32());
        foreach (var f in new[] { "accuracy", "retention", "avg_visual_tokens_per_layer", "flops_ratio", "prefill_ms_median", "total_ms_median" })
            Assert.Equal(JsonValueKind.Number, fastv.GetProperty(f).ValueKind);
        double acc = fastv.GetProperty("accuracy").GetDouble();
        Assert.InRange(acc, 0, 1);
        Assert.True(Math.Abs(fastv.GetProperty("avg_visual_tokens_per_layer").GetDouble() - 128) <= 1);
        Assert.InRange(fastv.GetProperty("flops_ratio").GetDouble(), 0.05, 0.5);
        if (noneAcc > 0) Assert.Equal(Math.Round(acc / noneAcc, 4), fastv.GetProperty("retention").GetDouble(), 3);
        Assert.Equal(JsonValueKind.Object, fastv.GetProperty("accuracy_by_type").ValueKind);
        Assert.True(fastv.GetProperty("accuracy_by_type").EnumerateObject().Any());

        var sparse = results[2];
        Assert.True(sparse.GetProperty("skipped").GetBoolean());
        Assert.Contains("infeasible", sparse.GetProperty("skip_reason").GetString());
        Assert.Equal(0, sparse.GetProperty("n").GetInt32());

        // predictions.jsonl: 4 rows x (none + fastv), every answer with its report.
        var preds = File.ReadAllLines(Path.Combine(outDir, "predictions.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(8, preds.Count);
        Assert.Equal(4, preds.Count(p => p.GetProperty("method").GetString() == "fastv"));
        Assert.All(preds, p =>
        {
            Assert.Equal(JsonValueKind.String, p.GetProperty("prediction").ValueKind);
            Assert.Equal(8, p.GetProperty("visual_tokens_per_layer").GetArrayLength());
            Assert.True(p.TryGetProperty("flops_ratio", out _));
            Assert.True(p.TryGetProperty("signals", out _));
        });
        Assert.Equal([1, 3, 6, 7], preds.Select(p => p.GetProperty("line").GetInt32()).Distinct());
        int correct = preds.Count(p => p.GetProperty("method").GetString() == "fastv" && p.GetProperty("correct").GetBoolean());
        Assert.Equal(acc, correct / 4.0, 6);

        var md = File.ReadAllText(Path.Combine(outDir, "results.md"));
        Assert.Contains("| fastv | 128 |", md);
        Assert.Contains("| sparsevlm | 128 |", md);
        Assert.Contains("skipped", md);
        Assert.Contains("line 4: missing field 'answer'", md);
        Assert.Contains("line 5: malformed JSON", md);
        Assert.Contains("accuracy_vs_flops.png", md);

        var png = File.ReadAllBytes(Path.Combine(outDir, "accuracy_vs_flops.png"));
        Assert.True(png.Length > 5000);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
    }

    /// <summary>explain in the CLI's own process, where ScottPlot brings SkiaSharp 3.x in place of the runtime's 2.88.</summary>
    [Fact]
    public async Task Explain_writes_a_png_with_one_panel_per_layer()
    {
        var outFile = Path.Combine(Repo.TempDir(), "explain.png");
        int rc = await Repo.Cli().Parse(["explain", "--image", Repo.Image(2), "--question", "How many blue objects are there?",
            "--model", Repo.Model, "--method", "fastv", "--budget", "128", "--layers", "0,1,7", "--out", outFile]).InvokeAsync();
        Assert.Equal(0, rc);
        var png = File.ReadAllBytes(outFile);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        using var bmp = SkiaSharp.SKBitmap.Decode(png);
        Assert.Equal(3 * 240 + 4 * 8, bmp.Width);
        // Issue 28: the question and the answer above the panels (one row of three: 26 + 240 + 26 + 2 * 8 px), a legend below.
        int panels = 26 + 240 + 26 + 2 * 8;
        Assert.True(bmp.Height > panels + 3 * 20 + 5 * 20, $"height {bmp.Height}: no room for the header and the legend");
        bool Ink(int top, int bottom) => Enumerable.Range(top, bottom - top).Any(y => Enumerable.Range(0, bmp.Width).Any(x => bmp.GetPixel(x, y).Red < 80));
        Assert.True(Ink(0, 28), "no text above the panels");
        Assert.True(Ink(bmp.Height - 60, bmp.Height), "no legend below the panels");
    }

    [Fact]
    public async Task The_explain_picture_names_the_question_the_answer_and_what_its_marks_mean()
    {
        using var model = VisionLanguageModel.Load(Repo.Model, new ModelOptions { Device = "cpu" });
        var answer = await model.AskAsync(VisionRequest.Create("How many blue objects are there?", ImageInput.FromFile(Repo.Image(2))));
        var header = ExplainPicture.Header("How many blue objects are there?", answer);
        Assert.Equal("Q: How many blue objects are there?", header[0]);
        Assert.Equal("A: 0", header[1]);
        Assert.StartsWith("autoprune, budget 128 (processed): 128.0 of 576 visual tokens per layer", header[2]);
        Assert.Equal(["clear", "darkened", "yellow outline", "+ N merged"], ExplainPicture.Legend.Select(e => e.Mark));
        var panels = PruningVisualizer.RenderPng(File.ReadAllBytes(Repo.Image(2)), answer.Report, model.Info.GridSize, [0]);
        using var bare = SkiaSharp.SKBitmap.Decode(panels);
        using var composed = SkiaSharp.SKBitmap.Decode(ExplainPicture.Compose(panels, "How many blue objects are there?", answer));
        Assert.Equal(Math.Max(bare.Width, 560), composed.Width);
        Assert.True(composed.Height >= bare.Height + 8 + 3 * 20 + 8 + 5 * 20, $"{composed.Height} vs {bare.Height}");
    }

    [Fact]
    public async Task Ask_with_an_infeasible_budget_fails_with_one_clear_line()
    {
        int rc = await Repo.Cli().Parse(["ask", "--image", Repo.Image(2), "--question", "How many?", "--model", Repo.Model,
            "--method", "sparsevlm", "--budget", "96", "--json"]).InvokeAsync();
        Assert.Equal(1, rc);
    }

    [Fact]
    public async Task Eval_with_a_missing_data_file_fails_cleanly()
    {
        int rc = await Repo.Cli().Parse(["eval", "--data", "/nonexistent/rows.jsonl", "--model", Repo.Model, "--out", Repo.TempDir()]).InvokeAsync();
        Assert.Equal(1, rc);
    }

    [Fact]
    public async Task Bench_measures_each_method_and_the_speedup_against_unpruned()
    {
        var outFile = Path.Combine(Repo.TempDir(), "bench.json");
        int rc = await Repo.Cli().Parse(["bench", "--image", Repo.Image(3), "--model", Repo.Model, "--methods", "fastv,sparsevlm",
            "--budgets", "96,192", "--repeats", "1", "--warmup", "0", "--max-tokens", "2", "--out", outFile]).InvokeAsync();
        Assert.Equal(0, rc);
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var results = doc.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["none", "fastv", "fastv", "sparsevlm", "sparsevlm"], results.Select(r => r.GetProperty("method").GetString()));
        Assert.Equal(1.0, results[0].GetProperty("prefill_speedup").GetDouble(), 6);
        Assert.True(results[3].GetProperty("skipped").GetBoolean()); // sparsevlm at 96 is infeasible on 8 layers
        foreach (var r in results.Where(r => !r.GetProperty("skipped").GetBoolean()))
        {
            Assert.True(r.GetProperty("prefill_ms_median").GetDouble() > 0);
            Assert.True(r.GetProperty("prefill_speedup").GetDouble() > 0);
            Assert.True(r.GetProperty("peak_working_set_mb").GetDouble() > 0);
            Assert.True(r.GetProperty("prefill_tokens_per_second").GetDouble() > 0);
        }
        Assert.True(doc.RootElement.GetProperty("vision_ms_uncached").GetDouble() > 0);
    }
    /// <summary>Synthetic stage timings on generated weights, through the GPU code path on ILGPU's CPU accelerator.</summary>
    [Fact]
    public async Task Bench_speed_with_random_weights_times_every_stage_on_the_gpu_code_path()
    {
        var outFile = Path.Combine(Repo.TempDir(), "speed.json");
        int rc = await Repo.Cli().Parse(["bench", "--random-weights", "tiny-test", "--device", "ilgpu-cpu", "--budgets", "192,64",
            "--repeats", "1", "--warmup", "0", "--decode-tokens", "2", "--out", outFile]).InvokeAsync();
        Assert.Equal(0, rc);
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var root = doc.RootElement;
        Assert.StartsWith("ILGPU CPU accelerator", root.GetProperty("device").GetString());
        Assert.Equal("tiny-test", root.GetProperty("model").GetString());
        Assert.Equal("tiled", root.GetProperty("long_attention").GetString()); // what gpu-targets.sh checks on a GPU
        Assert.True(root.GetProperty("vision_tower_ms").GetDouble() > 0);
        Assert.True(root.GetProperty("decode_ms_per_token").GetDouble() > 0);
        Assert.True(root.GetProperty("peak_device_memory_mb").GetDouble() > root.GetProperty("weights_device_memory_mb").GetDouble());
        var rows = root.GetProperty("prefill").EnumerateArray().ToList();
        Assert.Equal(["None", "None (input cut)", "FastV", "AutoPrune", "None (input cut)", "FastV", "AutoPrune"], rows.Select(r => r.GetProperty("method").GetString()));
        Assert.Equal(576, rows[0].GetProperty("avg_visual_tokens_per_layer").GetDouble());
        Assert.Equal(1.0, rows[0].GetProperty("speedup_vs_unpruned").GetDouble());
        Assert.Equal(192, rows[1].GetProperty("avg_visual_tokens_per_layer").GetDouble());
        foreach (var r in rows.Skip(2).Take(2))
        {
            Assert.InRange(r.GetProperty("avg_visual_tokens_per_layer").GetDouble(), 191, 192);
            Assert.True(r.GetProperty("prefill_ms").GetDouble() > 0);
            Assert.InRange(r.GetProperty("flops_ratio").GetDouble(), 0.2, 0.4);
        }
        // 64 is below what FastV can reach on 8 layers (layer 0 runs on all 576): skipped with the reason, not a failure.
        Assert.Contains("smallest feasible budget", rows[5].GetProperty("skipped").GetString());
        Assert.Equal(JsonValueKind.Null, rows[5].GetProperty("prefill_ms").ValueKind);
        // AutoPrune chooses what enters layer 0 before the LLM, so 64 is within its reach.
        Assert.InRange(rows[6].GetProperty("avg_visual_tokens_per_layer").GetDouble(), 63, 64);
        Assert.True(rows[6].GetProperty("prefill_ms").GetDouble() > 0);
    }

    [Fact]
    public async Task Bench_speed_refuses_a_13b_model_on_the_cpu_before_generating_it()
    {
        // 13.3 billion parameters are 53 GB as fp32; on a machine with that much memory the refusal does not apply.
        if (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes * 0.9 > 53.4e9) return;
        var err = new StringWriter();
        var old = Console.Error;
        Console.SetError(err);
        int rc;
        try { rc = await Repo.Cli().Parse(["bench", "--random-weights", "llava-1.5-13b", "--device", "cpu"]).InvokeAsync(); }
        finally { Console.SetError(old); }
        Assert.Equal(1, rc);
        Assert.Contains("more than the", err.ToString());
    }

    /// <summary>verify: the GPU code path (emulated) against the CPU on dev rows, with a pruning method.</summary>
    [Fact]
    public async Task Verify_compares_a_device_with_the_cpu_and_passes_within_the_fp16_tolerance()
    {
        var outFile = Path.Combine(Repo.TempDir(), "verify.json");
        int rc = await Repo.Cli().Parse(["verify", "--device", "ilgpu-cpu", "--data", Path.Combine(Repo.DevDir, "dev.jsonl"), "--limit", "2",
            "--model", Repo.Model, "--method", "fastv", "--budget", "128", "--max-tokens", "3", "--out", outFile]).InvokeAsync();
        Assert.Equal(0, rc);
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var r = doc.RootElement;
        Assert.Equal(2, r.GetProperty("rows").GetInt32());
        Assert.Equal(2, r.GetProperty("same_answers").GetInt32());
        Assert.Equal("FastV", r.GetProperty("method").GetString());
        Assert.Equal(0, r.GetProperty("max_abs_logit_difference").GetDouble()); // the CPU computed with the device's precision
        Assert.Equal("cpu", r.GetProperty("reference_device").GetString());
        Assert.Equal("MatchDevice", r.GetProperty("reference_precision").GetString());
        // Against fp32 activations: within the fp16 tolerance, never bit-identical.
        Assert.Equal(0, await Repo.Cli().Parse(["verify", "--device", "ilgpu-cpu", "--data", Path.Combine(Repo.DevDir, "dev.jsonl"), "--limit", "2",
            "--model", Repo.Model, "--method", "fastv", "--budget", "128", "--max-tokens", "3", "--reference-precision", "fp32", "--out", outFile]).InvokeAsync());
        using var fp32 = JsonDocument.Parse(File.ReadAllText(outFile));
        Assert.InRange(fp32.RootElement.GetProperty("max_abs_logit_difference").GetDouble(), 1e-7, 2e-2);
        Assert.Equal("Fp32", fp32.RootElement.GetProperty("reference_precision").GetString());
    }

    /// <summary>verify --cuda-graphs: the tower replayed as a graph from the second image on (emulated on ilgpu-cpu) still gives the CPU's bits.</summary>
    [Fact]
    public async Task Verify_with_cuda_graphs_on_the_emulated_gpu_path_equals_the_cpu()
    {
        var outFile = Path.Combine(Repo.TempDir(), "verify-graphs.json");
        Assert.Equal(0, await Repo.Cli().Parse(["verify", "--device", "ilgpu-cpu", "--cuda-graphs", "--data", Path.Combine(Repo.DevDir, "dev.jsonl"), "--limit", "3",
            "--model", Repo.Model, "--max-tokens", "3", "--out", outFile]).InvokeAsync());
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var r = doc.RootElement;
        Assert.True(r.GetProperty("cuda_graphs").GetBoolean());
        Assert.Equal(3, r.GetProperty("same_answers").GetInt32());
        Assert.Equal(0, r.GetProperty("max_abs_logit_difference").GetDouble());
    }

    /// <summary>
    /// verify on AutoPrune: dev row 1's kept tokens differ on the fp16 GPU path from layer 0 on (near-tied [CLS] scores
    /// in a uniform background swap), while the answers agree: strict comparison fails, an overlap floor passes.
    /// </summary>
    [Fact]
    public async Task Verify_reports_kept_token_overlap_and_passes_above_a_floor()
    {
        string[] Args(params string[] extra) => ["verify", "--device", "ilgpu-cpu", "--data", Path.Combine(Repo.DevDir, "dev.jsonl"), "--limit", "2",
            "--model", Repo.Model, "--method", "autoprune", "--budget", "128", "--max-tokens", "3", "--reference-precision", "fp32", .. extra];
        Assert.Equal(2, await Repo.Cli().Parse(Args()).InvokeAsync());
        var outFile = Path.Combine(Repo.TempDir(), "verify-overlap.json");
        Assert.Equal(0, await Repo.Cli().Parse(Args("--min-kept-overlap", "0.75", "--tolerance", "0.05", "--out", outFile)).InvokeAsync());
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var r = doc.RootElement;
        Assert.Equal(2, r.GetProperty("same_answers").GetInt32());
        Assert.Equal(1, r.GetProperty("same_kept_tokens").GetInt32());
        Assert.InRange(r.GetProperty("min_kept_overlap").GetDouble(), 0.75, 0.99);
        Assert.Equal(1, await Repo.Cli().Parse(Args("--min-kept-overlap", "1.5")).InvokeAsync());
    }

    [Fact]
    public async Task Verify_with_a_tolerance_no_fp16_device_can_meet_fails_with_exit_code_2()
    {
        int rc = await Repo.Cli().Parse(["verify", "--device", "ilgpu-cpu", "--data", Path.Combine(Repo.DevDir, "dev.jsonl"), "--limit", "1",
            "--model", Repo.Model, "--tolerance", "1e-9", "--max-tokens", "1", "--reference-precision", "fp32"]).InvokeAsync();
        Assert.Equal(2, rc);
    }
}
