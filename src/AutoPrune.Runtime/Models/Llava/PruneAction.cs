namespace AutoPrune.Models.Llava;

/// <summary>What a prefill hook (a pruning policy) may do after a layer: keep some rows and add merged ones.</summary>
/// <param name="NewRows">New sequence, in order: a value i &gt;= 0 takes current row i; a value -j-1 takes <paramref name="ExtraRows"/> row j.</param>
/// <param name="ExtraRows">Merged token hidden states [count, Hidden], or null.</param>
/// <param name="RenumberPositions">Renumber positions 0..n-1 (PDrop, AutoPrune) instead of keeping the original ones (FastV, AdaptPrune).</param>
internal sealed record PruneAction(int[] NewRows, float[]? ExtraRows, bool RenumberPositions);
