using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>VisionZip: dominant + contextual tokens chosen in the vision tower; the decoder runs unchanged on them.</summary>
internal sealed class VisionZipPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    /// <summary>
    /// Dominant tokens by the [CLS] attention (summed over heads; on a tower without [CLS], the attention each token
    /// receives) and contextual tokens merged from the rest by key similarity, in the features' space, then projected.
    /// LLaVA-1.5's "full" strategy keeps its [CLS] row as a dominant token. On a LLaVA-NeXT image each patch is scored by its
    /// own view's [CLS] attention and keys are compared across views; under <see cref="BudgetScope.PerView"/> each view
    /// picks its own dominant and contextual tokens from its share.
    /// </summary>
    public override PreLlmSelection SelectBeforeLlm(VisualImage image)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        bool original = Options.Positions == PrunedPositions.Original;
        int heads = image.ClsHeads, fd = image.FeatureDim, n = image.Count;
        var cls = image.ClsAttention();
        var keys = image.Keys();
        var features = image.Features();
        if (image.Map.SquareGrid is not null)
        {
            var zip = VisionZipSelector.Select(cls, heads, keys, features, fd, step.Kept - (image.Map.HasCls ? 1 : 0), step.Recycled);
            int c = zip.ContextualTargets.Length;
            return image.Select(zip.Dominant, c == 0 ? null : zip.Hidden.AsSpan(zip.Dominant.Length * fd, c * fd).ToArray(), c, original);
        }
        int[][] groups = image.ViewShares is null ? [Enumerable.Range(0, n).ToArray()] : ViewQuotas.Groups(Enumerable.Range(0, n).ToArray(), image.Map, image.ViewShares.Length)[..^1];
        // Request scope: the schedule's D + C over all tokens; per view: each view's share of D + C, split the same way.
        var budgets = image.ViewShares is null ? [step.Kept + step.Recycled]
            : ViewQuotas.Apportion(step.Kept + step.Recycled, image.ViewShares, groups.Select(g => g.Length).ToArray());
        int dk = image.KeyDim;
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
            var gkeys = new float[group.Length * dk];
            var gfeat = new float[group.Length * fd];
            for (int j = 0; j < group.Length; j++)
            {
                keys.AsSpan(group[j] * dk, dk).CopyTo(gkeys.AsSpan(j * dk, dk));
                features.AsSpan(group[j] * fd, fd).CopyTo(gfeat.AsSpan(j * fd, fd));
            }
            var zip = VisionZipSelector.Select(gcls, heads, gkeys, gfeat, fd, d, c);
            dominant.AddRange(zip.Dominant.Select(j => group[j]));
            contextual.AddRange(zip.Hidden.AsSpan(zip.Dominant.Length * fd, zip.ContextualTargets.Length * fd).ToArray());
            dominantCount += zip.Dominant.Length;
            contextualCount += zip.ContextualTargets.Length;
        }
        _signals["dominant"] = dominantCount;
        _signals["contextual"] = contextualCount;
        dominant.Sort();
        return image.Select([.. dominant], contextualCount == 0 ? null : [.. contextual], contextualCount, original);
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
