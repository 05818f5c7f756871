namespace AutoPrune.Compute;

/// <summary>The activations of the vision tower's MLP and the projector (config.json's <c>hidden_act</c> / <c>projector_hidden_act</c>).</summary>
internal enum ActivationFunction
{
    /// <summary><c>quick_gelu</c>: x·σ(1.702x), CLIP's.</summary>
    QuickGelu,

    /// <summary><c>gelu</c>: the exact (erf) GELU.</summary>
    Gelu,
}

/// <summary>Config names of <see cref="ActivationFunction"/>, parsed once when a config is loaded.</summary>
internal static class ActivationFunctions
{
    /// <summary>The config names, in the order of the enum.</summary>
    public static readonly string[] Names = ["quick_gelu", "gelu"];

    /// <summary>The activation a config names; null when it names none of <see cref="Names"/>.</summary>
    public static ActivationFunction? TryParse(string? name) => Array.IndexOf(Names, name) is int i and >= 0 ? (ActivationFunction)i : null;

    /// <summary>The activation a validated config names.</summary>
    /// <exception cref="NotSupportedException">An activation the config validation should have refused.</exception>
    public static ActivationFunction Parse(string? name, string field) => TryParse(name)
        ?? throw new NotSupportedException($"{field} '{name}' is not supported (supported: {string.Join(", ", Names)}).");
}
