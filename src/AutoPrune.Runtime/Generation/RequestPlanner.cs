using AutoPrune.Models;
using AutoPrune.Pruning;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Generation;

/// <summary>
/// Turns a request into a <see cref="PreparedRequest"/> before it is queued: its values checked, its prompt built by the
/// model's family (images counted from their headers), its context checked, its pruning resolved and its pruning plan
/// solved — once; the prepared request carries the session that runs it. Everything that would fail a request fails
/// here, before any pixel is decoded or any slot taken. Thread-safe.
/// </summary>
internal sealed class RequestPlanner
{
    private readonly ModelRuntime _model;
    private readonly ModelOptions _options;

    public RequestPlanner(ModelRuntime model, ModelOptions options)
    {
        _model = model;
        _options = options;
        MaxPromptTokens = Math.Min(model.ContextLength, options.MaxPromptTokens ?? int.MaxValue);
        MaxPromptChars = RequestValidator.MaxPromptChars(MaxPromptTokens, model.Tokenizer.LongestTokenChars);
    }

    /// <summary>The most tokens a prompt may have.</summary>
    public int MaxPromptTokens { get; }

    /// <summary>The most characters a conversation may have (the token limit times the longest token).</summary>
    public long MaxPromptChars { get; }

    public PreparedRequest Prepare(VisionRequest request)
    {
        // Null parts, shape, length in characters, sampling and pruning values: all before tokenising or reading an image.
        var g = RequestValidator.Validate(request, _options, MaxPromptChars, MaxPromptTokens);
        var plan = _model.Plan(request);
        var ids = plan.Ids;
        var imageTokens = plan.ImageTokens;
        int context = _model.ContextLength, maxPrompt = MaxPromptTokens;
        if (ids.Length > maxPrompt)
            throw new ArgumentException($"The prompt is {ids.Length} tokens long ({request.Images.Count} image(s), {imageTokens.Sum()} visual tokens, and text); the limit is {maxPrompt}.", nameof(request));
        if (_model.SlidingWindow is int window)
        {
            // Attention over the whole cache equals Mistral's windowed attention while the sequence fits the window.
            if (ids.Length > window)
                throw new ArgumentException($"The prompt is {ids.Length} tokens long but the text model attends within a sliding window of {window} tokens (text_config.sliding_window); prompts longer than the window are not supported.", nameof(request));
            context = Math.Min(context, window);
        }
        int maxNew = Math.Min(g.MaxNewTokens, context - ids.Length);
        if (maxNew < 1)
            throw new ArgumentException($"The prompt ({ids.Length} tokens) leaves no room to answer in the model's context of {context} tokens.", nameof(request));
        RequestValidator.CheckResponseFormatBudget(g, maxNew);
        // An explicit method that cannot serve this request is an error; a default one falls back to None with a note.
        var fallback = request.DefaultPruning ?? _options.DefaultPruning;
        var (resolved, note) = PruningCapabilities.Resolve(request.Pruning, fallback,
            new PruningRequestShape(request.Images.Count, _model.MultiViewImages) { Signals = _model.Signals });
        var pruning = WithCalibration(resolved);
        // A pruning method sees the first image's run (for LLaVA-NeXT its size decides how long, and its views); None counts them all.
        var shape = plan.PruningShape ?? (imageTokens.Length > 0 ? _model.Shape with { VisualTokens = imageTokens[0] } : _model.Shape);
        var patches = plan.ImagePatches ?? imageTokens;
        PruningSession Session(PruningOptions options, string? why)
            => new(shape, options, plan.Prefix, patches.Sum(), why is null ? [] : [why]) { Newlines = imageTokens.Sum() - patches.Sum() };
        PruningSession session;
        try
        {
            // The plan is solved here, once: an infeasible budget fails before queueing, and the session runs the request.
            session = Session(pruning, note);
        }
        catch (ArgumentException e) when (pruning.Method != PruningMethod.None && request.Pruning is null && ReferenceEquals(fallback, PruningOptions.Default))
        {
            // The built-in default never fails a request (a configured one does, naming the smallest feasible budget).
            pruning = pruning with { Method = PruningMethod.None };
            note = $"The default pruning ('{PruningMethods.Name(PruningOptions.Default.Method)}', budget {PruningOptions.DefaultBudget:0}) cannot run on this request ({e.Message}); it ran unpruned (method none).";
            session = Session(pruning, note);
        }
        return new PreparedRequest(request with { Generation = g }, ids, maxNew, pruning, note is null ? [] : [note], imageTokens)
        {
            ImagePatches = plan.ImagePatches,
            PruningShape = plan.PruningShape,
            Prefix = plan.Prefix,
            Session = session,
        };
    }

    /// <summary>
    /// AutoPrune's calibration for a request: the one in the options, else the file they name, else the model folder's
    /// <c>autoprune-calibration.json</c> (read at load), else none (the scale-free default).
    /// </summary>
    private PruningOptions WithCalibration(PruningOptions pruning)
    {
        if (pruning.Method != PruningMethod.AutoPrune || pruning.AutoPruneCalibration is not null) return pruning;
        // A named file is read for each request (a small JSON file), so an edited calibration applies at once.
        var calibration = pruning.AutoPruneCalibrationFile is { Length: > 0 } file
            ? AutoPruneCalibration.Load(file, _options.FileLimits.OptionsBytes)
            : _model.Calibration;
        return calibration is null ? pruning : pruning with { AutoPruneCalibration = calibration };
    }

    /// <summary>
    /// A default pruning that was configured, or null for the built-in <see cref="PruningOptions.Default"/>, which is not
    /// checked at load: on a model too small for its budget it runs unpruned with a note.
    /// </summary>
    internal static PruningOptions? Configured(PruningOptions? pruning) => ReferenceEquals(pruning, PruningOptions.Default) ? null : pruning;

    /// <summary>Why <paramref name="pruning"/> cannot run on a model of <paramref name="shape"/> (an infeasible budget), or null.</summary>
    internal static string? CheckPruning(ModelShape shape, PruningOptions? pruning)
    {
        if (pruning is null || pruning.Method == PruningMethod.None) return null;
        try
        {
            _ = new PruningSession(shape, pruning, 0);
            return null;
        }
        catch (ArgumentException e)
        {
            return e.Message;
        }
    }

    /// <summary>The folder's <c>autoprune-calibration.json</c>, checked against the model's shape, or null when there is none.</summary>
    /// <exception cref="Loading.ModelLoadException">The file does not fit the model or is malformed.</exception>
    internal static AutoPruneCalibration? LoadCalibration(string dir, ModelShape shape, ModelOptions options, ILogger log)
    {
        var calibrationPath = Path.Combine(dir, AutoPruneCalibration.FileName);
        if (!File.Exists(calibrationPath)) return null;
        AutoPruneCalibration calibration;
        try
        {
            calibration = AutoPruneCalibration.Load(calibrationPath, options.FileLimits.OptionsBytes);
            calibration.EnsureMatches(shape, $"AutoPrune calibration file '{calibrationPath}'");
        }
        catch (ArgumentException e) { throw new Loading.ModelLoadException(e.Message, dir); }
        log.LogInformation("AutoPrune calibration from {File}: {Signal} in [{Low}, {High}] over {Samples} questions", calibrationPath, calibration.Signal, calibration.Low, calibration.High, calibration.Samples);
        return calibration;
    }
}
