namespace AutoPrune.Pruning;

/// <summary>Builds <see cref="PruningReport"/>s from solved schedules.</summary>
internal static class PruningReports
{
    /// <param name="prefixTokens">Tokens before the image.</param>
    /// <param name="textTokens">Tokens after the image.</param>
    /// <param name="keptIndicesPerLayer">Original visual indices each layer processed (from the runtime); null for none.</param>
    /// <param name="extraSignals">Runtime signals (e.g. measured MI0) merged over the schedule's.</param>
    public static PruningReport Create(
        LayerSchedule schedule,
        ModelShape shape,
        int prefixTokens,
        int textTokens,
        double budgetAsked,
        IReadOnlyList<int[]>? keptIndicesPerLayer = null,
        IReadOnlyDictionary<string, double>? extraSignals = null,
        IEnumerable<string>? extraNotes = null)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        ArgumentNullException.ThrowIfNull(shape);
        if (prefixTokens < 0) throw new ArgumentOutOfRangeException(nameof(prefixTokens));
        if (textTokens < 0) throw new ArgumentOutOfRangeException(nameof(textTokens));
        var processed = (int[])schedule.Processed.Clone();
        double flops = FlopsModel.Prefill(shape, prefixTokens, textTokens, processed);
        double unpruned = FlopsModel.Unpruned(shape, prefixTokens, textTokens);
        var signals = new Dictionary<string, double>(schedule.Signals, StringComparer.Ordinal);
        if (extraSignals is not null) foreach (var (key, value) in extraSignals) signals[key] = value;
        var notes = new List<string>(schedule.Notes);
        if (extraNotes is not null) notes.AddRange(extraNotes);
        return new PruningReport(
            schedule.Method,
            budgetAsked,
            schedule.Accounting,
            schedule.AchievedProcessed,
            schedule.AchievedPublished,
            processed,
            flops,
            unpruned,
            flops / unpruned,
            keptIndicesPerLayer ?? [],
            signals,
            notes);
    }
}
