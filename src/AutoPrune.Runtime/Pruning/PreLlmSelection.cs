using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>
/// What of one image enters the LLM when a policy selects before it: <see cref="Projected"/> is [rows, hidden] in the
/// decoder's space, in the image run's order (kept tokens, the run's [CLS] and separator rows in place, merged tokens at
/// the end); <see cref="VisualIndex"/> names each row (a visual index, <see cref="SequenceState.ClsToken"/>,
/// <see cref="SequenceState.NewlineRow"/> or <see cref="SequenceState.MergedRow"/>); <see cref="RunPlaces"/> each row's
/// place in the image's full run (-1 for a merged row), which gives the rows their original positions.
/// </summary>
internal sealed record PreLlmSelection(float[] Projected, int[] VisualIndex, int[] RunPlaces, int FullRun)
{
    public int Count => VisualIndex.Length;

    /// <summary>Whether the rows keep their original RoPE positions (gaps) instead of the shortened prompt's contiguous ones.</summary>
    public bool OriginalPositions { get; init; }
}

/// <summary>
/// A selection before the LLM as the prompt builder takes it: the projected rows (host or backend), each row's visual
/// index and place in the full run when the host knows them (a GPU selection keeps them on the device), and whether the
/// rows keep their original RoPE positions.
/// </summary>
internal sealed record PreLlmRows(Models.Llava.ImageRows Rows, int[]? VisualIndex, bool OriginalPositions)
{
    /// <summary>As <see cref="PreLlmSelection.RunPlaces"/>; null when only the device knows the rows.</summary>
    public int[]? RunPlaces { get; init; }
    public int FullRun { get; init; }

    public static PreLlmRows OnHost(PreLlmSelection s, int hidden)
        => new(Models.Llava.ImageRows.OnHost(s.Projected, hidden), s.VisualIndex, s.OriginalPositions) { RunPlaces = s.RunPlaces, FullRun = s.FullRun };

    /// <summary>
    /// The shortened prompt's positions when the rows keep their original ones: every row takes the position it had in the
    /// full prompt (<paramref name="full"/>), a merged row the position of the row before it; null for contiguous
    /// positions (the default) or when only the device knows the rows (it computes them there).
    /// </summary>
    /// <param name="promptLength">Rows of the shortened prompt.</param>
    /// <param name="prefix">Rows before the image's run.</param>
    public PositionIds? Positions(int promptLength, int prefix, PositionIds full)
    {
        if (!OriginalPositions || RunPlaces is null) return null;
        var rows = new int[promptLength];
        for (int i = 0; i < prefix; i++) rows[i] = i;
        for (int j = 0; j < RunPlaces.Length; j++) rows[prefix + j] = RunPlaces[j] >= 0 ? prefix + RunPlaces[j] : -1;
        for (int t = prefix + RunPlaces.Length; t < promptLength; t++) rows[t] = prefix + FullRun + (t - prefix - RunPlaces.Length);
        return full.Gather(rows);
    }
}

/// <summary>
/// One image as a policy that chooses before the LLM sees it, for every model family: its token map, the vision tower's
/// signals per visual token (the [CLS] attention per head — or, for a tower without [CLS], the attention each token
/// receives — its keys and features), its tokens in the decoder's space, and each view's budget share under
/// <see cref="BudgetScope.PerView"/>. <see cref="Select"/> turns kept tokens into the rows that enter the LLM.
/// </summary>
internal sealed class VisualImage
{
    private readonly Func<float[]?> _clsAttention, _keys, _features;
    private readonly Func<float[]> _clsMean;
    private readonly Func<float[], int, float[]>? _project;
    private readonly float[]? _runRows;       // the run's rows in the decoder's space (separators included), when already projected
    private readonly float[]? _clsFeature;    // the [CLS] row in the vision tower's space, when the run starts with one
    private float[]? _projected;              // every token (and the [CLS] row first) projected, once asked for

    private VisualImage(VisualTokenMap map, int hidden, int clsHeads, Func<float[]?> clsAttention, Func<float[]> clsMean, Func<float[]?> keys, int keyDim,
        Func<float[]?> features, int featureDim, float[]? runRows, float[]? clsFeature, Func<float[], int, float[]>? project, double[]? viewShares, bool matchDevice)
    {
        Map = map; Hidden = hidden; ClsHeads = clsHeads; _clsAttention = clsAttention; _clsMean = clsMean; _keys = keys; KeyDim = keyDim;
        _features = features; FeatureDim = featureDim; _runRows = runRows; _clsFeature = clsFeature; _project = project; ViewShares = viewShares;
        MatchDevice = matchDevice;
    }

    public VisualTokenMap Map { get; }
    public int Count => Map.Count;

    /// <summary>The decoder's width.</summary>
    public int Hidden { get; }

