using AutoPrune.Pruning;
using SkiaSharp;
using Xunit;

namespace AutoPrune.Tests.Engine;

public sealed class ExplainAndSamplingTests(PublicModelFixture fx) : IClassFixture<PublicModelFixture>
{
    private static readonly string ImagePath = TestData.Image("images/0002.png");

    /// <summary>The explain picture darkens exactly the patches a layer did not process.</summary>
    [Fact]
    public async Task ExplainPanelsDarkenThePrunedPatches()
    {
        var answer = await fx.Model.AskAsync(VisionRequest.Create("How many blue objects are there?", ImageInput.FromFile(ImagePath)) with
        { Pruning = new PruningOptions { Method = PruningMethod.FastV, Budget = 128 }, Generation = new GenerationOptions { MaxNewTokens = 1 } });
        int g = fx.Model.Info.GridSize, panel = 240;
        var png = PruningVisualizer.RenderPng(File.ReadAllBytes(ImagePath), answer.Report, g, [0, 7], panel);
        using var bmp = SKBitmap.Decode(png);
        Assert.Equal(2 * panel + 3 * 8, bmp.Width);
        // Panel 2 (layer 7) starts at x = 8 + panel + 8, y = 26 + 8 + 26 (title, padding, panel title).
        int x0 = 8 + panel + 8, y0 = 26 + 8 + 26;
        float cell = (float)panel / g;
        var kept = answer.Report.KeptIndicesPerLayer[7].ToHashSet();
        Assert.Equal(answer.Report.VisualTokensPerLayer[7], kept.Count);
        var source = SKBitmap.Decode(ImagePath);
        int checkedCells = 0;
        for (int v = 0; v < g * g; v += 7)
        {
            // Centre of the patch in the panel, and the same point in the source image.
            int px = x0 + (int)(((v % g) + 0.5f) * cell), py = y0 + (int)(((v / g) + 0.5f) * cell);
            var shown = bmp.GetPixel(px, py);
            var original = source.GetPixel((int)(((v % g) + 0.5f) * source.Width / g), (int)(((v / g) + 0.5f) * source.Height / g));
            int lumaShown = shown.Red + shown.Green + shown.Blue, lumaOriginal = original.Red + original.Green + original.Blue;
            if (kept.Contains(v)) Assert.InRange(lumaShown, lumaOriginal - 60, lumaOriginal + 60);
            else Assert.True(lumaShown < lumaOriginal * 0.4 + 10, $"patch {v} should be darkened: {lumaShown} vs {lumaOriginal}");
            checkedCells++;
        }
        Assert.True(checkedCells > 50);
    }

    [Fact]
    public void ExplainRejectsLayersOutsideTheModel()
    {
        var report = new PruningReport(PruningMethod.None, 576, BudgetAccounting.Processed, 576, 576, [576, 576], 1, 1, 1,
            [Enumerable.Range(0, 576).ToArray(), Enumerable.Range(0, 576).ToArray()], new Dictionary<string, double>(), []);
        Assert.Throws<ArgumentOutOfRangeException>(() => PruningVisualizer.RenderPng(File.ReadAllBytes(ImagePath), report, 24, [2]));
    }

    /// <summary>Sampling with a seed is reproducible; different seeds explore different answers; greedy ignores the seed.</summary>
    [Fact]
    public async Task SeededSamplingIsReproducible()
    {
        VisionRequest R(float t, int seed) => VisionRequest.Create("How many blue objects are there?", ImageInput.FromFile(ImagePath)) with
        { Generation = new GenerationOptions { MaxNewTokens = 12, Temperature = t, TopP = 0.95f, Seed = seed } };
        var a = await fx.Model.AskAsync(R(5f, 3));
        var b = await fx.Model.AskAsync(R(5f, 3));
        Assert.Equal(a.TokenIds, b.TokenIds);
        var others = new HashSet<string>();
        for (int s = 0; s < 6; s++) others.Add(string.Join(",", (await fx.Model.AskAsync(R(5f, 100 + s))).TokenIds));
        Assert.True(others.Count > 1, "six seeds at temperature 5 all gave the same tokens");
        var g1 = await fx.Model.AskAsync(R(0f, 1));
        var g2 = await fx.Model.AskAsync(R(0f, 2));
        Assert.Equal(g1.TokenIds, g2.TokenIds);
        Assert.Equal("0", g1.Text.Trim());
    }
}
