using AutoPrune.Compute;

namespace AutoPrune.Models.Llava;

/// <summary>
/// One image's rows for the decoder ([Rows, Hidden], the projector's output): on the host, or where a backend computes
/// (a GPU's device memory), with an explicit copy to the host. <see cref="Visual"/> names each row's patch when only
/// the backend knows which patches the rows are (VisionZip's selection, made on the device).
/// </summary>
internal sealed class ImageRows : IDisposable
{
    private float[]? _host;
    private readonly Backend? _backend;
    private Tensor? _rows, _visual;
    private readonly bool _owns;

    private ImageRows(float[]? host, Backend? backend, Tensor? rows, Tensor? visual, bool owns, int count, int hidden)
    {
        _host = host; _backend = backend; _rows = rows; _visual = visual; _owns = owns; Rows = count; Hidden = hidden;
    }

    public int Rows { get; }
    public int Hidden { get; }

    /// <summary>The rows where the backend computes (null for rows built on the host).</summary>
    public Tensor? Tensor => _rows;

    /// <summary>Each row's visual index where the backend computes, when the host does not know them (null otherwise).</summary>
    public Tensor? Visual => _visual;

    /// <summary>
    /// The rows were chosen before the LLM and keep their original RoPE positions (their patches' places in the full image
    /// run); with <see cref="Visual"/> on the backend the prompt builder computes the positions there.
    /// </summary>
    public bool OriginalPositions { get; set; }

    public static ImageRows OnHost(float[] rows, int hidden)
    {
        if (hidden < 1 || rows.Length % hidden != 0) throw new ArgumentException($"{rows.Length} values are not rows of {hidden}.", nameof(rows));
        return new(rows, null, null, null, false, rows.Length / hidden, hidden);
    }

    /// <summary>Rows (and visual indices) on <paramref name="backend"/>, owned: disposing gives them back.</summary>
    public static ImageRows OnBackend(Backend backend, Tensor rows, Tensor? visual, int count, int hidden)
        => new(null, backend, rows, visual, true, count, hidden);

    /// <summary>The first <paramref name="rows"/> rows, sharing the memory (the result releases nothing; this one still owns it).</summary>
    public ImageRows FirstRows(int rows)
    {
        if (rows < 0 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"An image of {Rows} rows.");
        if (_rows is null) return OnHost(ToHost().AsSpan(0, rows * Hidden).ToArray(), Hidden);
        return new(null, _backend, _rows.First((long)rows * Hidden), _visual?.First(rows), false, rows, Hidden);
    }

    /// <summary>The rows on the host: the array itself, or a (counted, on a GPU) copy from the backend.</summary>
    public float[] ToHost() => _host ??= _backend!.Download(_rows!.First((long)Rows * Hidden));

    public void Dispose()
    {
        if (!_owns || _backend is null) return;
        var rows = Interlocked.Exchange(ref _rows, null);
        var visual = Interlocked.Exchange(ref _visual, null);
        if (rows is null && visual is null) return;
        using var scope = _backend.Enter();
        rows?.Dispose();
        visual?.Dispose();
    }
}
