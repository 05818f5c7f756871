namespace AutoPrune.Pruning;

/// <summary>
/// Which requests each pruning method can serve, and what happens when it cannot: the one place that decides it.
/// A method asked for by the request itself that cannot serve it is a <see cref="NotSupportedException"/> naming the
/// method and the reason; a default method (from <see cref="ModelOptions.DefaultPruning"/>,
/// <see cref="VisionRequest.DefaultPruning"/> or an adapter's or the CLI's configuration) falls back to
/// <see cref="PruningMethod.None"/> and the report's notes say why.
/// </summary>
public static class PruningCapabilities
{
    /// <summary>Whether <paramref name="method"/> can prune a request of this shape; if not, why (a clause such as "the request has no image").</summary>
    public static bool CanServe(PruningMethod method, PruningRequestShape request, out string? reason)
        => CanServe(new PruningOptions { Method = method }, request, out reason);

    /// <summary>
    /// Whether <paramref name="options"/>' method, with those options, can prune a request of this shape on a model
    /// providing <see cref="PruningRequestShape.Signals"/>; if not, why (naming the missing signal).
    /// </summary>
    public static bool CanServe(PruningOptions options, PruningRequestShape request, out string? reason)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegative(request.Images);
        var method = options.Method;
        var missing = PruningSignalNeeds.Of(options) & ~request.Signals;
        reason = method == PruningMethod.None ? null
            : request.Images == 0 ? "the request has no image, so there are no visual tokens to prune"
            : request.Images > 1 ? $"it prunes the visual tokens of one image per request and the request has {request.Images}"
            : missing != PruningSignals.None ? $"it reads {PruningSignalNeeds.Describe(missing)}, which this model does not provide"
            : null;
        return reason is null;
    }

    /// <summary>
    /// The pruning a request runs with: <paramref name="requested"/> (must serve the request) or else
    /// <paramref name="fallback"/> (falls back to None with a note when it cannot); neither means None.
    /// </summary>
    /// <exception cref="NotSupportedException">The requested method cannot serve the request.</exception>
    internal static (PruningOptions Options, string? Note) Resolve(PruningOptions? requested, PruningOptions? fallback, PruningRequestShape request)
    {
        if (requested is not null)
        {
            if (CanServe(requested, request, out var reason)) return (requested, null);
            throw new NotSupportedException(
                $"Pruning method '{PruningMethods.Name(requested.Method)}' cannot serve this request: {reason}. Use method 'none' (or leave the method unset to use the default).");
        }
        var chosen = fallback ?? new PruningOptions();
        if (CanServe(chosen, request, out var why)) return (chosen, null);
        return (chosen with { Method = PruningMethod.None },
            $"The default method '{PruningMethods.Name(chosen.Method)}' cannot serve this request ({why}); it ran unpruned (method none).");
    }
}
