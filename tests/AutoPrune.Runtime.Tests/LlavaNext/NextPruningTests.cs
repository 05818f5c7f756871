using AutoPrune.Compute;
using AutoPrune.Models.Llava;
using AutoPrune.Pruning;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>
/// Every pruning method on LLaVA-NeXT images of the fixture (both models): budgets over the image's visual patches (the
/// image_newline rows are neither pruned nor counted), met within one token or refused naming the smallest feasible one;
/// the report's per-layer counts are what the layers processed (the session checks them against the schedule, and here
/// against each layer's KV cache); per-view budgets; the patches' places in the original image in the report.
/// By default two images (a small one on Llama, a landscape one on Mistral) at three budgets; <c>AUTOPRUNE_FULL_NEXT=1</c> runs all eight
/// images on both models.
/// </summary>
public class NextPruningTests(NextModelsFixture fx, ITestOutputHelper output) : IClassFixture<NextModelsFixture>
{
    private static readonly PruningMethod[] Methods = Enum.GetValues<PruningMethod>().Where(m => m != PruningMethod.None).ToArray();

    /// <summary>Budgets: a count, a fraction of the image's patches, and a count small enough to be infeasible for some methods.</summary>
    private static readonly double[] Budgets = [0.5, 600, 300];

    public static TheoryData<string, string> Images() => NextFixture.ImageCases();

    private VisionLanguageModel Model(string variant) => variant == "llama" ? fx.Llama : fx.Mistral;

    private static VisionRequest Request(string image, PruningOptions pruning) =>
        VisionRequest.Create("How many circles are there?", ImageInput.FromFile(NextFixture.Image(image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 1 },
            Pruning = pruning,
        };

    /// <summary>Runs a request and checks what every pruned LLaVA-NeXT prefill must satisfy; returns the report.</summary>
    private async Task<PruningReport?> RunChecked(VisionLanguageModel model, string image, PruningOptions pruning, int patches, int newlines)
    {
        int[]? cached = null;
        SequenceState? final = null;
        VisionAnswer answer;
        try
        {
            answer = await model.AskInspectingAsync(Request(image, pruning), (s, c) => { final = s; cached = c; });
        }
        catch (InfeasibleBudgetException e)
        {
            // Refused naming the smallest feasible budget, which the method then meets.
            Assert.True(e.MinimumFeasibleBudget > Budget.Resolve(pruning, new ModelShape(4, 4, 96, 192, patches, 24)) - 1e-9);
            Assert.Contains($"smallest feasible budget is {(int)Math.Ceiling(e.MinimumFeasibleBudget - 1e-9)}", e.Message);
            output.WriteLine($"{pruning.Method} at {pruning.Budget}: infeasible, smallest {Math.Ceiling(e.MinimumFeasibleBudget - 1e-9)}");
            return await RunChecked(model, image, pruning with { Budget = Math.Ceiling(e.MinimumFeasibleBudget - 1e-9), BudgetScope = BudgetScope.Request }, patches, newlines);
        }
        var r = answer.Report;
        Assert.Equal(pruning.Method, r.Method);
        double asked = pruning.BudgetScope == BudgetScope.Request ? (pruning.Budget < 1 ? pruning.Budget * patches : pruning.Budget) : r.BudgetAsked;
        Assert.Equal(asked, r.BudgetAsked, 6);
        double achieved = r.Accounting == BudgetAccounting.Processed ? r.AvgVisualTokensProcessed : r.AvgVisualTokensPublished;
        Assert.True(achieved <= r.BudgetAsked + 1e-9 && achieved >= r.BudgetAsked - 1 - 1e-9, $"{r.Method}: {achieved} for a budget of {r.BudgetAsked}");
        Assert.Equal(r.VisualTokensPerLayer.Average(), r.AvgVisualTokensProcessed, 6);
        // What each layer processed: its cache holds the prefix, the visual tokens the report counts, every image_newline row and the text.
        int text = final!.VisualIndex.Count(v => v == SequenceState.TextRow); // the prefix and the text after the image
        Assert.Equal(newlines, final.VisualIndex.Count(v => v == SequenceState.NewlineRow));
        for (int l = 0; l < r.VisualTokensPerLayer.Length; l++)
            Assert.Equal(text + newlines + r.VisualTokensPerLayer[l], cached![l]);
        Assert.Equal(final.VisualIndex.Count(v => v >= 0 || v == SequenceState.MergedRow), r.VisualTokensPerLayer[^1]);
        // Kept patches: distinct, within the image, at most what the layer processed; their places are in the report.
        var map = r.Patches ?? throw new Xunit.Sdk.XunitException("The report of a LLaVA-NeXT prefill has no patch map.");
        Assert.Equal(patches, map.Areas.Count);
        for (int l = 0; l < r.KeptIndicesPerLayer.Count; l++)
        {
            var kept = r.KeptIndicesPerLayer[l];
            Assert.Equal(kept.Length, kept.Distinct().Count());
            Assert.All(kept, v => Assert.InRange(v, 0, patches - 1));
            Assert.True(kept.Length <= r.VisualTokensPerLayer[l]);
        }
        Assert.All(map.Areas, a => Assert.True(a.Left >= 0 && a.Right <= map.ImageWidth && a.Top >= 0 && a.Bottom <= map.ImageHeight && a.Left <= a.Right && a.Top <= a.Bottom));
        return r;
    }

    [Theory]
    [MemberData(nameof(Images))]
    public async Task Every_method_meets_its_budget_on_the_image_and_the_layers_processed_what_the_report_says(string variant, string image)
    {
        var model = Model(variant);
        var reference = NextFixture.References(variant).Single(x => x.Image == image);
        var layout = new AutoPrune.Loading.Images.AnyResGrid(
            [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)], 336, 14).Plan(reference.Width, reference.Height);
        Assert.Equal(reference.ImageTokens, layout.TokenCount);
        int patches = layout.Patches, newlines = layout.FeatureRows;
        foreach (var method in Methods)
            foreach (double budget in Budgets)
            {
                var r = await RunChecked(model, image, new PruningOptions { Method = method, Budget = budget }, patches, newlines);
                output.WriteLine($"{variant} {image} {method,-10} budget {budget,5}: {r!.AvgVisualTokensProcessed,8:F2} of {patches} visual tokens per layer " +
                    $"(asked {r.BudgetAsked:F1}), layers [{string.Join(", ", r.VisualTokensPerLayer)}], FLOPs {r.FlopsRatio:P1}");
            }
    }

