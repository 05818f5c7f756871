using AutoPrune.Pruning;

namespace AutoPrune.SemanticKernel;

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

    /// <summary>"auto" (default), "cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; set; } = "auto";

    /// <summary>Pruning method used when a request does not name one: "none" (default), "fastv", "pdrop", "sparsevlm", "visionzip", "adaptprune", "autoprune".</summary>
    public string? Method { get; set; }

    /// <summary>Visual-token budget used when a request does not give one: &gt;= 1 tokens, in (0, 1) a fraction of the visual tokens.</summary>
    public double? Budget { get; set; }

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

    internal ModelOptions ToModelOptions()
    {
        var o = (ModelOptions ?? new ModelOptions()) with { Device = Device, PadToSquare = PadToSquare };
        if (MaxConcurrentRequests is int n) o = o with { MaxConcurrentRequests = n };
        return o;
    }

    internal PruningMethod? DefaultMethod => Method is null ? null : PruningKnobs.ParseMethod(Method, nameof(Method));

    internal string ResolveModelId() =>
        !string.IsNullOrWhiteSpace(ModelId) ? ModelId! :
        string.IsNullOrWhiteSpace(ModelDirectory) ? "autoprune" :
        Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(ModelDirectory)));

    internal AutoPruneChatClientOptions Clone() => (AutoPruneChatClientOptions)MemberwiseClone();
}
