using Microsoft.ML;
using Microsoft.ML.Data;

namespace AutoPrune.MLNet;

/// <summary>
/// Answers a question about an image on every row, lazily: nothing is computed until a cursor reads one of the
/// output columns, and only the current row's image is held. Thread-safe; parallel cursors share the model.
/// <see cref="Dispose"/> releases the model only when the stage loaded it itself (from a directory), and the stage stays
/// usable (it loads the model again if it is used again), because ML.NET's PredictionEngine disposes its transformer.
/// </summary>
public sealed class VisualQuestionTransformer : ITransformer, IDisposable
{
    private readonly ModelHandle _model;

    internal VisualQuestionTransformer(string outputColumnName, string imageColumnName, string questionColumnName,
        ModelHandle model, string? modelDirectory, VisualQuestionOptions options)
    {
        OutputColumnName = outputColumnName; ImageColumnName = imageColumnName; QuestionColumnName = questionColumnName;
        _model = model; ModelDirectory = modelDirectory; Options = options;
    }

    public string OutputColumnName { get; }
    public string ImageColumnName { get; }
    public string QuestionColumnName { get; }
    /// <summary>The folder the model is loaded from, when the stage loads it itself; null for a model passed in.</summary>
    public string? ModelDirectory { get; }
    public VisualQuestionOptions Options { get; }

    /// <summary>The model (loaded on first use when the stage was given a directory).</summary>
    public VisionLanguageModel Model => _model.Get();

    public bool IsRowToRowMapper => true;

    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        SchemaChecks.Check(inputSchema, ImageColumnName, QuestionColumnName);
        return SchemaChecks.Append(inputSchema, OutputColumnName);
    }

    /// <summary>Returns a lazy view over <paramref name="input"/>; no row is answered here.</summary>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var kind = SchemaChecks.Check(input.Schema, ImageColumnName, QuestionColumnName);
        return new VisualQuestionDataView(this, input, kind);
    }

    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var kind = SchemaChecks.Check(inputSchema, ImageColumnName, QuestionColumnName);
        return new VisualQuestionRowMapper(this, inputSchema, kind);
    }

    /// <summary>
    /// ML.NET can only load transformers its own assemblies register (its loader attribute and load context are
    /// internal), so a pipeline holding this stage cannot be saved with <c>mlContext.Model.Save</c>.
    /// </summary>
    void ICanSaveModel.Save(ModelSaveContext ctx) => throw new NotSupportedException(SaveNotSupportedMessage);

    internal const string SaveNotSupportedMessage =
        "The AnswerVisualQuestion stage cannot be saved with mlContext.Model.Save: ML.NET only loads transformers that its " +
        "own assemblies register (LoadableClassAttribute, ModelLoadContext and the ModelSaveContext writers are internal), " +
        "and the stage holds no trained state anyway. Save the pipeline before this stage with mlContext.Model.Save, keep the " +
        "model directory and VisualQuestionOptions in your own configuration, and after loading append the stage again with " +
        "mlContext.Transforms.AnswerVisualQuestion(...).Fit(data) - fitting is instant and trains nothing.";

    internal VisionLanguageModel GetModelForRow() => Model;

    /// <summary>Whether the model has been loaded (or was given); false until the first row is answered.</summary>
    internal bool IsModelLoaded => _model.IsLoaded;

    /// <summary>Releases the model if the stage loaded it (a model you passed in is yours to dispose); the stage stays usable.</summary>
    public void Dispose() => _model.Release();
}
