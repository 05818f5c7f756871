using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// SparseVLM on the device: raters from the hidden states (relevance above the mean), the raters' head-averaged
/// attention over the visual columns, top k, and the dropped tokens recycled by density-peak clustering; positions
/// renumbered. The rater count comes back with the prefill's final readback.
/// </summary>
internal sealed class SparseVlmOnDevice(LayerSchedule schedule, PruningOptions options) : IDevicePruner
{
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public bool ReadsAttention(int layer) => DevicePruners.PrunesAfter(schedule, layer);
    public IReadOnlyDictionary<string, double> Signals => _signals;

    public PruneAction AfterLayer(DeviceLayerSignals dev, PruneContext ctx, PruneStep step)
    {
        int v = ctx.VisualCount, t = ctx.TextCount, d = dev.Hidden, k = Math.Clamp(step.Kept, 0, v);
        if (t == 0) throw new InvalidOperationException("SparseVLM needs text tokens after the image.");
        int textStart = ctx.Prefix + v;
        int layer = dev.Layer;
        int dropped = v - k;
        int merged = step.Recycled > 0 && dropped > 0 ? step.Recycled : 0;
        int selected = merged > 0 ? ScheduleMath.RecycleSelected(dropped, options) : 0;
        if (merged > 0 && ScheduleMath.RecycleGroups(dropped, options) != merged)
            throw new InvalidOperationException($"Recycling would produce {ScheduleMath.RecycleGroups(dropped, options)} merged tokens where the schedule expected {merged}.");
        var recycle = new RecycleShape(v, k, selected, merged, options.RecycleDensityNeighbours, d, ctx.Prefix);
        var plan = dev.Scratch<int>(ctx.Prefix + k + merged + t);
        var sel = dev.Scratch<int>(Math.Max(1, selected));
        var (q, keys, shape) = dev.QueryKeys;
        // The relevance, the text rows' attention over the visual columns, and in the last group to finish the raters, top
        // k, plan and the rows to recycle: one launch. The raters' count comes back with the final readback.
        var o = new SparseVlmViews
        {
            Relevance = dev.Scratch<double>(t), Raters = dev.Scratch<int>(t), Count = dev.AtEnd<int>(1, c => _signals[$"raters_layer{layer}"] = c[0]),
            Scores = dev.Scratch<float>(v), Kept = dev.Scratch<int>(v), KeptLocal = dev.Scratch<int>(Math.Max(1, k)), Plan = plan,
            Flags = dev.Scratch<int>(v), Sel = sel,
        };
        dev.Ops.SparseVlm(dev.HiddenStates, dev.Scratch<double>((long)v * t), q, keys, dev.Scratch<float>((long)dev.Heads * t * v), shape, textStart, o,
            new PlanShape(v, k, ctx.Prefix, t, merged, 1, dev.Heads, t, 1, 1), recycle);
        ArrayView<float> mergedRows = default;
        if (merged > 0)
        {
            mergedRows = dev.Scratch<float>((long)merged * d);
            dev.Ops.Recycle(dev.HiddenStates, sel, dev.Scratch<double>((long)selected * selected),
                dev.Scratch<double>(selected), dev.Scratch<float>(selected), dev.Scratch<int>(merged), dev.Scratch<int>(selected), dev.Scratch<int>(selected + merged + 1),
                mergedRows, recycle);
        }
        return DevicePruners.Action(plan, ctx, k, mergedRows, merged, renumber: true);
    }
}
