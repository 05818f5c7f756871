using System.Globalization;
using System.Text.Json;
using AutoPrune.Pruning;

namespace AutoPrune.Extensions.AI;

/// <summary>The names of the pruning knobs in <c>ChatOptions.AdditionalProperties</c> and of the report in responses, and how their values are read.</summary>
public static class PruningKnobs
{
    /// <summary><c>ChatOptions.AdditionalProperties</c> key of the pruning method ("none", "fastv", "autoprune", ...; see <see cref="PruningMethods"/>).</summary>
    public const string MethodKey = "method";

    /// <summary><c>ChatOptions.AdditionalProperties</c> key of the visual-token budget (&gt;= 1 tokens, (0, 1) a fraction).</summary>
    public const string BudgetKey = "budget";

    /// <summary>Alias of <see cref="MethodKey"/>, the name Semantic Kernel settings use.</summary>
    public const string PruningMethodKey = "pruning_method";

    /// <summary>Key of the answer's <see cref="PruningReport"/> in a response's, a message's or the last streaming update's <c>AdditionalProperties</c>; read it with <c>GetPruningReport()</c>.</summary>
    public const string ReportKey = "autoprune.report";

    /// <summary>Reads a method from a name, a <see cref="PruningMethod"/>, or a JSON string (as <see cref="PruningMethods.Parse"/> does).</summary>
    /// <exception cref="ArgumentException">Not a method name, or not a name at all; the message names <paramref name="key"/>.</exception>
    public static PruningMethod ReadMethod(object? value, string key) => value switch
    {
        PruningMethod m => m,
        string s => PruningMethods.Parse(s, $"'{key}'"),
        JsonElement { ValueKind: JsonValueKind.String } e => PruningMethods.Parse(e.GetString(), $"'{key}'"),
        _ => throw new ArgumentException($"'{key}' must be a pruning method name such as \"autoprune\" (got {Describe(value)}).", key),
    };

    /// <summary>Reads a budget from a number, a numeric string, or a JSON number or string, and checks that it is positive.</summary>
    /// <exception cref="ArgumentException">Not a positive number; the message names <paramref name="key"/>.</exception>
    public static double ReadBudget(object? value, string key)
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
