using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

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
