using System.Globalization;
using System.Text.Json;
using AutoPrune.Pruning;

namespace AutoPrune.SemanticKernel;

/// <summary>Parsing of the <c>method</c> and <c>budget</c> knobs shared by every adapter surface.</summary>
public static class PruningKnobs
{
    /// <summary><c>ChatOptions.AdditionalProperties</c> key of the pruning method ("none", "fastv", "autoprune", ...).</summary>
    public const string MethodKey = "method";

    /// <summary><c>ChatOptions.AdditionalProperties</c> key of the visual-token budget (&gt;= 1 tokens, (0, 1) a fraction).</summary>
    public const string BudgetKey = "budget";

    /// <summary>Alias of <see cref="MethodKey"/>, the name Semantic Kernel settings use.</summary>
    public const string PruningMethodKey = "pruning_method";

    /// <summary><c>ChatResponse.AdditionalProperties</c> key of the answer's <see cref="PruningReport"/>.</summary>
    public const string ReportKey = "autoprune.report";

    /// <summary>The lower-case name of a method as the knobs spell it ("none", "fastv", "sparsevlm", ...).</summary>
    public static string Name(PruningMethod method) => method.ToString().ToLowerInvariant();

    /// <summary>Parses a method name, case-insensitively, ignoring '-', '_' and spaces ("Sparse-VLM" = "sparsevlm").</summary>
    /// <exception cref="ArgumentException">The name is not a pruning method; the message lists the valid ones.</exception>
    public static PruningMethod ParseMethod(string? text, string? what = null)
    {
        var key = new string((text ?? "").Where(c => c is not ('-' or '_' or ' ')).ToArray());
        foreach (var m in Enum.GetValues<PruningMethod>())
            if (string.Equals(key, m.ToString(), StringComparison.OrdinalIgnoreCase)) return m;
        throw new ArgumentException(
            $"Unknown pruning method '{text}'{(what is null ? "" : $" in '{what}'")}: expected one of {string.Join(", ", Enum.GetValues<PruningMethod>().Select(Name))}.",
            what ?? nameof(text));
    }

    /// <summary>Reads a method from a string, enum, or JSON string value.</summary>
    internal static PruningMethod ReadMethod(object? value, string key) => value switch
    {
        PruningMethod m => m,
        string s => ParseMethod(s, key),
        JsonElement { ValueKind: JsonValueKind.String } e => ParseMethod(e.GetString(), key),
        _ => throw new ArgumentException($"'{key}' must be a pruning method name such as \"autoprune\" (got {Describe(value)}).", key),
    };

    /// <summary>Reads a budget from a number, numeric string, or JSON number/string, and checks it is positive.</summary>
    internal static double ReadBudget(object? value, string key)
    {
        double b = value switch
        {
            double d => d,
            float f => f,
            int i => i,
            long l => l,
            decimal m => (double)m,
            short s => s,
            string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
            JsonElement { ValueKind: JsonValueKind.Number } e => e.GetDouble(),
            JsonElement { ValueKind: JsonValueKind.String } e when double.TryParse(e.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
            _ => throw new ArgumentException($"'{key}' must be a number (got {Describe(value)}).", key),
        };
        CheckBudget(b, key);
        return b;
    }

    internal static void CheckBudget(double budget, string key)
    {
        if (!double.IsFinite(budget) || budget <= 0)
            throw new ArgumentOutOfRangeException(key, budget, $"'{key}' must be > 0: a number of visual tokens (>= 1) or a fraction in (0, 1).");
    }

    private static string Describe(object? v) => v is null ? "null" : $"{v} of type {v.GetType().Name}";
}
