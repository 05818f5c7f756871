using AutoPrune.Loading;

namespace AutoPrune.Pruning;

/// <summary>
/// The one place that decides which pruning runs on a LLaVA-NeXT (anyres) model while the policies know only
/// single-view images: method None always; another method asked for by the request is refused with a
/// <see cref="NotSupportedException"/>; one that comes from a default (<see cref="ModelOptions.DefaultPruning"/>, or a
/// surface's default such as the CLI's when no <c>--method</c> is given) falls back to None with a note in the report.
/// LLaVA-1.5 models are not affected.
/// </summary>
internal static class AnyResPruningGate
{
    /// <param name="requested">The request's own pruning options (explicit), or null.</param>
    /// <param name="modelDefault">The model's default pruning, used when the request has none.</param>
    /// <returns>The options to run and, when a default was set aside, the note that says so.</returns>
    public static (PruningOptions Options, string? Note) Resolve(LlavaConfig config, PruningOptions? requested, PruningOptions? modelDefault)
    {
        ArgumentNullException.ThrowIfNull(config);
        var chosen = requested ?? modelDefault ?? new PruningOptions();
        if (!config.IsAnyRes || chosen.Method == PruningMethod.None) return (chosen, null);
        if (requested is not null)
            throw new NotSupportedException(
                $"Pruning method {chosen.Method} does not run on LLaVA-NeXT ({LlavaConfig.NextModelType}) models yet: their images are a base view plus tiles, " +
                "which the pruning policies do not handle. Use method None.");
        return (chosen with { Method = PruningMethod.None },
            $"The default pruning method {chosen.Method} does not run on LLaVA-NeXT (anyres) images yet; this request ran unpruned (method None).");
    }
}
