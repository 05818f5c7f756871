namespace AutoPrune.Loading;

/// <summary>
/// Raised for every problem found while loading a checkpoint: missing or malformed files,
/// bad headers, wrong shapes or dtypes, unsupported configuration values.
/// The message names the file, the tensor (when there is one) and what was expected vs found.
/// </summary>
public class ModelLoadException : Exception
{
    public ModelLoadException(string message, string? filePath = null, string? tensorName = null, Exception? innerException = null)
        : base(message, innerException)
    {
        FilePath = filePath;
        TensorName = tensorName;
    }

    /// <summary>The file the problem was found in, when known.</summary>
    public string? FilePath { get; }

    /// <summary>The tensor the problem concerns, when there is one.</summary>
    public string? TensorName { get; }
}
