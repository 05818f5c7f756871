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
    private readonly int _prefix; // tokens before the first image (never pruned)
    private readonly int[][] _processedIndices;
    private readonly int[] _processedCounts;
    private readonly IReadOnlyList<string> _notes;

    /// <summary>Creates the policy: an infeasible budget fails here, before any work.</summary>
    /// <param name="shape">The model's shape (<see cref="ModelShape.VisualTokens"/> is one image's).</param>
    /// <param name="options">The pruning to run.</param>
    /// <param name="prefixTokens">Tokens before the first image.</param>
    /// <param name="visualTokens">
    /// Visual tokens in this request's prompt (0 for a question without an image, several images' worth for several);
    /// null means one image. Only method None runs on other than one image (see <see cref="PruningCapabilities"/>).
    /// </param>
    /// <param name="notes">Notes added to the report (e.g. why a default method fell back to None).</param>
    public PruningSession(ModelShape shape, PruningOptions options, int prefixTokens, int? visualTokens = null, IReadOnlyList<string>? notes = null)
    {
        _shape = visualTokens is int v && options.Method == PruningMethod.None ? shape with { VisualTokens = v } : shape;
        _options = options;
        _prefix = prefixTokens;
        _notes = notes ?? [];
        Policy = PruningPolicies.Create(_shape, options);
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

    /// <summary>Visual rows (kept or merged) anywhere after the prefix: one run per image.</summary>
    private int CountVisual(SequenceState st)
    {
        int c = 0;
        for (int i = _prefix; i < st.Length; i++)
            if (st.VisualIndex[i] != -1) c++;
        return c;
    }

    private void Record(int layer, SequenceState st)
    {
        _processedCounts[layer] = CountVisual(st);
        _processedIndices[layer] = st.VisualIndex.AsSpan(_prefix, st.Length - _prefix).ToArray().Where(v => v >= 0).ToArray();
    }

    /// <summary>Records the last layer (which no hook sees) and builds the report, checking reality against the schedule.</summary>
    /// <param name="textTokens">Prompt tokens after the prefix that are not visual.</param>
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
        var notes = _shape.VisualTokens == 0 && _notes.Count == 0 ? _notes.Append("The request has no image: there were no visual tokens to prune.") : _notes;
        return PruningReports.Create(schedule, _shape, _prefix, textTokens, asked, _processedIndices, Policy.RuntimeSignals, notes);
    }
}
