namespace AutoPrune.Loading;

/// <summary>Reads a checkpoint folder's files through <see cref="InputFile"/>, turning failures into <see cref="ModelLoadException"/>.</summary>
internal static class ModelFiles
{
    private const string What = "Model file";

    public static byte[] ReadBytes(string path, long maxBytes, string limitName)
        => Wrap(path, () => InputFile.ReadAllBytes(path, maxBytes, What, limitName));

    public static string ReadText(string path, long maxBytes, string limitName)
        => Wrap(path, () => InputFile.ReadAllText(path, maxBytes, What, limitName));

    /// <summary>A regular file opened for reading, with no size limit (memory-mapped shards).</summary>
    public static FileStream OpenRegular(string path) => Wrap(path, () => InputFile.OpenRegular(path, What));

    private static T Wrap<T>(string path, Func<T> read)
    {
        try { return read(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelLoadException(e is InputFileException ? e.Message : $"Cannot read '{path}': {e.Message}", path, null, e);
        }
    }
}