    [Fact]
    public async Task A_per_view_budget_gives_every_view_its_share()
    {
        const string image = "images/01_640x480.png"; // base view + 2x2 tiles, unpadded to 5 views with patches
        var layout = new AutoPrune.Loading.Images.AnyResGrid(
            [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)], 336, 14).Plan(640, 480);
        var viewPatches = layout.ViewPatches();
        foreach (var method in new[] { PruningMethod.FastV, PruningMethod.VisionZip, PruningMethod.DivPrune, PruningMethod.AutoPrune, PruningMethod.AdaptPrune, PruningMethod.Dart })
        {
            var options = new PruningOptions { Method = method, Budget = 0.4, BudgetScope = BudgetScope.PerView };
            var r = (await RunChecked(fx.Mistral, image, options, layout.Patches, layout.FeatureRows))!;
            // The request's budget is the views' budgets together.
            Assert.Equal(viewPatches.Sum(p => 0.4 * p), r.BudgetAsked, 6);
            // At the last layer each view holds its share of the kept patches (within one token of it).
            var last = r.KeptIndicesPerLayer[^1];
            int keptPatches = last.Length;
            for (int v = 0; v < viewPatches.Length; v++)
            {
                double share = (double)keptPatches * viewPatches[v] / viewPatches.Sum();
                int inView = last.Count(i => r.Patches!.Areas[i].View == v);
                Assert.True(Math.Abs(inView - share) <= 1.0 + 1e-9, $"{method}: view {v} keeps {inView}, its share is {share:F2}");
            }
        }
        // A count per view above a whole view's patches is refused, naming the field.
        var ex = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            fx.Mistral.AskAsync(Request(image, new PruningOptions { Method = PruningMethod.FastV, Budget = 600, BudgetScope = BudgetScope.PerView })));
        Assert.Contains("PruningOptions.Budget", ex.Message);
        Assert.Contains("PerView", ex.Message);
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => new PruningOptions { BudgetScope = (BudgetScope)7 }.Validate());
        Assert.Contains("PruningOptions.BudgetScope", bad.Message);
    }

    [Fact]
    public async Task Methods_with_geometry_choose_by_places_in_the_original_image()
    {
        // AdaptPrune's prior favours the image's centre: on a wide image its kept tiles' patches lie closer to the centre
        // than the patches it dropped, measured in the original image.
        const string image = "images/01_640x480.png";
        var r = (await fx.Llama.AskAsync(Request(image, new PruningOptions { Method = PruningMethod.AdaptPrune, Budget = 0.3 }))).Report;
        var areas = r.Patches!.Areas;
        var kept = r.KeptIndicesPerLayer[^1].ToHashSet();
        double Distance(PatchArea a) => Math.Sqrt(Math.Pow((a.Left + a.Right) / 2 - 320, 2) + Math.Pow((a.Top + a.Bottom) / 2 - 240, 2));
        double keptMean = kept.Average(i => Distance(areas[i]));
        double droppedMean = Enumerable.Range(0, areas.Count).Where(i => !kept.Contains(i)).Average(i => Distance(areas[i]));
        output.WriteLine($"AdaptPrune: kept patches {keptMean:F1} px from the centre on average, dropped {droppedMean:F1} px");
        Assert.True(keptMean < droppedMean);
        // Tile and base-view patches are both kept (one selection over the whole image).
        Assert.Contains(kept, i => areas[i].View == 0);
        Assert.Contains(kept, i => areas[i].View > 0);
    }

    /// <summary>The library's explain picture of a LLaVA-NeXT image: the original image, uncropped, with each layer's kept patches where they lie in it.</summary>
    [Fact]
    public async Task Explain_draws_the_kept_patches_over_the_original_image()
    {
        const string image = "images/01_640x480.png";
        string path = NextFixture.Image(image);
        var r = (await fx.Llama.AskAsync(Request(image, new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 300 }))).Report;
        const int panel = 240;
        var png = PruningVisualizer.RenderPng(File.ReadAllBytes(path), r, fx.Llama.Info.GridSize, [0, 3], panel);
        using var bmp = SkiaSharp.SKBitmap.Decode(png);
        using var source = SkiaSharp.SKBitmap.Decode(path);
        float scale = panel / 640f, ph = 480 * scale;
        Assert.Equal(2 * panel + 3 * 8, bmp.Width);
        Assert.Equal((int)Math.Ceiling(2 * (ph + 26 + 8) + 8 + 26), bmp.Height);
        // Layer 3 is the second row of panels: base view on the left, tiles on the right.
        float y = 26 + 8 + (ph + 26 + 8) + 26;
        var kept = r.KeptIndicesPerLayer[3].ToHashSet();
        int darkened = 0, shown = 0;
        for (int v = 0; v < r.Patches!.Areas.Count; v += 5)
        {
            var a = r.Patches.Areas[v];
            float cx = (a.Left + a.Right) / 2, cy = (a.Top + a.Bottom) / 2;
            float x = 8 + (a.View == 0 ? 0 : panel + 8);
            var p = bmp.GetPixel((int)(x + cx * scale), (int)(y + cy * scale));
            var o = source.GetPixel((int)cx, (int)cy);
            int lp = p.Red + p.Green + p.Blue, lo = o.Red + o.Green + o.Blue;
            if (kept.Contains(v)) { Assert.InRange(lp, lo - 90, lo + 90); shown++; }
            else { Assert.True(lp < lo * 0.4 + 10, $"patch {v} (view {a.View}) should be darkened: {lp} vs {lo}"); darkened++; }
        }
        Assert.True(shown > 5 && darkened > 100, $"{shown} kept and {darkened} darkened patches checked");
        // A picture of another image than the report's is refused.
        Assert.Throws<ArgumentException>(() => PruningVisualizer.RenderPng(File.ReadAllBytes(NextFixture.Image("images/06_50x60.png")), r, 24));
    }
}
