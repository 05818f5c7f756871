using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

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

    /// <summary>
    /// Chooses what of one image enters the LLM (VisionZip, DivPrune): the projected rows and their original patch
    /// indices. Null (the default) lets every visual token in, projected as it is.
    /// </summary>
    /// <param name="project">The model's projector: vision features [rows, visionHidden] to decoder rows.</param>
    PreLlmSelection? SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project) => null;

    /// <summary>Receives a LLaVA-NeXT image's token map (views, places, each view's [CLS] attention) before the LLM runs.</summary>
    void OnAnyRes(AnyResTokenMap map) { }

    /// <summary>
    /// Chooses what of a LLaVA-NeXT image enters the LLM (VisionZip, DivPrune, AutoPrune's first stage): the kept
    /// patches' rows with every image_newline row in place, and merged rows at the run's end. Null lets every token in.
    /// </summary>
    PreLlmSelection? SelectBeforeLlm(AnyResImage image, Func<float[], int, float[]> project) => null;

    /// <summary>Called after decoder layer <c>view.Layer</c>; returns the new sequence or null to keep it.</summary>
    PruneAction? AfterLayer(LayerView view, PruneContext ctx);

    /// <summary>Signals measured while running (e.g. AutoPrune's MI0), merged into the report.</summary>
    IReadOnlyDictionary<string, double> RuntimeSignals { get; }
}
