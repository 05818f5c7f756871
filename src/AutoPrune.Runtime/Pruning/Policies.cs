using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>
/// One pruning method. The decoder calls <see cref="AfterLayer"/> between layers with a view from which
/// the policy pulls just the signals it needs; <see cref="PruningSession"/> does the bookkeeping
/// (what each layer processed, the report) for every policy alike.
/// </summary>
internal interface IPruningPolicy
{
    PruningMethod Method { get; }

    /// <summary>The solved per-layer schedule; AutoPrune's is known only after layer 1.</summary>
    LayerSchedule? Schedule { get; }

    /// <summary>False for policies that never change the sequence inside the decoder (None, VisionZip).</summary>
    bool RunsInDecoder { get; }

    /// <summary>Receives the vision tower's output before the LLM runs.</summary>
    void OnVision(VisionFeatures vision) { }

    /// <summary>
    /// Chooses what of one image enters the LLM (VisionZip, DivPrune): the projected rows and their original patch
    /// indices. Null (the default) lets every visual token in, projected as it is.
    /// </summary>
    /// <param name="project">The model's projector: vision features [rows, visionHidden] to decoder rows.</param>
    PreLlmSelection? SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project) => null;

    /// <summary>Receives a LLaVA-NeXT image's token map (views, places, each view's [CLS] attention) before the LLM runs.</summary>
    void OnAnyRes(AnyResTokenMap map) { }

    /// <summary>
    /// Chooses what of a LLaVA-NeXT image enters the LLM (VisionZip, DivPrune, AutoPrune's first stage): the kept
    /// patches' rows with every image_newline row in place, and merged rows at the run's end. Null lets every token in.
    /// </summary>
    PreLlmSelection? SelectBeforeLlm(AnyResImage image, Func<float[], int, float[]> project) => null;

    /// <summary>Called after decoder layer <c>view.Layer</c>; returns the new sequence or null to keep it.</summary>
    PruneAction? AfterLayer(LayerView view, PruneContext ctx);

    /// <summary>Signals measured while running (e.g. AutoPrune's MI0), merged into the report.</summary>
    IReadOnlyDictionary<string, double> RuntimeSignals { get; }
}

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
    /// LLaVA-NeXT only (null otherwise): where each visual patch of the image came from (view, row, column, area in
    /// the original image), which of the image's rows are image_newline tokens, and each view's [CLS] attention.
    /// Rows of the sequence name their patch through <see cref="SequenceState.VisualIndex"/>.
    /// </summary>
    public AnyResTokenMap? TokenMap { get; init; }

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
        return TokenMap is null ? v % (Shape.GridSize * Shape.GridSize) : v;
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

/// <summary>How a selection of k tokens is shared among a LLaVA-NeXT image's views under <see cref="BudgetScope.PerView"/>.</summary>
internal static class ViewQuotas
{
    /// <summary>
    /// Candidates by group: one group per view (by their patches' views), then one for tokens without a patch (merged).
    /// <paramref name="patches"/> gives each candidate's patch (negative: none).
    /// </summary>
    public static int[][] Groups(int[] patches, AnyResTokenMap map, int views)
    {
        var lists = Enumerable.Range(0, views + 1).Select(_ => new List<int>()).ToArray();
        for (int i = 0; i < patches.Length; i++) lists[patches[i] >= 0 ? map.Patches[patches[i]].View : views].Add(i);
        return lists.Select(l => l.ToArray()).ToArray();
    }

    /// <summary>
    /// Quotas summing to k (at most the candidates): the last group (merged tokens) keeps its proportional share of the
    /// candidates, rounded; the views share the rest by <paramref name="shares"/>, never more than a view has.
    /// </summary>
    public static int[] ForGroups(int k, int[][] groups, double[] shares)
    {
        int total = groups.Sum(g => g.Length);
        k = Math.Clamp(k, 0, total);
        int merged = groups[^1].Length;
        int mergedQuota = merged == 0 ? 0 : Math.Clamp((int)Math.Round((double)k * merged / total, MidpointRounding.AwayFromZero), 0, merged);
        int viewTotal = groups.Length - 1;
        // The views must be able to take the rest.
        int viewCapacity = total - merged;
        if (k - mergedQuota > viewCapacity) mergedQuota = k - viewCapacity;
        var caps = groups.Take(viewTotal).Select(g => g.Length).ToArray();
        var quotas = Apportion(k - mergedQuota, shares, caps);
        return [.. quotas, mergedQuota];
    }

