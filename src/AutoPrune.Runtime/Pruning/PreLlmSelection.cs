namespace AutoPrune.Pruning;

/// <summary>
/// What of one image enters the LLM when a policy selects before it: <see cref="Projected"/> is [rows, hidden] in the
/// decoder's space, <see cref="VisualIndex"/> the original patch of each row (-2 for a merged token).
/// </summary>
internal sealed record PreLlmSelection(float[] Projected, int[] VisualIndex)
{
    public int Count => VisualIndex.Length;

    /// <summary>Whether the rows keep their original RoPE positions (gaps) instead of the shortened prompt's contiguous ones.</summary>
    public bool OriginalPositions { get; init; }

    /// <summary>
    /// Original positions for a prompt whose single image run was shortened to this selection: the prefix as it is, a
    /// [CLS] row ("full" strategy) where the image run starts, each kept patch at prefix + its place in the full run, a
    /// merged row at the position before it, and the text after at prefix + the full run's length + j.
    /// </summary>
    public static void RestoreOriginalPositions(int[] positions, int prefix, int[] visualIndex, int tokensPerImage, int patchesPerImage)
    {
        int clsRows = tokensPerImage - patchesPerImage; // 1 with the "full" strategy's [CLS] row, else 0
        for (int i = 0; i < visualIndex.Length; i++)
        {
            int v = visualIndex[i];
            positions[prefix + i] = v == Models.Llava.SequenceState.ClsToken ? prefix
                : v >= 0 ? prefix + clsRows + v % patchesPerImage
                : i > 0 ? positions[prefix + i - 1] : Math.Max(0, prefix - 1);
        }
        for (int j = prefix + visualIndex.Length; j < positions.Length; j++)
            positions[j] = prefix + tokensPerImage + (j - prefix - visualIndex.Length);
    }

    /// <summary>
    /// A selection of <paramref name="keep"/> of an image's patches (ascending), with the [CLS] row of the "full"
    /// strategy always kept first; <paramref name="rows"/> are the decoder rows of the whole image ([Tokens, dim]).
    /// </summary>
    public static PreLlmSelection FromRows(Models.Llava.VisionFeatures vision, float[] rows, int[] keep, bool originalPositions)
    {
        int cls = vision.Tokens - vision.Patches, dim = rows.Length / vision.Tokens;
        var selected = new float[(cls + keep.Length) * dim];
        rows.AsSpan(0, cls * dim).CopyTo(selected);
        for (int i = 0; i < keep.Length; i++) rows.AsSpan((cls + keep[i]) * dim, dim).CopyTo(selected.AsSpan((cls + i) * dim, dim));
        int[] index = cls == 0 ? keep : [Models.Llava.SequenceState.ClsToken, .. keep];
        return new PreLlmSelection(selected, index) { OriginalPositions = originalPositions };
    }
}

/// <summary>
/// A selection before the LLM as the prompt builder takes it: the projected rows (host or device), each row's patch when
/// the host knows it, and whether the rows keep their original RoPE positions.
/// </summary>
internal sealed record PreLlmRows(Models.Llava.ImageRows Rows, int[]? VisualIndex, bool OriginalPositions)
{
    /// <summary>The prompt's positions when the rows keep their original ones (null: contiguous, the default).</summary>
    public int[]? Positions(int promptLength, int prefix, int tokensPerImage, int patchesPerImage)
    {
        // Patches known only on the device: the prompt builder computes the positions there (ImageRows.OriginalPositions).
        if (!OriginalPositions || VisualIndex is null) return null;
        var positions = new int[promptLength];
        for (int i = 0; i < prefix; i++) positions[i] = i;
        PreLlmSelection.RestoreOriginalPositions(positions, prefix, VisualIndex, tokensPerImage, patchesPerImage);
        return positions;
    }
}
