using AutoPrune.Compute;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Models.Llava;
using Xunit;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>
/// What pruning on anyres will build on: each visual patch's view, position and area in the original image, the
/// image_newline rows marked apart from patches, each view's own [CLS] attention, and the assembled tokens.
/// </summary>
public class AnyResTokenMapTests
{
    private static (LlavaModel Model, float[] Newline, float[] Tokens, AnyResTokenMap Map) Assemble(string image)
    {
        string dir = NextFixture.Model("llama");
        var config = LlavaConfig.Load(dir);
        using var store = TensorNames.Open(dir);
        var model = new LlavaModel(store, config);
        var assembler = new AnyResAssembler(store, config.TextConfig.HiddenSize);
        var pixels = AnyResImageProcessor.Load(dir, config).Preprocess(File.ReadAllBytes(NextFixture.Image(image)));
        var (tokens, map) = assembler.Assemble(model, pixels.Layout, AnyResAssembler.Encode(model, pixels));
        return (model, store.ReadFloat32("image_newline", 96), tokens, map);
    }

    [Fact]
    public void The_640x480_image_maps_every_token_to_its_view_and_place_in_the_image()
    {
        var (model, newline, tokens, map) = Assemble("images/01_640x480.png");
        var L = map.Layout;
        // 640x480 fits the 672x672 pinpoint as 672x504, 84 px of padding above and below; 2x2 tiles; the 48x48 patch
        // grid loses 6 padded rows at the top and the bottom: 36 rows of 48 patches, each followed by a newline.
        Assert.Equal((672, 672, 672, 504, 0, 84, 2, 2), (L.CanvasWidth, L.CanvasHeight, L.ResizedWidth, L.ResizedHeight, L.PadLeft, L.PadTop, L.TileRows, L.TileCols));
        Assert.Equal((6, 36, 0, 48), (L.FeatureRowStart, L.FeatureRows, L.FeatureColStart, L.FeatureCols));
        Assert.Equal(576 + 36 * 48, map.Patches.Count);
        Assert.Equal(2340, map.Sequence.Count);
        Assert.Equal(36, map.Sequence.Count(i => i == SequenceState.NewlineRow));
        for (int row = 0; row < 36; row++) Assert.Equal(SequenceState.NewlineRow, map.Sequence[576 + row * 49 + 48]);
        Assert.Equal(Enumerable.Range(0, map.Patches.Count), map.Sequence.Where(i => i >= 0)); // patches in prompt order

        // The base view covers the whole image, squeezed: patch (0, 0) is the top-left 1/24 x 1/24 of it.
        Assert.Equal(new PatchOrigin(0, 0, 0, 0, 0, 0, 0, 640 / 24f, 480 / 24f), map.Patches[0]);
        // The first tile patch is stitched row 6 of tile (0, 0): the image's top edge (padding ends at canvas row 84).
        var first = map.Patches[576];
        Assert.Equal((1, 6, 0, 0, 0), (first.View, first.Row, first.Col, first.GridRow, first.GridCol));
        Assert.Equal(0f, first.Top, 4);
        Assert.Equal(14 * 480f / 504, first.Bottom, 3);
        Assert.Equal(14 * 640f / 672, first.Right, 3);
        // The last is stitched row 41, column 47: tile (1, 1), patch (17, 23), the image's bottom-right corner.
        var last = map.Patches[^1];
        Assert.Equal((4, 17, 23, 35, 47), (last.View, last.Row, last.Col, last.GridRow, last.GridCol));
        Assert.Equal((640f, 480f), (last.Right, last.Bottom));

        // Each view brings its own [CLS] attention over its 576 patches (per head).
        Assert.Equal(5, map.Views.Count);
        foreach (var v in map.Views)
        {
            Assert.Equal(v.Heads * 576, v.ClsAttention!.Length);
            for (int h = 0; h < v.Heads; h++)
            {
                double sum = v.ClsAttention.AsSpan(h * 576, 576).ToArray().Sum(x => (double)x);
                Assert.InRange(sum, 0.0, 1.0 + 1e-5); // the rest of the row is [CLS] attending to itself
            }
        }
        Assert.NotEqual(map.Views[1].ClsAttention, map.Views[2].ClsAttention);

        // Tokens: a newline row is image_newline; a patch row is the projection of its view's feature row.
        Assert.Equal(newline, tokens.AsSpan((576 + 48) * 96, 96).ToArray());
        var f = map.Views[1];
        var expected = model.Project(f.Features.AsSpan((6 * 24 + 0) * f.Hidden, f.Hidden), 1);
        var got = tokens.AsSpan(576 * 96, 96).ToArray();
        for (int i = 0; i < 96; i++) Assert.Equal(expected[i], got[i], 5);
    }

    [Fact]
    public void A_portrait_image_loses_padded_columns_and_keeps_every_row()
    {
        var grid = new AnyResGrid(LlavaConfig.DefaultImageGridPinpoints().Select(p => (p[0], p[1])).ToArray(), 336, 14);
        var L = grid.Plan(300, 1000); // 1008x336 pinpoint: 3x1 tiles, 72x24 patches; 300 px wide fits as 302 of 336
        Assert.Equal((336, 1008, 3, 1), (L.CanvasWidth, L.CanvasHeight, L.TileRows, L.TileCols));
        Assert.Equal((0, 72), (L.FeatureRowStart, L.FeatureRows));
        Assert.Equal(576 + 72 * (L.FeatureCols + 1), L.TokenCount);
        Assert.Equal(2232, L.TokenCount);
        Assert.Equal(2928, grid.MaxTokenCount);
        Assert.Throws<ArgumentException>(() => new AnyResGrid([(336, 600)], 336, 14));
    }
}