    /// <summary>
    /// Splits <paramref name="total"/> among groups in proportion to <paramref name="weights"/>, no group above its cap:
    /// groups whose share reaches their cap get the cap and the rest is shared again; then floors, and the remaining units
    /// to the largest fractions (ties to the lower group). The sum is exactly min(total, Σ caps).
    /// </summary>
    public static int[] Apportion(int total, IReadOnlyList<double> weights, IReadOnlyList<int> caps)
    {
        int n = caps.Count;
        if (weights.Count != n) throw new ArgumentException($"{weights.Count} weights for {n} groups.", nameof(weights));
        total = Math.Clamp(total, 0, caps.Sum());
        var q = new int[n];
        var done = new bool[n];
        for (int i = 0; i < n; i++) if (caps[i] <= 0) done[i] = true;
        while (true)
        {
            int rest = total - q.Sum();
            double w = 0;
            for (int i = 0; i < n; i++) if (!done[i]) w += Math.Max(0, weights[i]);
            if (rest <= 0) return q;
            bool changed = false;
            for (int i = 0; i < n; i++)
            {
                if (done[i]) continue;
                double ideal = w > 0 ? rest * Math.Max(0, weights[i]) / w : (double)rest / n;
                if (ideal >= caps[i]) { q[i] = caps[i]; done[i] = true; changed = true; }
            }
            if (changed) continue;
            var frac = new double[n];
            int given = 0;
            for (int i = 0; i < n; i++)
            {
                if (done[i]) continue;
                double ideal = w > 0 ? rest * Math.Max(0, weights[i]) / w : 0;
                q[i] = (int)Math.Floor(ideal);
                frac[i] = ideal - q[i];
                given += q[i];
            }
            int left = rest - given;
            var order = Enumerable.Range(0, n).Where(i => !done[i]).OrderByDescending(i => frac[i]).ThenBy(i => i).ToList();
            foreach (int i in order)
            {
                if (left == 0) break;
                if (q[i] < caps[i]) { q[i]++; left--; }
            }
            // Groups without weight take what no weighted group could (all at their caps).
            for (int i = 0; i < n && left > 0; i++)
            {
                int add = Math.Min(left, caps[i] - q[i]);
                q[i] += add; left -= add;
            }
            return q;
        }
    }
}

/// <summary>Shared shape of the policies whose schedule does not depend on the sample.</summary>
internal abstract class ScheduledPolicy(ModelShape shape, PruningOptions options) : IPruningPolicy
{
    public LayerSchedule? Schedule { get; protected set; } = ScheduleSolver.Solve(shape, options);
    public PruningMethod Method => options.Method;
    public virtual bool RunsInDecoder => true;
    public virtual PreLlmSelection? SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project) => null;
    public virtual PreLlmSelection? SelectBeforeLlm(AnyResImage image, Func<float[], int, float[]> project) => null;
    public virtual IReadOnlyDictionary<string, double> RuntimeSignals { get; } = new Dictionary<string, double>();
    internal PruningOptions Options => options;

    protected PruneStep? StepAt(int layer)
    {
        foreach (var s in Schedule!.Steps)
            if (s.AfterLayer == layer) return s;
        return null;
    }

    public PruneAction? AfterLayer(LayerView view, PruneContext ctx)
        => StepAt(view.Layer) is PruneStep step ? Prune(view, ctx, step) : null;

    protected abstract PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step);
}

/// <summary>The full model.</summary>
internal sealed class NoPruningPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;
}

/// <summary>FastV: one prune at layer K by the last prompt token's attention; original positions kept.</summary>
internal sealed class FastVPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
        => ctx.Build(ctx.TopKByScope(ctx.LastTokenVisualAttention(view), step.Kept), null, renumber: false);
}

