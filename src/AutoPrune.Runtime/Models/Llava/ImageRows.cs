using AutoPrune.Models.Llava.Cuda;

using AutoPrune.Compute.Cuda;

namespace AutoPrune.Models.Llava;

/// <summary>
/// One image's rows for the decoder ([Rows, Hidden], the projector's output): host memory on the CPU backend, device
/// memory on a GPU, with an explicit copy to the host. <see cref="Visual"/> names each row's patch when the rows are not
/// simply patches 0..Rows-1 (VisionZip's selection, made on the device).
/// </summary>
internal sealed class ImageRows : IDisposable
{
    private float[]? _host;

    private ImageRows(float[]? host, DeviceBuffer<float>? device, DeviceBuffer<int>? visual, Func<float[]>? copy, Action? release, int rows, int hidden)
    {
        _host = host; Device = device; Visual = visual; _copy = copy; _release = release; Rows = rows; Hidden = hidden;
    }

    private readonly Func<float[]>? _copy;
    private Action? _release;

    public int Rows { get; }
    public int Hidden { get; }
    public DeviceBuffer<float>? Device { get; }
    public DeviceBuffer<int>? Visual { get; }

    /// <summary>
    /// The rows were chosen before the LLM and keep their original RoPE positions (their patches' places in the full image
    /// run); with <see cref="Visual"/> on the device the prompt builder computes the positions there.
    /// </summary>
    public bool OriginalPositions { get; set; }

    public static ImageRows OnHost(float[] rows, int hidden)
    {
        if (hidden < 1 || rows.Length % hidden != 0) throw new ArgumentException($"{rows.Length} values are not rows of {hidden}.", nameof(rows));
        return new(rows, null, null, null, null, rows.Length / hidden, hidden);
    }

    /// <param name="release">Returns the device buffers (under the device's lock).</param>
    internal static ImageRows OnDevice(DeviceBuffer<float> rows, DeviceBuffer<int>? visual, Func<float[]> copyToHost, Action release, int count, int hidden)
        => new(null, rows, visual, copyToHost, release, count, hidden);

    /// <summary>The first <paramref name="rows"/> rows, sharing the memory (the result releases nothing; this one still owns it).</summary>
    public ImageRows FirstRows(int rows)
    {
        if (rows < 0 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"An image of {Rows} rows.");
        if (Device is null) return OnHost(ToHost().AsSpan(0, rows * Hidden).ToArray(), Hidden);
        return new(null, Device, Visual, () => ToHost().AsSpan(0, rows * Hidden).ToArray(), null, rows, Hidden);
    }

    /// <summary>The rows on the host: the array itself on the CPU, a (counted) copy from a GPU.</summary>
    public float[] ToHost() => _host ??= _copy!();

    public void Dispose() => Interlocked.Exchange(ref _release, null)?.Invoke();
}
