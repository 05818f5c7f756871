using Microsoft.ML;

namespace AutoPrune.MLNet;

/// <summary>
/// Estimator of the visual-question stage. Nothing is trained: <see cref="Fit"/> validates the schema and the
/// configuration (model folder and config.json, device, the pruning budget on that model) and returns the transformer;
/// a model given by directory is loaded on the first answered row.
/// </summary>
public sealed class VisualQuestionEstimator : IEstimator<VisualQuestionTransformer>
{
    private readonly string _output, _image, _question;
    private readonly string? _modelDirectory;
    private readonly VisionLanguageModel? _model;
    private readonly VisualQuestionOptions _options;

    internal VisualQuestionEstimator(string outputColumnName, string imageColumnName, string questionColumnName,
        string? modelDirectory, VisionLanguageModel? model, VisualQuestionOptions? options)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(outputColumnName);
        ArgumentException.ThrowIfNullOrWhiteSpace(imageColumnName);
        ArgumentException.ThrowIfNullOrWhiteSpace(questionColumnName);
        if (model is null && string.IsNullOrWhiteSpace(modelDirectory))
            throw new ArgumentException("A model directory or a loaded VisionLanguageModel is required.", nameof(modelDirectory));
        _output = outputColumnName; _image = imageColumnName; _question = questionColumnName;
        _modelDirectory = modelDirectory is null ? null : Path.GetFullPath(modelDirectory);
        _model = model; _options = options ?? new VisualQuestionOptions();
        if (_options.Generation is null) throw new ArgumentException("VisualQuestionOptions.Generation must not be null.", nameof(options));
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        SchemaChecks.Check(inputSchema, _image, _question);
        return SchemaChecks.Append(inputSchema, _output);
    }

    /// <exception cref="ArgumentOutOfRangeException">A column is missing or has the wrong type.</exception>
    /// <exception cref="ArgumentException">The model folder, its config.json, the device or the pruning budget cannot work (all problems listed).</exception>
    public VisualQuestionTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.Check(input.Schema, _image, _question);
        if (_model is not null)
        {
            if (_options.Pruning is { } pruning) _model.ValidatePruning(pruning);
            return new VisualQuestionTransformer(_output, _image, _question, new ModelHandle(_model), null, _options);
        }
        string dir = _modelDirectory!;
        var modelOptions = _options.ModelOptions ?? new ModelOptions();
        var problems = VisionLanguageModel.Validate(dir, modelOptions with { DefaultPruning = _options.Pruning ?? modelOptions.DefaultPruning });
        if (problems.Count > 0)
            throw new ArgumentException($"AnswerVisualQuestion cannot use the model in '{dir}': {string.Join(" ", problems)}", "modelDirectory");
        return new VisualQuestionTransformer(_output, _image, _question, new ModelHandle(dir, modelOptions), dir, _options);
    }
}
