using AutoPrune.Compute;

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
    private readonly int[] _versions;
    private readonly IReadOnlyList<string> _notes;
    private readonly Device.IDevicePruner? _device;

    private static long s_created;

    /// <summary>Sessions created so far in this process (each solves its method's schedule): tests count one per request.</summary>
    internal static long Created => Interlocked.Read(ref s_created);

    /// <summary>Creates the policy: an infeasible budget fails here, before any work.</summary>
    /// <param name="shape">The model's shape (<see cref="ModelShape.VisualTokens"/> is one image's).</param>
    /// <param name="options">The pruning to run.</param>
    /// <param name="prefixTokens">Tokens before the first image.</param>
    /// <param name="visualTokens">
    /// Visual tokens in this request's prompt (0 for a question without an image, several images' worth for several);
    /// null means one image. Only method None runs on other than one image (see <see cref="PruningCapabilities"/>).
    /// </param>
    /// <param name="notes">Notes added to the report (e.g. why a default method fell back to None).</param>
    /// <param name="deviceSelection">
    /// On a GPU, run the method's selection on the device when it has been moved there (the default); false keeps the
    /// host code (to check the two against each other).
    /// </param>
    public PruningSession(ModelShape shape, PruningOptions options, int prefixTokens, int? visualTokens = null, IReadOnlyList<string>? notes = null,
        bool deviceSelection = true)
    {
        Interlocked.Increment(ref s_created);
        _shape = visualTokens is int v && options.Method == PruningMethod.None ? shape with { VisualTokens = v, ViewPatches = null } : shape;
        _options = options;
        _prefix = prefixTokens;
        _notes = notes ?? [];
        Policy = PruningPolicies.Create(_shape, options);
        _device = deviceSelection ? Device.DevicePruners.For(Policy, options) : null;
        if (options.BudgetScope == BudgetScope.PerView && _shape.ViewPatches is not null && options.Method != PruningMethod.None)
            ViewShares = Budget.ViewBudgets(options, _shape);
        _processedIndices = new int[shape.Layers][];
        _processedCounts = new int[shape.Layers];
        _versions = new int[shape.Layers];
    }

    public IPruningPolicy Policy { get; }

    /// <summary>Whether the decoder must call this session between layers.</summary>
    public bool NeedsDecoderHook => Policy.RunsInDecoder;

    /// <summary>The (first) image's token map (views, token places, separator rows), handed to the policy in every <see cref="PruneContext"/>.</summary>
    public VisualTokenMap? TokenMap { get; private set; }

    /// <summary>
    /// The request's (first) image: its map goes into every <see cref="PruneContext"/>, it and (LLaVA-1.5, where the device
    /// selections read them) its vision features to the policy.
    /// </summary>
    public void SetImage(VisualImage image, VisionFeatures? vision = null)
    {
        if (TokenMap is not null) return;
        TokenMap = image.Map;
        if (vision is not null) Policy.OnVision(vision);
        if (_options.Method != PruningMethod.None) Policy.OnImage(image);
    }

    /// <summary>
    /// image_newline rows in the request's prompt (LLaVA-NeXT): part of the images' runs but not visual tokens, so they are
    /// never pruned, not counted in the per-layer visual counts, and counted with the text in the FLOPs.
    /// </summary>
    public int Newlines { get; set; }

    /// <summary>Each view's budget under <see cref="BudgetScope.PerView"/> on a LLaVA-NeXT image; null otherwise.</summary>
    public double[]? ViewShares { get; }

    /// <summary>
    /// On a GPU, methods whose selection runs on the device (<see cref="Device.DevicePruners"/>) announce the layers whose
    /// attention they read; policies still on the host (and every policy on a LLaVA-NeXT image) read every layer's.
    /// </summary>
    public bool ReadsAttention(int layer) => TokenMap is { SquareGrid: null } ? true : _device?.ReadsAttention(layer) ?? true;

    public PruneAction? AfterLayer(LayerView view)
    {
        Record(view.Layer, view.State);
        var ctx = new PruneContext
        {
            State = view.State, Prefix = _prefix, VisualCount = view.State.VisualRows(_prefix) - Newlines, Shape = _shape, Options = _options,
            TokenMap = TokenMap, Newlines = Newlines, ViewShares = ViewShares,
        };
        // The device pruners select on LLaVA-1.5's square grid; any other token map (newline rows, views, merged grids) runs the host code.
        if (_device is not null && view.Device is { } dev && (TokenMap is null or { SquareGrid: not null }) && _device.Handles(ctx))
        {
            _device.BeforeSteps(dev, ctx);
            foreach (var step in Policy.Schedule!.Steps)
                if (step.AfterLayer == view.Layer) return _device.AfterLayer(dev, ctx, step);
            return null;
        }
        return Policy.AfterLayer(view, ctx);
    }

    /// <summary>
    /// What layer <paramref name="layer"/> processed: the visual rows (kept or merged) after the prefix now, and the
    /// sequence's version, by which the report finds their indices at the end (on a GPU they may only be on the device
    /// until the prefill's final readback).
    /// </summary>
    private void Record(int layer, SequenceState st)
    {
        _processedCounts[layer] = st.VisualRows(_prefix) - Newlines;
        _versions[layer] = st.Version;
    }

    /// <summary>Records the last layer (which no hook sees) and builds the report, checking reality against the schedule.</summary>
    /// <param name="textTokens">Prompt tokens after the prefix that are not visual.</param>
    public PruningReport Finish(SequenceState finalState, int textTokens)
    {
        if (NeedsDecoderHook) Record(_shape.Layers - 1, finalState);
        else for (int l = 0; l < _shape.Layers; l++) Record(l, finalState); // nothing changes inside the decoder
        for (int l = 0; l < _shape.Layers; l++)
            _processedIndices[l] = finalState.VisualIndexAt(_versions[l]).AsSpan(_prefix).ToArray().Where(v => v >= 0).ToArray();
        var schedule = Policy.Schedule ?? throw new InvalidOperationException($"{Policy.Method} produced no schedule (the prompt has too few decoder layers to run it).");
        for (int l = 0; l < _shape.Layers; l++)
            if (_processedCounts[l] != schedule.Processed[l])
                throw new InvalidOperationException(
                    $"Pruning bug: layer {l} processed {_processedCounts[l]} visual tokens, the {schedule.Method} schedule says {schedule.Processed[l]}.");
        double asked = _options.Method == PruningMethod.None ? _shape.VisualTokens : Budget.Resolve(_options, _shape);
        var notes = _shape.VisualTokens == 0 && _notes.Count == 0 ? _notes.Append("The request has no image: there were no visual tokens to prune.") : _notes;
        var signals = _device is null || _device.Signals.Count == 0 ? Policy.RuntimeSignals
            : Policy.RuntimeSignals.Concat(_device.Signals).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        var report = PruningReports.Create(schedule, _shape, _prefix, textTokens + Newlines, asked, _processedIndices, signals, notes);
        // The patches' places go with the report when its indices are this image's (one LLaVA-NeXT image in the request).
        bool oneImage = TokenMap?.ToReport() is not null && _processedIndices.All(l => l.All(v => v < TokenMap.Count));
        return oneImage ? report with { Patches = TokenMap!.ToReport() } : report;
    }
}
