using ILGPU;

namespace AutoPrune.Compute;

/// <summary>What a prefill hook (a pruning policy) may do after a layer: keep some rows and add merged ones.</summary>
/// <param name="NewRows">New sequence, in order: a value i &gt;= 0 takes current row i; a value -j-1 takes <paramref name="ExtraRows"/> row j.</param>
/// <param name="ExtraRows">Merged token hidden states [count, Hidden], or null.</param>
/// <param name="RenumberPositions">Renumber positions 0..n-1 (PDrop, AutoPrune) instead of keeping the original ones (FastV, AdaptPrune).</param>
internal sealed record PruneAction(int[] NewRows, float[]? ExtraRows, bool RenumberPositions)
{
    /// <summary>A prune decided on the device (<see cref="NewRows"/> is then empty): its plan and merged rows stay there.</summary>
    public DevicePrunePlan? OnDevice { get; init; }

    public static PruneAction FromDevice(DevicePrunePlan plan, bool renumber) => new([], null, renumber) { OnDevice = plan };
}

/// <summary>
/// A prune computed by kernels: <paramref name="Plan"/> holds the new rows with <see cref="PruneAction.NewRows"/>'s
/// meaning, <paramref name="Extra"/> the merged rows ([<paramref name="ExtraRows"/>, Hidden]). The host knows the sizes
/// (from the schedule) but not the rows, which never come back.
/// </summary>
/// <param name="Rows">Length of the new sequence.</param>
/// <param name="VisualRun">Visual rows after the prefix in the new sequence (kept + merged).</param>
internal sealed record DevicePrunePlan(ArrayView<int> Plan, int Rows, int VisualRun, ArrayView<float> Extra, int ExtraRows);
