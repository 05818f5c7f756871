namespace AutoPrune.Extensions.AI;

/// <summary>
/// The models of one dependency-injection container, one per configuration (model folder and runtime options), so every
/// registration on the same configuration (the IChatClient, the Semantic Kernel service, VisionLanguageModel for an
/// ML.NET stage) shares one loaded model. Models load on first use and are disposed with the container.
/// </summary>
internal sealed class AutoPruneModelCache : IDisposable
{
    private readonly Dictionary<(string Directory, ModelOptions Options), Lazy<VisionLanguageModel>> _models = new();
    private readonly Lock _lock = new();
    private bool _disposed;

    /// <summary>The (lazily loaded) model for these settings.</summary>
    public Lazy<VisionLanguageModel> Get(AutoPruneChatClientOptions options)
    {
        var key = (Path.GetFullPath(options.ModelDirectory!), options.ToModelOptions());
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_models.TryGetValue(key, out var model))
            {
                model = new Lazy<VisionLanguageModel>(() => VisionLanguageModel.Load(key.Item1, key.Item2), LazyThreadSafetyMode.ExecutionAndPublication);
                _models.Add(key, model);
            }
            return model;
        }
    }

    public void Dispose()
    {
        List<Lazy<VisionLanguageModel>> models;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            models = [.. _models.Values];
        }
        foreach (var m in models)
            if (m.IsValueCreated) m.Value.Dispose();
    }
}
