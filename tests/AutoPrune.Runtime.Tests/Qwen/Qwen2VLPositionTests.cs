using AutoPrune.Compute;
using AutoPrune.Models.Qwen2VL;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>M-RoPE positions (get_rope_index), the PositionIds type, and the vision tower's window geometry.</summary>
public class Qwen2VLPositionTests
{
    private static readonly Qwen2VLRopeIndex.TokenIds Ids = new(Image: 568, Video: 569, VisionStart: 565);

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void Positions_rope_deltas_and_decode_positions_equal_the_reference(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var grids = c.GridThw is { } g ? new[] { (g[0], g[1], g[2]) } : [];
        var (pos, delta) = Qwen2VLRopeIndex.Compute(c.InputIds, grids, Ids, mergeSize: 2);
        Assert.Equal(3, pos.Components);
        Assert.Equal(c.InputIds.Length, pos.Count);
        for (int comp = 0; comp < 3; comp++) Assert.Equal(c.PositionIds[comp], pos.Component(comp).ToArray());
        Assert.Equal(c.RopeDeltas, delta);
        // Decode steps 1..5 feed the token at cache position L, L+1, ...
        var decode = Enumerable.Range(0, c.DecodePositionIds.Length).Select(s => Qwen2VLRopeIndex.DecodePosition(c.InputIds.Length + s, delta)).ToArray();
        Assert.Equal(c.DecodePositionIds, decode);
    }

    /// <summary>text, an image of 2x2 merged tokens, text, an image of 2x4, text (24 tokens).</summary>
    internal static (int[] Ids, (int, int, int)[] Grids) TwoImagePrompt()
    {
        var ids = new List<int> { 10, 11, 12, 565 };
        ids.AddRange(Enumerable.Repeat(568, 4));
        ids.AddRange([566, 20, 21, 565]);
        ids.AddRange(Enumerable.Repeat(568, 8));
        ids.AddRange([566, 30, 31, 32]);
        return (ids.ToArray(), [(1, 4, 4), (1, 4, 8)]);
    }

    [Fact]
    public void Two_images_text_continues_from_the_largest_position()
    {
        var (ids, grids) = TwoImagePrompt();
        var (pos, delta) = Qwen2VLRopeIndex.Compute(ids, grids, Ids, 2);
        int[][] expected =
        [
            [0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3],
            [4, 4, 4], [4, 4, 5], [4, 5, 4], [4, 5, 5],                  // image 1: origin 4, 2x2
            [6, 6, 6], [7, 7, 7], [8, 8, 8], [9, 9, 9],                  // vision_end continues at 4 + 2
            [10, 10, 10], [10, 10, 11], [10, 10, 12], [10, 10, 13],      // image 2: origin 10, 2x4
            [10, 11, 10], [10, 11, 11], [10, 11, 12], [10, 11, 13],
            [14, 14, 14], [15, 15, 15], [16, 16, 16], [17, 17, 17],      // continues at 10 + 4
        ];
        Assert.Equal(expected.Length, pos.Count);
        for (int t = 0; t < expected.Length; t++) Assert.Equal(expected[t], pos.At(t));
        Assert.Equal(18 - 24, delta);
    }

