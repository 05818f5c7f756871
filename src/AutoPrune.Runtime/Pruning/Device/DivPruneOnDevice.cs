using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Models.Llava;
using ILGPU;

namespace AutoPrune.Pruning.Device;

/// <summary>
/// DivPrune before the LLM on the device (<c>DivPruneSelector</c>): every row projected, the patches' unit rows (fp16)
/// multiplied in one GEMM into cosines, distances quantized to 1/1024 as on the host, the greedy max-min in one group;
/// the chosen rows (after the "full" strategy's [CLS] row) stay on the device with their patches.
/// </summary>
internal static class DivPruneOnDevice
{
    public static ImageRows Select(IVisualProjector projector, VisionFeatures vision, int k, bool originalPositions)
    {
        var dv = vision.Device ?? throw new ArgumentException("The vision features are not on the device.", nameof(vision));
        int cls = dv.Tokens - dv.Patches, V = dv.Patches;
        k = Math.Clamp(k, 0, V);
        var backend = dv.Backend;
        using (backend.Enter())
        {
            using var projected = projector.Project(DeviceTensor.Of(dv.Features.View.SubView(0, (long)dv.Tokens * dv.Hidden)), dv.Tokens);
            var mem = backend.Memory;
            var ops = backend.Ops;
            int d = projector.Hidden;
            var rows = CudaBackend.Dev(projected).F;
            using var keptLocal = mem.Allocate<int>(Math.Max(1, k));
            if (k > 0)
            {
                using var unit = mem.Allocate<ushort>((long)V * d);
                using var norms = mem.Allocate<float>(V);
                using var cos = mem.Allocate<float>((long)V * V);
                using var dist = mem.Allocate<float>((long)V * V);
                using var toSet = mem.Allocate<float>(V);
                using var kept = mem.Allocate<int>(V);
                ops.L2NormalizeRowsToHalf(rows, cls, V, d, unit.View, norms.View);
                backend.Blas.Linear(unit.View, V, d, unit.View, V, cos.View);
                ops.QuantizedDistances(cos.View, dist.View, V, DivPruneSelector.Resolution);
                ops.GreedyMaxMin(dist.View, toSet.View, kept.View, keptLocal.View, V, k);
            }
            return DevicePruners.SelectedRows(backend, projector, rows, keptLocal.View, cls, k, d, project: false, originalPositions);
        }
    }
}
