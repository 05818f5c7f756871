using AutoPrune.Pruning;

namespace AutoPrune.MLNet;

/// <summary>Knobs of the <c>AnswerVisualQuestion</c> pipeline stage.</summary>
public sealed record VisualQuestionOptions
{
    /// <summary>How each answer is generated (greedy, 64 new tokens by default).</summary>
    public GenerationOptions Generation { get; init; } = new();

    /// <summary>Visual-token pruning for every row; null uses the model's <see cref="ModelOptions.DefaultPruning"/>.</summary>
    public PruningOptions? Pruning { get; init; }

    /// <summary>Options used when the stage loads the model from a directory itself (ignored for a model you pass in).</summary>
    public ModelOptions? ModelOptions { get; init; }

    /// <summary>Folder that relative image paths in a text image column are resolved against; null means the current directory.</summary>
    public string? ImageFolder { get; init; }
}

/// <summary>Names of the columns the stage adds, all derived from the output column name.</summary>
public static class VisualQuestionColumns
{
    /// <summary>Average number of visual tokens each decoder layer processed (float; NaN on a failed row).</summary>
    public static string KeptVisualTokens(string outputColumnName) => outputColumnName + "_KeptVisualTokens";

    /// <summary>Prefill FLOPs relative to the unpruned model (float; NaN on a failed row).</summary>
    public static string FlopsRatio(string outputColumnName) => outputColumnName + "_FlopsRatio";

    /// <summary>Prefill wall time in milliseconds (float; NaN on a failed row).</summary>
    public static string PrefillMs(string outputColumnName) => outputColumnName + "_PrefillMs";

    /// <summary>Why the row has no answer (text; empty when the row was answered).</summary>
    public static string Error(string outputColumnName) => outputColumnName + "_Error";
}