    /// <summary>Heads of <see cref="ClsAttention"/> (1 for a received-attention signal).</summary>
    public int ClsHeads { get; }
    public int KeyDim { get; }
    public int FeatureDim { get; }
    public double[]? ViewShares { get; }

    /// <summary>Computed by a CPU backend matching the GPU code path: selections round as the device's would.</summary>
    public bool MatchDevice { get; }

    /// <summary>[ClsHeads, Count]: the [CLS] attention to each token (per head), or the attention each token receives.</summary>
    public float[] ClsAttention() => _clsAttention() ?? throw new NotSupportedException("The method needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");

    /// <summary>[Count]: <see cref="ClsAttention"/> averaged over heads.</summary>
    public float[] ClsMean() => _clsMean();

    /// <summary>[Count, KeyDim]: each token's keys (for cosine similarities between tokens).</summary>
    public float[] Keys() => _keys() ?? throw new NotSupportedException("The method needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");

    /// <summary>[Count, FeatureDim]: each token's features as a merge combines them (before the projector where there is one).</summary>
    public float[] Features() => _features() ?? throw new InvalidOperationException("These visual tokens have no features.");

    /// <summary>Rows of merged <see cref="Features"/> in the decoder's space (through the projector where there is one).</summary>
    public float[] ProjectFeatures(float[] features, int rows) => _project is null ? features : _project(features, rows);

    /// <summary>[Count, Hidden]: every token in the decoder's space, by visual index.</summary>
    public float[] ProjectedTokens()
    {
        if (_runRows is not null)
        {
            var rows = new float[(long)Count * Hidden];
            for (int t = 0; t < Map.Sequence.Count; t++)
                if (Map.Sequence[t] is int v and >= 0) _runRows.AsSpan(t * Hidden, Hidden).CopyTo(rows.AsSpan(v * Hidden, Hidden));
            return rows;
        }
        var all = ProjectedAll();
        int cls = Map.HasCls ? 1 : 0;
        return all.AsSpan(cls * Hidden).ToArray();
    }

    /// <summary>The [CLS] row (when the run has one) and every token projected in one call, kept for <see cref="Select"/>.</summary>
    private float[] ProjectedAll()
    {
        if (_projected is not null) return _projected;
        var f = Features();
        float[] input = _clsFeature is null ? f : [.. _clsFeature, .. f];
        return _projected = _project!(input, Count + (_clsFeature is null ? 0 : 1));
    }