    [Fact]
    public void Mismatched_images_and_video_are_refused()
    {
        var (ids, grids) = TwoImagePrompt();
        Assert.Contains("2 image(s)", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute(ids, grids[..1], Ids, 2)).Message);
        Assert.Contains("gives 8 merged tokens, but the prompt has 4", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute(ids, [(1, 4, 8), (1, 4, 8)], Ids, 2)).Message);
        Assert.Contains("gives 4 merged tokens, but the prompt has 8", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute(ids, [(1, 4, 4), (1, 4, 4)], Ids, 2)).Message);
        Assert.Contains("video inputs are not supported yet", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute([1, 565, 569, 566], [], Ids, 2)).Message);
        Assert.Contains("no image grid", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute([1, 568], [], Ids, 2)).Message);
        Assert.Contains("multiples of the merge size", Assert.Throws<ArgumentException>(() => Qwen2VLRopeIndex.Compute([565, 568], [(1, 3, 2)], Ids, 2)).Message);
    }

    [Fact]
    public void PositionIds_keep_each_tokens_own_positions_when_gathered()
    {
        var (ids, grids) = TwoImagePrompt();
        var (pos, _) = Qwen2VLRopeIndex.Compute(ids, grids, Ids, 2);
        int[] kept = [0, 5, 7, 13, 19, 23];
        var g = pos.Gather(kept);
        Assert.Equal(kept.Length, g.Count);
        for (int i = 0; i < kept.Length; i++) Assert.Equal(pos.At(kept[i]), g.At(i));
        Assert.Equal(17, pos.Max());
        Assert.Equal(13, pos.Gather([19]).Max());
        Assert.Equal(pos.At(12), pos.Slice(12, 3).At(0));
        Assert.Equal(pos.Values.ToArray(), pos.Slice(0, 10).Append(pos.Slice(10, 14)).Values.ToArray());
        Assert.Equal(11, pos[1, 17]);
        // The token-major view and back.
        var tm = pos.ToTokenMajor();
        Assert.Equal(pos.At(17), tm[(17 * 3)..(18 * 3)]);
        Assert.Equal(pos.Values.ToArray(), PositionIds.FromTokenMajor(3, tm).Values.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => pos.Gather([24]));
        Assert.Throws<ArgumentOutOfRangeException>(() => pos[3, 0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => pos[0, 24]);
        Assert.Throws<ArgumentOutOfRangeException>(() => pos.Slice(20, 5));
        Assert.Throws<ArgumentException>(() => PositionIds.FromValues(3, 2, new int[4]));
        Assert.Throws<ArgumentException>(() => PositionIds.FromTokenMajor(3, new int[4]));
        // One component: the usual 1D positions (LLaVA).
        var seq = PositionIds.Sequential(5, 1, start: 7);
        Assert.Equal([7, 8, 9, 10, 11], seq.Component(0).ToArray());
        Assert.Equal(11, seq.Max());
        Assert.Equal(-1, PositionIds.Sequential(0).Max());
    }

    [Theory]
    [MemberData(nameof(QwenFixture.Images), MemberType = typeof(QwenFixture))]
    public void Window_partition_equals_the_reference(string image)
    {
        var c = QwenFixture.OnePerImage(QwenFixture.Current).Single(x => x.Image == image);
        var g = Qwen2VLVisionGeometry.Create([(c.GridThw![0], c.GridThw[1], c.GridThw[2])], mergeSize: 2, windowMergedTokens: 4);
        Assert.Equal(c.CuWindowSeqlens!, g.CuWindowSeqlens);
        Assert.Equal(c.NumWindows, g.Windows);
        int n = Math.Min(16, g.WindowIndex.Length);
        Assert.Equal(c.WindowIndexFirst16!, g.WindowIndex[..n]);
        Assert.Equal([0, c.PixelShape![0]], g.CuSeqlens);
        // A permutation, undone by ReverseIndex.
        Assert.Equal(Enumerable.Range(0, g.MergedTokens), g.WindowIndex.Order());
        for (int i = 0; i < g.MergedTokens; i++) Assert.Equal(i, g.ReverseIndex[g.WindowIndex[i]]);
    }

    [Fact]
    public void Rotary_positions_are_rows_and_columns_in_merge_order()
    {
        var g = Qwen2VLVisionGeometry.Create([(1, 4, 4)], 2, 4);
        Assert.Equal([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3], g.RotaryRows);
        Assert.Equal([0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3], g.RotaryCols);
        Assert.Equal(4, g.MaxGridSide);
    }

    [Fact]
    public void Several_images_are_laid_out_one_after_another()
    {
        // 336x336 (12x12 merged, 9 windows) then 50x60 (2x2 merged, 1 window).
        var g = Qwen2VLVisionGeometry.Create([(1, 24, 24), (1, 4, 4)], 2, 4);
        var a = Qwen2VLVisionGeometry.Create([(1, 24, 24)], 2, 4);
        Assert.Equal(a.CuWindowSeqlens.Append(576 + 16), g.CuWindowSeqlens);
        Assert.Equal(a.WindowIndex.Concat([144, 145, 146, 147]), g.WindowIndex);
        Assert.Equal([0, 576, 592], g.CuSeqlens);
        Assert.Equal(a.RotaryRows.Concat([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]), g.RotaryRows);
        // Two frames of one image are two full-attention segments.
        Assert.Equal([0, 16, 32], Qwen2VLVisionGeometry.Create([(2, 4, 4)], 2, 4).CuSeqlens);
    }
}
