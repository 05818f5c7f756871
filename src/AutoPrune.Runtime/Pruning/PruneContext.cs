using AutoPrune.Compute;
using System.Numerics.Tensors;

namespace AutoPrune.Pruning;

/// <summary>
/// Where the visual and text rows are in the current sequence, and how to rebuild it. The image's run starts at
/// <see cref="Prefix"/>: its visual rows (patches, merged tokens, a [CLS] token) and, for a LLaVA-NeXT image, its
/// image_newline rows (<see cref="Newlines"/>), which are never pruned and are not visual tokens; the text follows.
/// </summary>
internal sealed class PruneContext
{
    public required SequenceState State { get; init; }
    public required int Prefix { get; init; }
    /// <summary>Visual rows in the image's run (kept patches and merged tokens; image_newline rows not counted).</summary>
    public required int VisualCount { get; init; }
    public required ModelShape Shape { get; init; }
    public required PruningOptions Options { get; init; }

    /// <summary>
    /// The image's visual tokens (null for a request without one): where each came from (view, cell, place in the original
    /// image) and the image's run (separator rows, [CLS]). Rows of the sequence name their token through
    /// <see cref="SequenceState.VisualIndex"/>.
    /// </summary>
    public VisualTokenMap? TokenMap { get; init; }

    /// <summary>image_newline rows inside the image's run (LLaVA-NeXT; 0 otherwise): kept in place by every prune.</summary>
    public int Newlines { get; init; }

    /// <summary>
    /// Each view's share of the budget under <see cref="BudgetScope.PerView"/> (<see cref="Budget.ViewBudgets"/>); null when
    /// the budget is the request's as a whole. Every selection then gives each view its share of the kept tokens.
    /// </summary>
    public double[]? ViewShares { get; init; }

    /// <summary>Rows of the image's run: the visual rows and the image_newline rows.</summary>
    public int RunLength => VisualCount + Newlines;
    public int TextCount => State.Length - Prefix - RunLength;

    private int[]? _visualRows;

    /// <summary>The visual rows (absolute), in order: the run without its image_newline rows.</summary>
    public int[] VisualRows => _visualRows ??= Newlines == 0 ? Enumerable.Range(Prefix, VisualCount).ToArray() : RunVisualRows();
    public int[] TextRows => Enumerable.Range(Prefix + RunLength, TextCount).ToArray();
    public int LastRow => State.Length - 1;

    private int[] RunVisualRows()
    {
        var vis = State.VisualIndex;
        var rows = new int[VisualCount];
        int o = 0;
        for (int r = Prefix; r < Prefix + RunLength; r++)
            if (vis[r] != SequenceState.NewlineRow) rows[o++] = r;
        if (o != VisualCount) throw new InvalidOperationException($"The image's run has {o} visual rows, expected {VisualCount}.");
        return rows;
    }

    /// <summary>The visual rows' hidden states [VisualCount, Hidden] (a copy when image_newline rows sit between them).</summary>
    public ReadOnlySpan<float> VisualHidden()
    {
        int d = Shape.HiddenSize;
        if (Newlines == 0) return State.Hidden.AsSpan(Prefix * d, VisualCount * d);
        var rows = VisualRows;
        var hidden = State.Hidden;
        var result = new float[rows.Length * d];
        for (int i = 0; i < rows.Length; i++) hidden.AsSpan(rows[i] * d, d).CopyTo(result.AsSpan(i * d, d));
        return result;
    }

    /// <summary>The i-th visual row's patch (within its image: for LLaVA-NeXT an index into the token map's patches), or -1 for a merged or [CLS] token.</summary>
    public int Patch(int i)
    {
        int v = State.VisualIndex[VisualRows[i]];
        if (v < 0) return -1;
        return TokenMap is null or { SquareGrid: not null } ? v % (Shape.GridSize * Shape.GridSize) : v;
    }

    /// <summary>New rows: the prefix, the kept visual rows (in order, image_newline rows kept in place), merged tokens, then the text.</summary>
    public PruneAction Build(int[] keepLocal, float[]? merged, bool renumber)
    {
        renumber = Options.Positions switch { PrunedPositions.Original => false, PrunedPositions.Contiguous => true, _ => renumber };
        int mergedCount = merged is null ? 0 : merged.Length / Shape.HiddenSize;
        var rows = new int[Prefix + keepLocal.Length + Newlines + mergedCount + TextCount];
        int o = 0;
        for (int i = 0; i < Prefix; i++) rows[o++] = i;
        if (Newlines == 0)
            foreach (int k in keepLocal) rows[o++] = Prefix + k;
        else
        {
            var kept = new bool[VisualCount];
            foreach (int k in keepLocal) kept[k] = true;
            var vis = State.VisualIndex;
            for (int r = Prefix, local = 0; r < Prefix + RunLength; r++)
            {
                if (vis[r] == SequenceState.NewlineRow) rows[o++] = r;
                else if (kept[local++]) rows[o++] = r;
            }
        }
        for (int j = 0; j < mergedCount; j++) rows[o++] = -j - 1;
        for (int i = 0; i < TextCount; i++) rows[o++] = Prefix + RunLength + i;
        return new PruneAction(rows, merged, renumber);
    }