/// <summary>AdaptPrune: attention × Gaussian prior, greedy soft NMS over grid distance and key similarity; original positions kept.</summary>
internal sealed class AdaptPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var attention = ctx.LastTokenVisualAttention(view);
        // Layer K's key projection (no RoPE) of the hidden states entering layer K, L2-normalised.
        var (_, keys) = view.NextLayerQueryKeys(rope: false);
        int kd = view.KvHeads * view.HeadDim, v = ctx.VisualCount;
        var features = new float[v * kd];
        var rows = ctx.VisualRows;
        for (int i = 0; i < v; i++)
        {
            var src = keys.AsSpan(rows[i] * kd, kd);
            float norm = MathF.Sqrt(TensorPrimitives.SumOfSquares<float>(src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, features.AsSpan(i * kd, kd));
        }
        if (ctx.TokenMap is { } map) return ctx.Build(SelectAnyRes(ctx, map, attention, features, kd, step.Kept), null, renumber: false);
        // The grid prior and the spatial NMS need a patch per token: a [CLS] token ("full") has none and is kept.
        var (cls, patches) = ctx.SplitCls();
        if (cls.Length == 0)
            return ctx.Build(AdaptiveNms.Select(attention, features, ctx.Shape.GridSize, step.Kept, Options), null, renumber: false);
        var patchAttention = patches.Select(i => attention[i]).ToArray();
        var patchFeatures = new float[patches.Length * kd];
        for (int j = 0; j < patches.Length; j++) features.AsSpan(patches[j] * kd, kd).CopyTo(patchFeatures.AsSpan(j * kd, kd));
        var chosen = AdaptiveNms.Select(patchAttention, patchFeatures, ctx.Shape.GridSize, step.Kept - cls.Length, Options);
        return ctx.Build([.. cls.Concat(chosen.Select(j => patches[j])).Order()], null, renumber: false);
    }

    /// <summary>
    /// A LLaVA-NeXT image: the prior and the NMS on each token's place in the original image (base view and tiles
    /// together, or each view with its quota under <see cref="BudgetScope.PerView"/>).
    /// </summary>
    private int[] SelectAnyRes(PruneContext ctx, AnyResTokenMap map, float[] attention, float[] unitKeys, int kd, int k)
    {
        var patches = Enumerable.Range(0, ctx.VisualCount).Select(ctx.Patch).ToArray();
        var prior = map.Geometry.PositionalPrior(patches, Options.AdaptPruneSigmaPFactor);
        var s = new float[attention.Length];
        for (int i = 0; i < s.Length; i++) s[i] = attention[i] * prior[i];
        return ctx.SelectByScope(k, (candidates, q) =>
        {
            var feats = new float[candidates.Length * kd];
            for (int j = 0; j < candidates.Length; j++) unitKeys.AsSpan(candidates[j] * kd, kd).CopyTo(feats.AsSpan(j * kd, kd));
            return CoverageNms.Select(candidates.Select(c => s[c]).ToArray(), feats, kd, candidates.Select(c => patches[c]).ToArray(), map.Geometry, q, strength: 1,
                Options.AdaptPruneDistanceLimit, Options.AdaptPruneDistanceSigma, Options.AdaptPruneSimilaritySigma);
        });
    }
}

/// <summary>PDrop: at each stage end, score with the next layer's query of the last instruction token; positions renumbered.</summary>
internal sealed class PDropPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var (q, k) = view.NextLayerQueryKeys(rope: true);
        int n = ctx.State.Length;
        var attn = Compute.Cpu.Attention.Rows(q, k, n, n, view.Heads, view.KvHeads, view.HeadDim, [ctx.LastRow], causal: true);
        var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, 1, n, ctx.VisualRows);
        return ctx.Build(ctx.TopKByScope(scores, step.Kept), null, renumber: true);
    }
}

/// <summary>SparseVLM: text raters (relevance above the mean) score the visual tokens; dropped ones are recycled.</summary>
internal sealed class SparseVlmPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public override IReadOnlyDictionary<string, double> RuntimeSignals => _signals;

    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        int d = ctx.Shape.HiddenSize;
        var text = ctx.TextRows;
        var raters = AttentionScores.SparseVlmRaters(ctx.VisualHidden(), ctx.State.Hidden.AsSpan(text[0] * d, text.Length * d), d);
        if (raters.Length == 0) raters = Enumerable.Range(0, text.Length).ToArray();
        var raterRows = raters.Select(r => text[r]).ToArray();
        var scores = AttentionScores.MeanOverHeadsAndRows(view.AttentionRows(raterRows), view.Heads, raterRows.Length, ctx.State.Length, ctx.VisualRows);
        _signals[$"raters_layer{view.Layer}"] = raters.Length;
        return ctx.KeepAndRecycle(scores, step);
    }
}

