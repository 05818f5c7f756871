namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// The layout the Qwen2.5-VL vision tower works in, for a batch of images (transformers' <c>rot_pos_emb</c> and
/// <c>get_window_index</c>):
/// <list type="bullet">
/// <item><see cref="RotaryRows"/>, <see cref="RotaryCols"/>: each patch's (row, column) in its image, in the processor's
/// merge order (the m² patches of a merged token consecutive): the 2D rotary positions.</item>
/// <item><see cref="WindowIndex"/>: the merged tokens reordered window by window (windows of
/// <c>window_size / merge / patch</c>² merged tokens, row-major over the image, each window's tokens row-major; windows
/// at the right and bottom edges are cut short), image after image; <see cref="ReverseIndex"/> undoes it.</item>
/// <item><see cref="CuWindowSeqlens"/>: patch offsets of the windows in that order, with empty windows dropped (the
/// reference's <c>unique_consecutive</c>); windowed blocks attend within each window.</item>
/// <item><see cref="CuSeqlens"/>: patch offsets of each frame of each image; full-attention blocks attend within each.</item>
/// </list>
/// </summary>
internal sealed class Qwen2VLVisionGeometry
{
    private Qwen2VLVisionGeometry() { }

    public required int MergeSize { get; init; }

    /// <summary>Patches of all images.</summary>
    public required int Patches { get; init; }

    /// <summary>Merged tokens of all images (Patches / merge²).</summary>
    public int MergedTokens => Patches / (MergeSize * MergeSize);

    public required int[] RotaryRows { get; init; }
    public required int[] RotaryCols { get; init; }
    public required int[] WindowIndex { get; init; }
    public required int[] ReverseIndex { get; init; }
    public required int[] CuWindowSeqlens { get; init; }
    public required int[] CuSeqlens { get; init; }

    /// <summary>Windows with at least one token (CuWindowSeqlens.Length − 1).</summary>
    public int Windows => CuWindowSeqlens.Length - 1;

    /// <summary>The largest side of any grid, in patches: rotary frequencies are needed for positions 0 .. this − 1.</summary>
    public required int MaxGridSide { get; init; }

    /// <param name="grids">Each image's (t, h, w) in patches.</param>
    /// <param name="windowMergedTokens">Window side in merged tokens: window_size / merge / patch (4 for 112 px, patch 14, merge 2).</param>
    public static Qwen2VLVisionGeometry Create(IReadOnlyList<(int T, int H, int W)> grids, int mergeSize, int windowMergedTokens)
    {
        ArgumentNullException.ThrowIfNull(grids);
        ArgumentOutOfRangeException.ThrowIfLessThan(mergeSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(windowMergedTokens, 1);
        int m = mergeSize, unit = m * m, ws = windowMergedTokens;
        long total = 0;
        int maxSide = 0;
        foreach (var (t, h, w) in grids)
        {
            if (t < 1 || h < 1 || w < 1 || h % m != 0 || w % m != 0)
                throw new ArgumentException($"Grid ({t}, {h}, {w}) is not a positive grid whose sides are multiples of the merge size {m}.", nameof(grids));
            total += (long)t * h * w;
            maxSide = Math.Max(maxSide, Math.Max(h, w));
        }
        if (total > Array.MaxLength / 4) throw new ArgumentException($"The images have {total:N0} patches, more than the vision tower can take at once.", nameof(grids));
        int patches = (int)total;

        var rows = new int[patches];
        var cols = new int[patches];
        var window = new List<int>(patches / unit);
        var cuWindow = new List<int> { 0 };
        var cu = new List<int> { 0 };
        int p = 0, tokenBase = 0;
        foreach (var (t, h, w) in grids)
        {
            int lh = h / m, lw = w / m;
            for (int ti = 0; ti < t; ti++)
            {
                for (int bh = 0; bh < lh; bh++)
                    for (int bw = 0; bw < lw; bw++)
                        for (int mh = 0; mh < m; mh++)
                            for (int mw = 0; mw < m; mw++, p++)
                            {
                                rows[p] = bh * m + mh;
                                cols[p] = bw * m + mw;
                            }
                cu.Add(cu[^1] + h * w);
            }
            // The reference pads the grid to whole windows (always adding at least one more row and column of windows
            // when a side is a multiple of the window) and counts each window's real tokens; empty ones vanish below.
            int padH = ws - lh % ws, padW = ws - lw % ws;
            int winH = (lh + padH) / ws, winW = (lw + padW) / ws;
            for (int ti = 0; ti < t; ti++)
                for (int wy = 0; wy < winH; wy++)
                    for (int wx = 0; wx < winW; wx++)
                    {
                        int count = 0;
                        for (int y = wy * ws; y < Math.Min(lh, (wy + 1) * ws); y++)
                            for (int x = wx * ws; x < Math.Min(lw, (wx + 1) * ws); x++, count++)
                                window.Add(tokenBase + (ti * lh + y) * lw + x);
                        int end = cuWindow[^1] + count * unit;
                        if (end != cuWindow[^1]) cuWindow.Add(end);
                    }
            tokenBase += t * lh * lw;
        }
        var windowIndex = window.ToArray();
        var reverse = new int[windowIndex.Length];
        for (int i = 0; i < windowIndex.Length; i++) reverse[windowIndex[i]] = i;
        return new Qwen2VLVisionGeometry
        {
            MergeSize = m, Patches = patches, RotaryRows = rows, RotaryCols = cols, WindowIndex = windowIndex, ReverseIndex = reverse,
            CuWindowSeqlens = cuWindow.ToArray(), CuSeqlens = cu.ToArray(), MaxGridSide = maxSide,
        };
    }

    /// <summary>
    /// Patch rows in window order: patch j of merged token <c>WindowIndex[i]</c> is row <c>i·merge² + j</c>, so
    /// <c>reordered[i·u + j] = original[WindowIndex[i]·u + j]</c>.
    /// </summary>
    public int[] PatchOrder()
    {
        int u = MergeSize * MergeSize;
        var order = new int[Patches];
        for (int i = 0; i < WindowIndex.Length; i++)
            for (int j = 0; j < u; j++) order[i * u + j] = WindowIndex[i] * u + j;
        return order;
    }
}
