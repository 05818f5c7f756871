using AutoPrune.Pruning;

namespace AutoPrune.Extensions.AI;

/// <summary>
/// Settings of an <see cref="AutoPruneChatClient"/>; bindable from the <c>"AutoPrune"</c> configuration section
/// (<c>ModelDirectory</c>, <c>Device</c>, <c>Method</c>, <c>Budget</c>, ...).
/// </summary>
public sealed class AutoPruneChatClientOptions
{
    /// <summary>The configuration section read by the DI registrations when no other section is given.</summary>
    public const string SectionName = "AutoPrune";

    /// <summary>Hugging Face LLaVA checkpoint folder (config.json, safetensors, tokenizer, preprocessor_config.json).</summary>
    public string? ModelDirectory { get; set; }

    /// <summary>"auto" (default), "cpu", "cuda", "cuda:N" or "ilgpu-cpu" (see <see cref="AutoPrune.ModelOptions.Device"/>).</summary>
    public string Device { get; set; } = "auto";

    /// <summary>
    /// Pruning method used when a request does not name one (see <see cref="PruningMethods.Names"/>; "none" prunes
    /// nothing). Null keeps the default, <see cref="PruningOptions.Default"/>'s <c>autoprune</c> (or <see cref="Pruning"/>'s
    /// method). A default never fails a request: one it cannot serve (no image, several images) runs unpruned and the
    /// report's notes say why.
    /// </summary>
    public string? Method { get; set; }

    /// <summary>
    /// Visual-token budget used when a request does not give one: &gt;= 1 tokens, in (0, 1) a fraction of the visual tokens.
    /// Null keeps the default, <see cref="PruningOptions.DefaultBudget"/> (128), or <see cref="Pruning"/>'s budget.
    /// </summary>
    public double? Budget { get; set; }

    /// <summary>
    /// Full pruning options used as the default (every method constant, AutoPrune's calibration), for example what
    /// <c>autoprune recommend</c> writes, bound from the <c>"AutoPrune:Pruning"</c> section. <see cref="Method"/> and
    /// <see cref="Budget"/> override its method and budget; a request's knobs override both.
    /// </summary>
    public PruningOptions? Pruning { get; set; }

    /// <summary>A pruning options file (what <c>autoprune recommend</c> writes) read when the client is created; <see cref="Pruning"/> wins over it.</summary>
    public string? PruningOptionsFile { get; set; }

    /// <summary>Largest number of tokens generated when a request does not set <c>MaxOutputTokens</c>.</summary>
    public int MaxOutputTokens { get; set; } = 64;

    /// <summary>Requests that compute at once on the model; the rest queue. Null keeps the runtime's default.</summary>
    public int? MaxConcurrentRequests { get; set; }

    /// <summary>LLaVA-1.5's original pad-to-square preprocessing.</summary>
    public bool PadToSquare { get; set; }

    /// <summary>The model id reported in responses and metadata; defaults to the model folder's name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Extra runtime options (logging, limits); <see cref="Device"/>, <see cref="PadToSquare"/> and <see cref="MaxConcurrentRequests"/> override its values.</summary>
    public ModelOptions? ModelOptions { get; set; }

    /// <summary>What was wrong with the configuration section these settings were bound from (unknown keys, a bad
    /// <c>Pruning</c> subsection); reported first by <see cref="Validate"/>.</summary>
    internal IReadOnlyList<string> ConfigurationProblems { get; set; } = [];

    internal ModelOptions ToModelOptions()
    {
        var o = (ModelOptions ?? new ModelOptions()) with { Device = Device, PadToSquare = PadToSquare };
        if (MaxConcurrentRequests is int n) o = o with { MaxConcurrentRequests = n };
        return o;
    }

    internal PruningMethod? DefaultMethod => Method is null ? null : PruningMethods.Parse(Method, $"'{SectionName}:{nameof(Method)}'");

    /// <summary>The configured pruning options (<see cref="Pruning"/>, else the <see cref="PruningOptionsFile"/> read now), checked; null when neither is set.</summary>
    /// <exception cref="ArgumentException">The file is missing or invalid, or a field is out of range (the message names it).</exception>
    internal PruningOptions? BasePruning()
    {
        if (Pruning is { } p)
        {
            p.Validate($"'{SectionName}:{nameof(Pruning)}'");
            return p;
        }
        return string.IsNullOrWhiteSpace(PruningOptionsFile) ? null : PruningOptions.Load(PruningOptionsFile);
    }

    /// <summary>
    /// The default pruning this configuration gives a request that names no method: the configured options (else
    /// <see cref="PruningOptions.Default"/>, AutoPrune at 128) with Method and Budget over them; null when nothing is
    /// configured, so the model's <see cref="ModelOptions.DefaultPruning"/> (the same built-in default unless the model
    /// was loaded with another) applies.
    /// </summary>
    internal PruningOptions? DefaultPruning(PruningOptions? basePruning)
    {
        var method = DefaultMethod;
        if (basePruning is null && method is null && Budget is null) return null;
        var d = basePruning ?? PruningOptions.Default;
        if (method is PruningMethod m) d = d with { Method = m };
        return Budget is double b ? d with { Budget = b } : d;
    }

    /// <summary>
    /// What would make the client fail because of these settings, without loading weights: no model directory, a bad
    /// folder or config.json, an unknown method, a budget that is not positive or not feasible for the method on this
    /// model, a device that is not there. The DI registrations run it at start (<c>ValidateOnStart</c>).
    /// </summary>
    /// <returns>One message per problem; empty when the settings are usable.</returns>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>(ConfigurationProblems);
        if (string.IsNullOrWhiteSpace(ModelDirectory))
        {
            problems.Add($"No model directory for the AutoPrune chat client: set '{SectionName}:{nameof(ModelDirectory)}' in configuration or pass it to the registration.");
            return problems;
        }
        if (MaxOutputTokens < 1) problems.Add($"'{SectionName}:{nameof(MaxOutputTokens)}' must be at least 1 (got {MaxOutputTokens}).");
        if (MaxConcurrentRequests is < 1) problems.Add($"'{SectionName}:{nameof(MaxConcurrentRequests)}' must be at least 1 (got {MaxConcurrentRequests}).");
        PruningOptions? pruning = null;
        try
        {
            if (Budget is double b) PruningKnobs.CheckBudget(b, $"{SectionName}:{nameof(Budget)}");
            var d = DefaultPruning(BasePruning());
            if (d is { Method: not PruningMethod.None }) pruning = d;
        }
        catch (ArgumentException e)
        {
            problems.Add(e.Message.Split(" (Parameter '", 2)[0]); // the message names the setting; no .NET parameter tail
        }
        var model = ToModelOptions();
        foreach (var problem in VisionLanguageModel.Validate(ModelDirectory, pruning is null ? model : model with { DefaultPruning = pruning }))
            problems.Add(problem.Replace("ModelOptions.DefaultPruning", $"'{SectionName}:{nameof(Method)}'/'{SectionName}:{nameof(Budget)}'", StringComparison.Ordinal).Split(" (Parameter '", 2)[0]);
        return problems;
    }

    internal string ResolveModelId() =>
        !string.IsNullOrWhiteSpace(ModelId) ? ModelId! :
        string.IsNullOrWhiteSpace(ModelDirectory) ? "autoprune" :
        Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(ModelDirectory)));

    internal AutoPruneChatClientOptions Clone() => (AutoPruneChatClientOptions)MemberwiseClone();
}