/// <summary>VisionZip: dominant + contextual tokens chosen in the vision tower; the decoder runs unchanged on them.</summary>
internal sealed class VisionZipPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    public override PreLlmSelection SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project)
    {
        var zip = Select(vision);
        return new PreLlmSelection(project(zip.Hidden, zip.Count), [.. zip.Dominant, .. Enumerable.Repeat(-2, zip.ContextualTargets.Length)])
        {
            OriginalPositions = Options.Positions == PrunedPositions.Original,
        };
    }

    /// <summary>
    /// A LLaVA-NeXT image: each patch scored by its own view's [CLS] attention, keys compared across views (base view and
    /// tiles together), contextual tokens merged in the vision tower's space and projected; under
    /// <see cref="BudgetScope.PerView"/> each view picks its own dominant and contextual tokens from its share.
    /// </summary>
    public override PreLlmSelection SelectBeforeLlm(AnyResImage image, Func<float[], int, float[]> project)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        var first = image.Map.Views[0];
        int heads = first.Heads, vh = first.Hidden;
        var cls = image.ClsAttention();
        var keys = image.Gather(v => v.PatchKeys, vh, "attention at the feature layer");
        var features = image.Gather(v => v.Features, vh, "features");
        int n = image.Patches;
        var groups = image.ViewShares is null ? [Enumerable.Range(0, n).ToArray()] : ViewQuotas.Groups(Enumerable.Range(0, n).ToArray(), image.Map, image.ViewShares.Length)[..^1];
        // Request scope: the schedule's D + C over all patches; per view: each view's share of D + C, split the same way.
        var budgets = image.ViewShares is null ? [step.Kept + step.Recycled]
            : ViewQuotas.Apportion(step.Kept + step.Recycled, image.ViewShares, groups.Select(g => g.Length).ToArray());
        var dominant = new List<int>();
        var contextual = new List<float>();
        int dominantCount = 0, contextualCount = 0;
        for (int gi = 0; gi < groups.Length; gi++)
        {
            var group = groups[gi];
            if (budgets[gi] == 0 || group.Length == 0) continue;
            var (d, c) = image.ViewShares is null ? (step.Kept, step.Recycled) : VisionZipSchedule.Split(budgets[gi], Options);
            var gcls = new float[heads * group.Length];
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < group.Length; j++) gcls[h * group.Length + j] = cls[h * n + group[j]];
            var gkeys = new float[group.Length * vh];
            var gfeat = new float[group.Length * vh];
            for (int j = 0; j < group.Length; j++)
            {
                keys.AsSpan(group[j] * vh, vh).CopyTo(gkeys.AsSpan(j * vh, vh));
                features.AsSpan(group[j] * vh, vh).CopyTo(gfeat.AsSpan(j * vh, vh));
            }
            var zip = VisionZipSelector.Select(gcls, heads, gkeys, gfeat, vh, d, c);
            dominant.AddRange(zip.Dominant.Select(j => group[j]));
            contextual.AddRange(zip.Hidden.AsSpan(zip.Dominant.Length * vh, zip.ContextualTargets.Length * vh).ToArray());
            dominantCount += zip.Dominant.Length;
            contextualCount += zip.ContextualTargets.Length;
        }
        _signals["dominant"] = dominantCount;
        _signals["contextual"] = contextualCount;
        dominant.Sort();
        var merged = contextualCount == 0 ? null : project([.. contextual], contextualCount);
        return image.Select([.. dominant], merged, Options.Positions == PrunedPositions.Original);
    }

    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public override IReadOnlyDictionary<string, double> RuntimeSignals => _signals;

    public VisionZipSelection Select(VisionFeatures vision)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        if (vision.ClsAttention is null || vision.PatchKeys is null)
            throw new NotSupportedException("VisionZip needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");
        if (vision.Tokens == vision.Patches)
            return VisionZipSelector.Select(vision.ClsAttention, vision.Heads, vision.PatchKeys, vision.Features, vision.Hidden, step.Kept, step.Recycled);
        // "full": the [CLS] row comes first and is kept as a dominant token; the patches are chosen with the rest of the budget.
        int d = vision.Hidden;
        var patches = VisionZipSelector.Select(vision.ClsAttention, vision.Heads, vision.PatchKeys, vision.Features.AsSpan(d), d, step.Kept - 1, step.Recycled);
        return patches with
        {
            Dominant = [SequenceState.ClsToken, .. patches.Dominant],
            Hidden = [.. vision.Features.AsSpan(0, d), .. patches.Hidden],
        };
    }
}

/// <summary>Creates the policy object for a method.</summary>
internal static class PruningPolicies
{
    public static IPruningPolicy Create(ModelShape shape, PruningOptions options) => options.Method switch
    {
        PruningMethod.None => new NoPruningPolicy(shape, options),
        PruningMethod.FastV => new FastVPolicy(shape, options),
        PruningMethod.AdaptPrune => new AdaptPrunePolicy(shape, options),
        PruningMethod.PDrop => new PDropPolicy(shape, options),
        PruningMethod.SparseVLM => new SparseVlmPolicy(shape, options),
        PruningMethod.VisionZip => new VisionZipPolicy(shape, options),
        PruningMethod.AutoPrune => new AutoPrunePolicy(shape, options),
        PruningMethod.DivPrune => new DivPrunePolicy(shape, options),
        PruningMethod.Dart => new DartPolicy(shape, options),
        _ => throw new ArgumentOutOfRangeException(nameof(options), options.Method, "Unknown pruning method."),
    };
}