    /// <summary>The top <paramref name="k"/> visual rows by score (local, ascending), per view under <see cref="BudgetScope.PerView"/>.</summary>
    public int[] TopKByScope(float[] scores, int k)
        => ViewShares is null ? TopK.SelectInOrder(scores, k) : SelectByScope(k, (candidates, q) => TopK.SelectInOrder(candidates.Select(c => scores[c]).ToArray(), q));

    /// <summary>
    /// <paramref name="k"/> visual rows (local, ascending) chosen by <paramref name="select"/>, which gets candidate local
    /// rows and a count and returns positions into the candidates. Without per-view shares it is called once on every
    /// visual row; under <see cref="BudgetScope.PerView"/> once per view with that view's quota
    /// (<see cref="ViewQuotas.Apportion"/>), and once on the merged tokens, which keep their proportional share.
    /// </summary>
    public int[] SelectByScope(int k, Func<int[], int, int[]> select)
    {
        var all = Enumerable.Range(0, VisualCount).ToArray();
        if (ViewShares is null || TokenMap is null) return select(all, k);
        var groups = ViewQuotas.Groups(all.Select(Patch).ToArray(), TokenMap, ViewShares.Length);
        var quotas = ViewQuotas.ForGroups(k, groups, ViewShares);
        var result = new List<int>(k);
        for (int gi = 0; gi < groups.Length; gi++)
        {
            if (quotas[gi] == 0) continue;
            foreach (int pos in select(groups[gi], quotas[gi])) result.Add(groups[gi][pos]);
        }
        if (result.Count != Math.Min(k, VisualCount)) throw new InvalidOperationException($"The per-view selection kept {result.Count} tokens where {k} were asked for.");
        result.Sort();
        return result.ToArray();
    }

    /// <summary>Keeps the top <c>step.Kept</c> visual tokens by score and recycles the dropped ones into <c>step.Recycled</c> merged tokens.</summary>
    public PruneAction KeepAndRecycle(float[] scores, PruneStep step) => KeepAndRecycle(TopKByScope(scores, step.Kept), scores, step, renumber: true);

    /// <summary>Keeps the visual tokens <paramref name="keep"/> (local, ascending) and recycles the dropped ones, ranked by <paramref name="scores"/>, into <c>step.Recycled</c> merged tokens.</summary>
    public PruneAction KeepAndRecycle(int[] keep, float[] scores, PruneStep step, bool renumber)
    {
        int d = Shape.HiddenSize;
        var kept = new bool[VisualCount];
        foreach (int i in keep) kept[i] = true;
        var dropped = Enumerable.Range(0, VisualCount).Where(i => !kept[i]).ToArray();
        float[]? merged = null;
        if (step.Recycled > 0 && dropped.Length > 0)
        {
            var r = TokenRecycler.Merge(VisualHidden(), d, scores, dropped, Options);
            if (r.Groups != step.Recycled)
                throw new InvalidOperationException($"Recycling produced {r.Groups} merged tokens where the schedule expected {step.Recycled}.");
            merged = r.Merged;
        }
        return Build(keep, merged, renumber);
    }

    /// <summary>Local indices (into the visual rows) of the [CLS] tokens ("full" strategy) and of the other visual tokens.</summary>
    public (int[] Cls, int[] Others) SplitCls()
    {
        var vis = State.VisualIndex;
        var visualRows = VisualRows;
        var rows = Enumerable.Range(0, VisualCount);
        return (rows.Where(i => vis[visualRows[i]] == SequenceState.ClsToken).ToArray(), rows.Where(i => vis[visualRows[i]] != SequenceState.ClsToken).ToArray());
    }

    /// <summary>Head-averaged attention of the last prompt token over the visual tokens at this layer.</summary>
    public float[] LastTokenVisualAttention(LayerView view)
        => AttentionScores.MeanOverHeadsAndRows(view.AttentionRows([LastRow]), view.Heads, 1, State.Length, VisualRows);
}
