namespace AutoPrune.Loading;

/// <summary>
/// Thrown when a model folder cannot be loaded: a missing, unreadable or corrupt file, or a tensor
/// that is missing or does not have the expected shape or type. The message names what was expected.
/// </summary>
public class ModelLoadException : Exception
{
    public ModelLoadException(string message, string? filePath = null, string? tensorName = null, Exception? inner = null)
        : base(message, inner)
    {
        FilePath = filePath;
        TensorName = tensorName;
    }

    /// <summary>The file that failed to load, when known.</summary>
    public string? FilePath { get; }

    /// <summary>The tensor that failed to load, when known.</summary>
    public string? TensorName { get; }
}
