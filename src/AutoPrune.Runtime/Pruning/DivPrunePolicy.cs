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
}
