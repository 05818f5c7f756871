namespace AutoPrune.Models.Llava;

/// <summary>What a prefill hook (a pruning policy) may do after a layer: keep some rows and add merged ones.</summary>
internal sealed record PruneAction(
    /// <summary>New sequence, in order: a value i >= 0 takes current row i; a value -j-1 takes <see cref="ExtraRows"/> row j.</summary>
    int[] NewRows,
    /// <summary>Merged token hidden states [count, Hidden], or null.</summary>
    float[]? ExtraRows,
    /// <summary>Renumber positions 0..n-1 (PDrop, AutoPrune) instead of keeping the original ones (FastV, AdaptPrune).</summary>
    bool RenumberPositions);
