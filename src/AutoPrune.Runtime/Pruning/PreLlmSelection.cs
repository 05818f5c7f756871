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
    /// LLaVA-NeXT: each row's place in the image's full run of tokens (image_newline rows included; -1 for a merged row),
    /// and <see cref="FullRun"/> the full run's length. Null for LLaVA-1.5, whose places follow from the patch indices.
    /// </summary>
    public int[]? RunPlaces { get; init; }
    public int FullRun { get; init; }

    /// <summary>Original positions from <see cref="RunPlaces"/>: a merged row at the position of the row before it.</summary>
    public static void RestoreRunPositions(int[] positions, int prefix, int[] runPlaces, int fullRun)
    {
        for (int i = 0; i < runPlaces.Length; i++)
            positions[prefix + i] = runPlaces[i] >= 0 ? prefix + runPlaces[i] : i > 0 ? positions[prefix + i - 1] : Math.Max(0, prefix - 1);
        for (int j = prefix + runPlaces.Length; j < positions.Length; j++)
            positions[j] = prefix + fullRun + (j - prefix - runPlaces.Length);
    }

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
            positions[prefix + i] = v == Compute.SequenceState.ClsToken ? prefix
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
    public static PreLlmSelection FromRows(Compute.VisionFeatures vision, float[] rows, int[] keep, bool originalPositions)
    {
        int cls = vision.Tokens - vision.Patches, dim = rows.Length / vision.Tokens;
        var selected = new float[(cls + keep.Length) * dim];
        rows.AsSpan(0, cls * dim).CopyTo(selected);
        for (int i = 0; i < keep.Length; i++) rows.AsSpan((cls + keep[i]) * dim, dim).CopyTo(selected.AsSpan((cls + i) * dim, dim));
        int[] index = cls == 0 ? keep : [Compute.SequenceState.ClsToken, .. keep];
        return new PreLlmSelection(selected, index) { OriginalPositions = originalPositions };
    }
}

/// <summary>
/// A selection before the LLM as the prompt builder takes it: the projected rows (host or device), each row's patch when
/// the host knows it, and whether the rows keep their original RoPE positions.
/// </summary>
internal sealed record PreLlmRows(Models.Llava.ImageRows Rows, int[]? VisualIndex, bool OriginalPositions)
{
    /// <summary>LLaVA-NeXT: as <see cref="PreLlmSelection.RunPlaces"/>.</summary>
    public int[]? RunPlaces { get; init; }
    public int FullRun { get; init; }

    /// <summary>The prompt's positions when the rows keep their original ones (null: contiguous, the default).</summary>
    public int[]? Positions(int promptLength, int prefix, int tokensPerImage, int patchesPerImage)
    {
        // Patches known only on the device: the prompt builder computes the positions there (ImageRows.OriginalPositions).
        if (!OriginalPositions || VisualIndex is null) return null;
        var positions = new int[promptLength];
        for (int i = 0; i < prefix; i++) positions[i] = i;
        if (RunPlaces is not null)
        {
            PreLlmSelection.RestoreRunPositions(positions, prefix, RunPlaces, FullRun);
            return positions;
        }
        PreLlmSelection.RestoreOriginalPositions(positions, prefix, VisualIndex, tokensPerImage, patchesPerImage);
        return positions;
    }
}

/// <summary>
/// A LLaVA-NeXT image as a policy that chooses before the LLM sees it: its token map (views, patches' places, each view's
/// [CLS] attention and keys), its projected tokens in prompt order ([TokenCount, Hidden], image_newline rows included),
/// and each view's budget share under <see cref="BudgetScope.PerView"/> (null: the request's budget as a whole).
/// </summary>
internal sealed record AnyResImage(Models.Llava.AnyResTokenMap Map, float[] Tokens, int Hidden, double[]? ViewShares)
{
    public int Patches => Map.Patches.Count;

    /// <summary>The projected rows of the patches, by visual index: [Patches, Hidden].</summary>
    public float[] PatchRows()
    {
        var rows = new float[(long)Patches * Hidden];
        for (int t = 0; t < Map.Sequence.Count; t++)
            if (Map.Sequence[t] is int v and >= 0) Tokens.AsSpan(t * Hidden, Hidden).CopyTo(rows.AsSpan(v * Hidden, Hidden));
        return rows;
    }

