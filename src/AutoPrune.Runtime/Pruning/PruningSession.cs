using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>
/// Runs one request's pruning policy inside the decoder and records what each layer really processed,
/// so the report is measured, and checked against the policy's schedule.
/// </summary>
internal sealed class PruningSession : IPrefillHook
{
    private readonly ModelShape _shape;
    private readonly PruningOptions _options;
    private readonly int _prefix; // tokens before the image (never pruned)
    private readonly int[][] _processedIndices;
    private readonly int[] _processedCounts;

    /// <summary>Creates the policy: an infeasible budget fails here, before any work.</summary>
    public PruningSession(ModelShape shape, PruningOptions options, int prefixTokens)
    {
        _shape = shape;
        _options = options;
        _prefix = prefixTokens;
        Policy = PruningPolicies.Create(shape, options);
        _processedIndices = new int[shape.Layers][];
        _processedCounts = new int[shape.Layers];
    }

    public IPruningPolicy Policy { get; }

    /// <summary>Whether the decoder must call this session between layers.</summary>
    public bool NeedsDecoderHook => Policy.RunsInDecoder;

    public void SetVision(VisionFeatures vision) => Policy.OnVision(vision);

    /// <summary>A LLaVA-NeXT image's token map (views, patch origins, newline rows), handed to the policy in every <see cref="PruneContext"/>.</summary>
    public AnyResTokenMap? TokenMap { get; set; }

    public PruneAction? AfterLayer(LayerView view)
    {
        Record(view.Layer, view.State);
        var ctx = new PruneContext { State = view.State, Prefix = _prefix, VisualCount = CountVisual(view.State), Shape = _shape, Options = _options, TokenMap = TokenMap };
        return Policy.AfterLayer(view, ctx);
    }

    private int CountVisual(SequenceState st)
    {
        int c = 0;
        for (int i = _prefix; i < st.Length && st.VisualIndex[i] != -1; i++) c++;
        return c;
    }

    private void Record(int layer, SequenceState st)
    {
        int vis = CountVisual(st);
        _processedCounts[layer] = vis;
        _processedIndices[layer] = st.VisualIndex.AsSpan(_prefix, vis).ToArray().Where(v => v >= 0).ToArray();
    }

    /// <summary>Records the last layer (which no hook sees) and builds the report, checking reality against the schedule.</summary>
    public PruningReport Finish(SequenceState finalState, int textTokens)
    {
        if (NeedsDecoderHook) Record(_shape.Layers - 1, finalState);
        else for (int l = 0; l < _shape.Layers; l++) Record(l, finalState); // nothing changes inside the decoder
        var schedule = Policy.Schedule ?? throw new InvalidOperationException($"{Policy.Method} produced no schedule (the prompt has too few decoder layers to run it).");
        for (int l = 0; l < _shape.Layers; l++)
            if (_processedCounts[l] != schedule.Processed[l])
                throw new InvalidOperationException(
                    $"Pruning bug: layer {l} processed {_processedCounts[l]} visual tokens, the {schedule.Method} schedule says {schedule.Processed[l]}.");
        double asked = _options.Method == PruningMethod.None ? _shape.VisualTokens : Budget.Resolve(_options.Budget, _shape.VisualTokens);
        return PruningReports.Create(schedule, _shape, _prefix, textTokens, asked, _processedIndices, Policy.RuntimeSignals);
    }
}
