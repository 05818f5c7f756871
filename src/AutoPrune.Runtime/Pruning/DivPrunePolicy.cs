using AutoPrune.Compute;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>DivPrune: the k most diverse projected visual tokens (greedy max-min) enter the LLM; it then runs unchanged.</summary>
internal sealed class DivPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    /// <summary>The patches to keep: the schedule's count before the LLM, less the [CLS] row of the "full" strategy (always kept).</summary>
    internal int PatchesToKeep(VisionFeatures vision) => Schedule!.Steps.Single(s => s.AfterLayer == -1).Kept - (vision.Tokens - vision.Patches);

    /// <summary>Whether the kept rows keep their original RoPE positions (DivPrune renumbers by default).</summary>
    internal bool OriginalPositions => Options.Positions == PrunedPositions.Original;

    public override PreLlmSelection SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project)
    {
        var projected = project(vision.Features, vision.Tokens);
        int dim = projected.Length / vision.Tokens, cls = vision.Tokens - vision.Patches;
        var keep = DivPruneSelector.Select(projected.AsSpan(cls * dim), dim, PatchesToKeep(vision), vision.MatchDevice);
        return PreLlmSelection.FromRows(vision, projected, keep, OriginalPositions);
    }

    /// <summary>A LLaVA-NeXT image: the most diverse projected patches of the base view and tiles together, or of each view with its share.</summary>
    public override PreLlmSelection SelectBeforeLlm(AnyResImage image, Func<float[], int, float[]> project)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        var rows = image.PatchRows();
        int d = image.Hidden;
        var keep = image.SelectByScope(step.Kept, (candidates, q) =>
        {
            var f = new float[candidates.Length * d];
            for (int j = 0; j < candidates.Length; j++) rows.AsSpan(candidates[j] * d, d).CopyTo(f.AsSpan(j * d, d));
            return DivPruneSelector.Select(f, d, q);
        });
        return image.Select(keep, null, OriginalPositions);
    }
}
