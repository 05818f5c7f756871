using AutoPrune.Compute;

namespace AutoPrune.Pruning;

/// <summary>
/// One pruning method. The decoder calls <see cref="AfterLayer"/> between layers with a view from which
/// the policy pulls just the signals it needs; <see cref="PruningSession"/> does the bookkeeping
/// (what each layer processed, the report) for every policy alike.
/// </summary>
internal interface IPruningPolicy
{
    PruningMethod Method { get; }

    /// <summary>The solved per-layer schedule; AutoPrune's is known only after layer 1.</summary>
    LayerSchedule? Schedule { get; }

    /// <summary>False for policies that never change the sequence inside the decoder (None, VisionZip).</summary>
    bool RunsInDecoder { get; }

    /// <summary>Receives the vision tower's output before the LLM runs.</summary>
    void OnVision(VisionFeatures vision) { }

    /// <summary>Receives the request's (first) image as pruning sees it (token map, signals) before the LLM runs.</summary>
    void OnImage(VisualImage image) { }

    /// <summary>
    /// Chooses what of one image enters the LLM (VisionZip, DivPrune, AutoPrune's first stage): the kept tokens' rows with
    /// every [CLS] and separator row in place, and merged rows at the run's end. Null (the default) lets every token in.
    /// </summary>
    PreLlmSelection? SelectBeforeLlm(VisualImage image) => null;

    /// <summary>Called after decoder layer <c>view.Layer</c>; returns the new sequence or null to keep it.</summary>
    PruneAction? AfterLayer(LayerView view, PruneContext ctx);

    /// <summary>Signals measured while running (e.g. AutoPrune's MI0), merged into the report.</summary>
    IReadOnlyDictionary<string, double> RuntimeSignals { get; }
}
