using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>DivPrune: the k most diverse projected visual tokens (greedy max-min) enter the LLM; it then runs unchanged.</summary>
internal sealed class DivPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    public override PreLlmSelection SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        var projected = project(vision.Features, vision.Tokens);
        int dim = projected.Length / vision.Tokens, cls = vision.Tokens - vision.Patches; // a [CLS] row ("full") is always kept
        var keep = DivPruneSelector.Select(projected.AsSpan(cls * dim), dim, step.Kept - cls);
        return PreLlmSelection.FromRows(vision, projected, keep, Options.Positions == PrunedPositions.Original);
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
        return image.Select(keep, null, Options.Positions == PrunedPositions.Original);
    }
}
