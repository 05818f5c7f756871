using System.Text.Json;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary>The CLI on a LLaVA-NeXT checkpoint folder, unchanged (tests/data/llava-next-tiny).</summary>
public class LlavaNextCliTests
{
    private static string NextModel(string variant) => Path.Combine(Repo.Root, "tests", "data", "llava-next-tiny", $"llava-next-tiny-{variant}");
    private static string NextImage(string name) => Path.Combine(Repo.Root, "tests", "data", "llava-next-tiny", "images", name);

    private static async Task<(int Rc, string Out, string Err)> Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (o, e) = (new StringWriter(), new StringWriter());
        Console.SetOut(o);
        Console.SetError(e);
        try { return (await Repo.Cli().Parse(args).InvokeAsync(), o.ToString(), e.ToString()); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

    [Fact]
    public async Task Ask_answers_on_a_llava_next_folder_pruned_by_the_default_method()
    {
        var (rc, stdout, _) = await Run("ask", "--image", NextImage("06_50x60.png"), "--question", "How many circles are there?",
            "--model", NextModel("mistral"), "--device", "cpu", "--max-tokens", "2", "--json");
        Assert.Equal(0, rc);
        // Other tests may print at the same time: take the line that is this command's JSON.
        var line = stdout.Split('\n').Single(l => l.StartsWith("{\"answer\"", StringComparison.Ordinal));
        var j = JsonDocument.Parse(line).RootElement;
        Assert.Equal("autoprune", j.GetProperty("method").GetString());
        Assert.Equal(1080, j.GetProperty("visual_tokens").GetInt32());
        Assert.Equal(128, j.GetProperty("avg_visual_tokens_per_layer").GetDouble(), 6);
        Assert.Equal(2, j.GetProperty("generated_tokens").GetInt32());
        Assert.DoesNotContain(j.GetProperty("notes").EnumerateArray(), n => n.GetString()!.Contains("unpruned"));

        (rc, stdout, _) = await Run("ask", "--image", NextImage("06_50x60.png"), "--question", "How many circles are there?",
            "--model", NextModel("mistral"), "--device", "cpu", "--max-tokens", "2", "--json", "--method", "none");
        Assert.Equal(0, rc);
        j = JsonDocument.Parse(stdout.Split('\n').Single(l => l.StartsWith("{\"answer\"", StringComparison.Ordinal))).RootElement;
        Assert.Equal(1103, j.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(264, j.GetProperty("top_logits")[0].GetProperty("id").GetInt32()); // transformers' greedy first token
    }

    [Fact]
    public async Task Ask_with_a_per_view_budget_on_a_llava_next_folder_and_explain_draws_the_original_image()
    {
        var options = Path.Combine(Repo.TempDir(), "per-view.json");
        File.WriteAllText(options, "{\"Method\": \"fastv\", \"Budget\": 0.5, \"BudgetScope\": \"PerView\"}");
        var (rc, stdout, stderr) = await Run("ask", "--image", NextImage("01_640x480.png"), "--question", "How many?",
            "--model", NextModel("llama"), "--device", "cpu", "--options", options, "--max-tokens", "1", "--json");
        Assert.True(rc == 0, stderr);
        var j = JsonDocument.Parse(stdout.Split('\n').Single(l => l.StartsWith("{\"answer\"", StringComparison.Ordinal))).RootElement;
        Assert.Equal("fastv", j.GetProperty("method").GetString());
        Assert.Equal(1152, j.GetProperty("avg_visual_tokens_per_layer").GetDouble(), 6); // half of 2304 patches, view by view

        var png = Path.Combine(Repo.TempDir(), "explain-next.png");
        (rc, _, stderr) = await Run("explain", "--image", NextImage("01_640x480.png"), "--question", "How many?",
            "--model", NextModel("llama"), "--device", "cpu", "--method", "adaptprune", "--budget", "700", "--out", png);
        Assert.True(rc == 0, stderr);
        using var bitmap = SkiaSharp.SKBitmap.Decode(png);
        Assert.NotNull(bitmap);
        Assert.True(bitmap.Width > 400 && bitmap.Height > 200);
    }

    /// <summary>Synthetic stage timings for a LLaVA-NeXT architecture (the tiny one; the 7B presets take a GPU): a 672x672 image's 5 views.</summary>
    [Fact]
    public async Task Bench_speed_with_random_weights_runs_a_llava_next_architecture()
    {
        var outFile = Path.Combine(Repo.TempDir(), "speed.json");
        var (rc, _, _) = await Run("bench", "--random-weights", "tiny-next-test", "--device", "cpu", "--methods", "fastv,divprune", "--budgets", "192",
            "--repeats", "1", "--warmup", "0", "--decode-tokens", "2", "--out", outFile);
        Assert.Equal(0, rc);
        using var doc = JsonDocument.Parse(File.ReadAllText(outFile));
        var root = doc.RootElement;
        Assert.Equal("tiny-next-test", root.GetProperty("model").GetString());
        Assert.Equal(2928, root.GetProperty("visual_tokens").GetInt32());
        Assert.Equal(5, root.GetProperty("image_views").GetInt32());
        Assert.True(root.GetProperty("vision_tower_ms").GetDouble() > 0);
        Assert.True(root.GetProperty("projector_ms").GetDouble() > 0);
        var rows = root.GetProperty("prefill").EnumerateArray().ToList();
        Assert.Equal(["None", "None (input cut)", "FastV", "DivPrune"], rows.Select(r => r.GetProperty("method").GetString()));
        // The visual tokens are the 2,880 patches (the 48 image_newline rows are not pruned and not counted).
        Assert.Equal(2880, rows[0].GetProperty("avg_visual_tokens_per_layer").GetDouble());
        Assert.Equal(2928 + 50, rows[0].GetProperty("prompt_tokens").GetInt32());
        Assert.True(rows[0].GetProperty("prefill_ms").GetDouble() > 0);
        Assert.Equal(192, rows[1].GetProperty("avg_visual_tokens_per_layer").GetDouble());
        // Pruning methods run on the anyres image: FastV cannot prune 192 of 2,880 on so few layers and names its smallest
        // feasible budget; DivPrune keeps 192 patches (and the 48 image_newline rows).
        Assert.Contains("smallest feasible budget", rows[2].GetProperty("skipped").GetString());
        Assert.Equal(JsonValueKind.Null, rows[3].GetProperty("skipped").ValueKind);
        Assert.Equal(192, rows[3].GetProperty("avg_visual_tokens_per_layer").GetDouble(), 6);
        Assert.Equal(192 + 48 + 50, rows[3].GetProperty("prompt_tokens").GetInt32());
        Assert.True(rows[3].GetProperty("flops_ratio").GetDouble() < 0.2);
    }
}