    /// <summary>
    /// <paramref name="k"/> tokens (ascending) chosen by <paramref name="select"/> (candidate tokens and a count in,
    /// positions into the candidates out): once over all tokens, or per view with its quota under <see cref="BudgetScope.PerView"/>.
    /// </summary>
    public int[] SelectByScope(int k, Func<int[], int, int[]> select)
    {
        var all = Enumerable.Range(0, Count).ToArray();
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
    /// The image's run with only <paramref name="keep"/> (ascending visual indices) of its tokens: the kept tokens' rows and
    /// every [CLS] and separator row in prompt order, then <paramref name="mergedRows"/> merged tokens made of
    /// <paramref name="mergedFeatures"/> (in <see cref="Features"/>' space, e.g. VisionZip's contextual tokens) at the end.
    /// </summary>
    public PreLlmSelection Select(int[] keep, float[]? mergedFeatures, int mergedRows, bool originalPositions)
    {
        var kept = new bool[Count];
        foreach (int v in keep) kept[v] = true;
        var places = new List<int>(keep.Length + Map.Newlines + 1 + mergedRows);
        for (int t = 0; t < Map.Sequence.Count; t++)
            if (Map.Sequence[t] < 0 || kept[Map.Sequence[t]]) places.Add(t);
        int h = Hidden, run = places.Count;
        var rows = new float[(long)(run + mergedRows) * h];
        var index = new int[run + mergedRows];
        for (int i = 0; i < run; i++) index[i] = Map.Sequence[places[i]];
        if (_runRows is not null)
        {
            // The run is already in the decoder's space (LLaVA-NeXT's assembled tokens, Qwen2.5-VL's merged tokens).
            for (int i = 0; i < run; i++) _runRows.AsSpan(places[i] * h, h).CopyTo(rows.AsSpan(i * h, h));
            if (mergedRows > 0) ProjectFeatures(mergedFeatures!, mergedRows).AsSpan(0, mergedRows * h).CopyTo(rows.AsSpan(run * h));
        }
        else if (_projected is not null && mergedRows == 0)
        {
            // Every token was projected already (the selection compared projected tokens): the rows are taken from there.
            int cls = Map.HasCls ? 1 : 0;
            for (int i = 0; i < run; i++)
            {
                int src = index[i] == SequenceState.ClsToken ? 0 : cls + index[i];
                _projected.AsSpan(src * h, h).CopyTo(rows.AsSpan(i * h, h));
            }
        }
        else
        {
            // Only the rows that enter the LLM go through the projector, in one call: [CLS], the kept tokens, the merged ones.
            int fd = FeatureDim;
            var f = Features();
            var input = new float[(long)(run + mergedRows) * fd];
            for (int i = 0; i < run; i++)
            {
                var src = index[i] == SequenceState.ClsToken ? _clsFeature! : f.AsSpan(index[i] * fd, fd);
                src.CopyTo(input.AsSpan(i * fd, fd));
            }
            mergedFeatures?.AsSpan(0, mergedRows * fd).CopyTo(input.AsSpan(run * fd));
            ProjectFeatures(input, run + mergedRows).AsSpan(0, (run + mergedRows) * h).CopyTo(rows);
        }
        for (int j = 0; j < mergedRows; j++) { index[run + j] = SequenceState.MergedRow; places.Add(-1); }
        return new PreLlmSelection(rows, index, places.ToArray(), Map.Sequence.Count) { OriginalPositions = originalPositions };
    }

    /// <summary>
    /// LLaVA-1.5: one image's vision-tower output on its square grid (a [CLS] row first with the "full" strategy), projected
    /// on demand by the model's projector.
    /// </summary>
    public static VisualImage FromVision(VisionFeatures vision, VisualTokenMap map, int hidden, Func<float[], int, float[]> project)
    {
        int cls = vision.Tokens - vision.Patches, d = vision.Hidden;
        return new VisualImage(map, hidden, vision.Heads,
            () => vision.ClsAttention,
            () =>
            {
                var a = vision.ClsAttention ?? throw new NotSupportedException("The method needs the vision tower's [CLS] attention, but this model's feature layer is the embedding layer.");
                var mean = new float[vision.Patches];
                for (int h = 0; h < vision.Heads; h++)
                    System.Numerics.Tensors.TensorPrimitives.Add(mean, a.AsSpan(h * vision.Patches, vision.Patches), mean);
                System.Numerics.Tensors.TensorPrimitives.Multiply(mean, 1f / vision.Heads, mean);
                return mean;
            },
            () => vision.PatchKeys, d,
            () => cls == 0 ? vision.Features : vision.Features.AsSpan(cls * d).ToArray(), d,
            null, cls == 0 ? null : vision.Features.AsSpan(0, d).ToArray(), project, null, vision.MatchDevice);
    }

    /// <summary>
    /// LLaVA-NeXT: the image's tokens in prompt order ([run, hidden], image_newline rows included), each patch's signals
    /// gathered from its own view's vision output.
    /// </summary>
    public static VisualImage FromAnyRes(Models.Llava.AnyResTokenMap map, float[] tokens, int hidden, double[]? viewShares, Func<float[], int, float[]> project)
    {
        var first = map.Views[0];
        int vh = first.Hidden;
        float[]? Gather(Func<VisionFeatures, float[]?> select)
        {
            int g = map.Layout.Grid;
            var result = new float[(long)map.Patches.Count * vh];
            for (int i = 0; i < map.Patches.Count; i++)
            {
                var o = map.Patches[i];
                if (select(map.Views[o.View]) is not { } src) return null;
                src.AsSpan((o.Row * g + o.Col) * vh, vh).CopyTo(result.AsSpan(i * vh, vh));
            }
            return result;
        }
        float[]? ClsPerHead()
        {
            int g = map.Layout.Grid, heads = first.Heads, n = map.Patches.Count;
            var result = new float[heads * n];
            for (int i = 0; i < n; i++)
            {
                var o = map.Patches[i];
                var view = map.Views[o.View];
                if (view.ClsAttention is not { } cls) return null;
                for (int h = 0; h < heads; h++) result[h * n + i] = cls[h * view.Patches + o.Row * g + o.Col];
            }
            return result;
        }
        return new VisualImage(map.Map, hidden, first.Heads, ClsPerHead, map.ClsAttentionMean, () => Gather(v => v.PatchKeys), vh,
            () => Gather(v => v.Features), vh, tokens, null, project, viewShares, matchDevice: false);
    }

    /// <summary>
    /// A tower whose tokens are already in the decoder's space and has no [CLS] token (Qwen2.5-VL's merged tokens):
    /// <paramref name="received"/> (the attention each token receives in the last full-attention block) stands in for the
    /// [CLS] attention, and the tokens themselves are the keys and features.
    /// </summary>
    public static VisualImage FromTokens(VisualTokenMap map, float[] tokens, float[]? received, int hidden, double[]? viewShares, bool matchDevice = false)
        => new(map, hidden, 1, () => received, () => received ?? throw new NotSupportedException("The method needs the attention each visual token receives in the vision tower, which this model did not compute."),
            () => tokens, hidden, () => tokens, hidden, tokens, null, null, viewShares, matchDevice);
}
