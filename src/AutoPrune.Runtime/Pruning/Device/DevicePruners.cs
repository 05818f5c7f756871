using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// A pruning policy's selection run on the device, beside its host code (which the CPU backend, and GPU runs of methods
/// not moved yet, keep using): the signals, the top-k, the merges and the new sequence's plan are kernels, and nothing
/// comes back to the host. Each mirrors its host policy's arithmetic where it decides what is kept, so both make the
/// same decisions on the same inputs.
/// </summary>
internal interface IDevicePruner
{
    /// <summary>Whether the pruner reads layer <paramref name="layer"/>'s attention (its fp32 queries and keys are then kept).</summary>
    bool ReadsAttention(int layer);

    /// <summary>False when this sequence needs the host code (e.g. a [CLS] token among AdaptPrune's patches).</summary>
    bool Handles(PruneContext ctx) => true;

    /// <summary>Called after every layer before its schedule step, if any (AutoPrune measures MI here and may re-solve its curve).</summary>
    void BeforeSteps(DeviceLayerSignals dev, PruneContext ctx) { }

    /// <summary>The prune after <c>dev.Layer</c> (its schedule step), as a device plan.</summary>
    PruneAction? AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step);

    /// <summary>Signals measured while running (merged into the report), e.g. SparseVLM's rater counts.</summary>
    IReadOnlyDictionary<string, double> Signals { get; }
}

/// <summary>The device pruners, by method (null where a method still runs on the host).</summary>
internal static class DevicePruners
{
    public static IDevicePruner? For(IPruningPolicy policy, PruningOptions options) => policy.Schedule is not { } schedule ? null : policy.Method switch
    {
        PruningMethod.FastV => new FastVOnDevice(schedule),
        PruningMethod.AdaptPrune => new AdaptPruneOnDevice(schedule, options),
        PruningMethod.PDrop => new PDropOnDevice(),
        PruningMethod.SparseVLM => new SparseVlmOnDevice(schedule, options),
        PruningMethod.AutoPrune => new AutoPruneOnDevice((AutoPrunePolicy)policy),
        PruningMethod.Dart => new DartOnDevice(schedule, options),
        _ => null,
    };

    /// <summary>True when <paramref name="schedule"/> prunes after <paramref name="layer"/>.</summary>
    internal static bool PrunesAfter(LayerSchedule schedule, int layer)
    {
        foreach (var s in schedule.Steps)
            if (s.AfterLayer == layer) return true;
        return false;
    }

    /// <summary>The plan's action: kept visual rows (and merged ones) after the prefix, then the text; positions as the options say over the method's default.</summary>
    internal static PruneAction Action(ArrayView<int> plan, PruneContext ctx, int kept, ArrayView<float> merged, int mergedRows, bool renumber)
    {
        renumber = ctx.Options.Positions switch { PrunedPositions.Original => false, PrunedPositions.Contiguous => true, _ => renumber };
        return PruneAction.FromDevice(new DevicePrunePlan(plan, ctx.Prefix + kept + mergedRows + ctx.TextCount, kept + mergedRows, merged, mergedRows), renumber);
    }

    /// <summary>
    /// The rows a policy that chooses before the LLM lets in, selected where the vision features are (a GPU), or null when
    /// the features are on the host or the policy does not choose there (or is not moved to the device).
    /// </summary>
    public static PreLlmRows? SelectBeforeLlm(IPruningPolicy policy, VisionFeatures vision, IVisualProjector projector)
    {
        if (vision.Device is null) return null;
        if (policy is VisionZipPolicy zip && zip.Options.Positions != PrunedPositions.Original && vision.Tokens == vision.Patches)
            return new PreLlmRows(VisionZipOnDevice.Select(projector, zip, vision), null, false);
        if (policy is AutoPrunePolicy auto)
            return AutoPruneOnDevice.SelectBeforeLlm(projector, auto, vision) is { } rows ? new PreLlmRows(rows, null, rows.OriginalPositions) : null;
        if (policy is DivPrunePolicy div)
        {
            var rows = DivPruneOnDevice.Select(projector, vision, div.PatchesToKeep(vision), div.OriginalPositions);
            return new PreLlmRows(rows, null, rows.OriginalPositions);
        }
        return null;
    }

    /// <summary>
    /// The rows a selection before the LLM lets in, on the device: the first <paramref name="cls"/> rows of
    /// <paramref name="source"/> ([rows, width]) and the kept ones (keptLocal, ascending, offset by cls), projected when
    /// asked; their visual indices ([CLS] or the patch) stay with them. The caller is inside the backend's Enter.
    /// </summary>
    internal static ImageRows SelectedRows(CudaBackend backend, IVisualProjector projector, ArrayView<float> source, ArrayView<int> keptLocal, int cls, int k, int width,
        bool project, bool originalPositions)
    {
        var mem = backend.Memory;
        int count = cls + k;
        using var index = mem.Allocate<int>(Math.Max(1, count));
        var visual = mem.Allocate<int>(Math.Max(1, count));
        DeviceBuffer<float>? gathered = null;
        try
        {
            backend.Ops.SelectedRows(keptLocal, cls, k, index.View, visual.View);
            gathered = mem.Allocate<float>(Math.Max(1, (long)count * width));
            if (count > 0) backend.Ops.RowGatherMixed(source, source, index.View.SubView(0, count), gathered.View.SubView(0, (long)count * width), width);
            Tensor rows;
            if (project)
            {
                using (gathered) rows = projector.Project(DeviceTensor.Of(gathered.View.SubView(0, Math.Max(1, (long)count * width))), count);
            }
            else rows = DeviceTensor.Owning(gathered, (long)count * width);
            var result = ImageRows.OnBackend(backend, rows, DeviceTensor.Owning(visual, count), count, projector.Hidden);
            result.OriginalPositions = originalPositions;
            return result;
        }
        catch
        {
            visual.Dispose();
            gathered?.Dispose();
            throw;
        }
    }
}
