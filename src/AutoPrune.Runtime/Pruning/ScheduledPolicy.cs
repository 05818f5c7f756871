using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>Shared shape of the policies whose schedule does not depend on the sample.</summary>
internal abstract class ScheduledPolicy(ModelShape shape, PruningOptions options) : IPruningPolicy
{
    public LayerSchedule? Schedule { get; protected set; } = ScheduleSolver.Solve(shape, options);
    public PruningMethod Method => options.Method;
    public virtual bool RunsInDecoder => true;
    public virtual PreLlmSelection? SelectBeforeLlm(VisualImage image) => null;
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