    /// <summary>A per-patch array gathered from each patch's own view: <paramref name="select"/> gives a view's [Grid², width] array.</summary>
    public float[] Gather(Func<Compute.VisionFeatures, float[]?> select, int width, string what)
    {
        int g = Map.Layout.Grid;
        var result = new float[(long)Patches * width];
        for (int i = 0; i < Patches; i++)
        {
            var o = Map.Patches[i];
            var src = select(Map.Views[o.View]) ?? throw new NotSupportedException($"The method needs the vision tower's {what}, but this model's feature layer is the embedding layer.");
            src.AsSpan((o.Row * g + o.Col) * width, width).CopyTo(result.AsSpan(i * width, width));
        }
        return result;
    }

    /// <summary>[heads, Patches]: each patch's own view's [CLS] attention, per head.</summary>
    public float[] ClsAttention()
    {
        int g = Map.Layout.Grid, heads = Map.Views[0].Heads;
        var result = new float[heads * Patches];
        for (int i = 0; i < Patches; i++)
        {
            var o = Map.Patches[i];
            var view = Map.Views[o.View];
            var cls = view.ClsAttention ?? throw new NotSupportedException("The method needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");
            for (int h = 0; h < heads; h++) result[h * Patches + i] = cls[h * view.Patches + o.Row * g + o.Col];
        }
        return result;
    }

    /// <summary>
    /// <paramref name="k"/> patches (ascending) chosen by <paramref name="select"/> (candidate patches and a count in,
    /// positions into the candidates out): once over all patches, or per view with its quota under <see cref="BudgetScope.PerView"/>.
    /// </summary>
    public int[] SelectByScope(int k, Func<int[], int, int[]> select)
    {
        var all = Enumerable.Range(0, Patches).ToArray();
        if (ViewShares is null) return select(all, k);
        var groups = ViewQuotas.Groups(all, Map, ViewShares.Length);
        var quotas = ViewQuotas.ForGroups(k, groups, ViewShares);
        var result = new List<int>(k);
        for (int gi = 0; gi < groups.Length; gi++)
            if (quotas[gi] > 0)
                foreach (int pos in select(groups[gi], quotas[gi])) result.Add(groups[gi][pos]);
        result.Sort();
        return result.ToArray();
    }

    /// <summary>
    /// The image's run with only <paramref name="keep"/> (ascending patch indices) of its patches: the kept patches' rows
    /// and every image_newline row in prompt order, then <paramref name="merged"/> ([count, Hidden], e.g. VisionZip's
    /// contextual tokens) at the run's end.
    /// </summary>
    public PreLlmSelection Select(int[] keep, float[]? merged, bool originalPositions)
    {
        var kept = new bool[Patches];
        foreach (int v in keep) kept[v] = true;
        int mergedCount = merged is null ? 0 : merged.Length / Hidden;
        var places = new List<int>(keep.Length + Map.Layout.FeatureRows + mergedCount);
        for (int t = 0; t < Map.Sequence.Count; t++)
            if (Map.Sequence[t] < 0 || kept[Map.Sequence[t]]) places.Add(t);
        var rows = new float[(long)(places.Count + mergedCount) * Hidden];
        var index = new int[places.Count + mergedCount];
        for (int i = 0; i < places.Count; i++)
        {
            Tokens.AsSpan(places[i] * Hidden, Hidden).CopyTo(rows.AsSpan(i * Hidden, Hidden));
            index[i] = Map.Sequence[places[i]];
        }
        merged?.AsSpan(0, mergedCount * Hidden).CopyTo(rows.AsSpan(places.Count * Hidden));
        int keptRows = places.Count;
        for (int j = 0; j < mergedCount; j++) { index[keptRows + j] = Compute.SequenceState.MergedRow; places.Add(-1); }
        return new PreLlmSelection(rows, index) { OriginalPositions = originalPositions, RunPlaces = places.ToArray(), FullRun = Map.Sequence.Count };
    }
}
