using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// VisionZip before the LLM, on the device (mirroring <see cref="VisionZipSelector"/>): the [CLS] attention summed over
/// heads picks the dominant patches (top D, ties to the lower index), the rest are merged into C contextual tokens
/// around evenly spaced targets by key cosine, and the D + C rows go through the projector. Which patches were kept
/// stays on the device with the rows (<see cref="ImageRows.Visual"/>) until the report reads it back at the end.
/// </summary>
internal static class VisionZipOnDevice
{
    public static ImageRows Select(IVisualProjector projector, VisionZipPolicy policy, VisionFeatures vision)
    {
        var dv = vision.Device ?? throw new ArgumentException("The vision features are not on the device.", nameof(vision));
        var step = policy.Schedule!.Steps.Single(s => s.AfterLayer == -1);
        if (dv.Cls is null || dv.Keys is null)
            throw new NotSupportedException("VisionZip needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");
        if (vision.Tokens != vision.Patches)
            throw new NotSupportedException("VisionZip needs the 'default' feature strategy (patch tokens without [CLS]).");
        int V = dv.Patches, dim = dv.Hidden;
        int D = Math.Clamp(step.Kept, 0, V), rest = V - D, C = Math.Clamp(step.Recycled, 0, rest);
        int stepSize = C > 0 ? Math.Max(1, rest / C) : 1;
        var backend = dv.Backend;
        using (backend.Enter())
        {
            var mem = backend.Memory;
            var ops = backend.Ops;
            using var score = mem.Allocate<float>(V);
            using var kept = mem.Allocate<int>(V);
            using var dom = mem.Allocate<int>(Math.Max(1, D));
            using var restRows = mem.Allocate<int>(Math.Max(1, rest));
            using var targets = mem.Allocate<int>(Math.Max(1, C));
            using var norms = mem.Allocate<double>(V);
            using var assign = mem.Allocate<int>(Math.Max(1, rest));
            using var merged = mem.Allocate<float>((long)Math.Max(1, D + C) * dim);
            var visual = mem.Allocate<int>(Math.Max(1, D + C));
            try
            {
                ops.ClsSum(dv.Cls.View, dv.Heads, V, score.View);
                ops.TopKPlan(score.View, default, default, kept.View, dom.View, default, new PlanShape(V, D, 0, 0, 0, 0, 0, 0, 0, 0));
                ops.VisionZipMerge(kept.View, dom.View, dv.Keys.View, dv.Features.View, restRows.View, targets.View, norms.View, assign.View, merged.View, visual.View,
                    new ZipShape(V, D, C, dv.Heads, dim, dim, stepSize));
                return ImageRows.OnBackend(backend, projector.Project(DeviceTensor.Of(merged.View), D + C), DeviceTensor.Owning(visual, D + C), D + C, projector.Hidden);
            }
            catch
            {
                visual.Dispose();
                throw;
            }
        }
    }
}
