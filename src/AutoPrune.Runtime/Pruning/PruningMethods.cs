namespace AutoPrune.Pruning;

/// <summary>
/// The names of the pruning methods: the one parser every surface (CLI, configuration, chat options, Semantic Kernel
/// settings) uses, so a method added to <see cref="PruningMethod"/> is accepted everywhere at once.
/// </summary>
public static class PruningMethods
{
    /// <summary>Every method, in declaration order.</summary>
    public static IReadOnlyList<PruningMethod> All { get; } = Enum.GetValues<PruningMethod>();

    /// <summary>The lower-case names ("none", "fastv", "sparsevlm", ...), in declaration order.</summary>
    public static IReadOnlyList<string> Names { get; } = All.Select(Name).ToArray();

    /// <summary>The lower-case name of a method, as configuration, chat options and the CLI spell it.</summary>
    public static string Name(PruningMethod method) => method.ToString().ToLowerInvariant();

    /// <summary>Parses a method name: case-insensitive, ignoring '-', '_' and spaces ("Sparse-VLM" = "sparsevlm"). Numbers are not names.</summary>
    public static bool TryParse(string? text, out PruningMethod method)
    {
        var key = new string((text ?? "").Where(c => c is not ('-' or '_' or ' ')).ToArray());
        foreach (var m in All)
            if (string.Equals(key, m.ToString(), StringComparison.OrdinalIgnoreCase))
            {
                method = m;
                return true;
            }
        method = default;
        return false;
    }

    /// <summary>Parses a method name as <see cref="TryParse"/> does.</summary>
    /// <param name="text">The name.</param>
    /// <param name="source">Where the name came from ("--method", "AutoPrune:Method", ...), for the error message.</param>
    /// <exception cref="ArgumentException">Not a method name; the message lists the valid ones.</exception>
    public static PruningMethod Parse(string? text, string? source = null)
    {
        if (TryParse(text, out var method)) return method;
        throw new ArgumentException(
            $"Unknown pruning method '{text}'{(source is null ? "" : $" in {source}")}: expected one of {string.Join(", ", Names)}.",
            source ?? nameof(text));
    }
}
