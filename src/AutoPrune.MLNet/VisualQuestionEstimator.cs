using Microsoft.ML;

namespace AutoPrune.MLNet;

/// <summary>
/// Estimator of the visual-question stage. Nothing is trained: <see cref="Fit"/> validates the schema and returns the
/// transformer at once (the model is loaded on the first answered row when a directory was given).
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

    public VisualQuestionTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.Check(input.Schema, _image, _question);
        if (_model is not null)
            return new VisualQuestionTransformer(_output, _image, _question, new Lazy<VisionLanguageModel>(_model), ownsModel: false, null, _options);
        string dir = _modelDirectory!;
        var modelOptions = _options.ModelOptions;
        return new VisualQuestionTransformer(_output, _image, _question,
            new Lazy<VisionLanguageModel>(() => VisionLanguageModel.Load(dir, modelOptions), LazyThreadSafetyMode.ExecutionAndPublication),
            ownsModel: true, dir, _options);
    }
}
