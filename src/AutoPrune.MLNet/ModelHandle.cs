namespace AutoPrune.MLNet;

/// <summary>
/// The stage's model: one given by the caller (never released here), or one the stage loads from a folder on first use
/// and releases on <see cref="Release"/>. A released model is loaded again if the stage is used again: ML.NET's
/// PredictionEngine disposes the transformer it was made from, and a stage shared with other pipelines must survive that.
/// </summary>
internal sealed class ModelHandle
{
    private readonly VisionLanguageModel? _given;
    private readonly string? _directory;
    private readonly ModelOptions? _options;
    private readonly Lock _lock = new();
    private VisionLanguageModel? _loaded;

    public ModelHandle(VisionLanguageModel model) => _given = model;

    public ModelHandle(string directory, ModelOptions options)
    {
        _directory = directory;
        _options = options;
    }

    /// <summary>Whether a model is there without loading one (always true for a given model).</summary>
    public bool IsLoaded => _given is not null || Volatile.Read(ref _loaded) is not null;

    /// <summary>The model, loading it now if needed.</summary>
    /// <exception cref="Loading.ModelLoadException">The folder's checkpoint cannot be loaded.</exception>
    public VisionLanguageModel Get()
    {
        if (_given is not null) return _given;
        if (Volatile.Read(ref _loaded) is { } model) return model;
        lock (_lock)
            return _loaded ??= VisionLanguageModel.Load(_directory!, _options);
    }

    /// <summary>Releases a model the stage loaded (its memory); a given model is left alone.</summary>
    public void Release()
    {
        VisionLanguageModel? model;
        lock (_lock)
        {
            model = _loaded;
            _loaded = null;
        }
        model?.Dispose();
    }
}
