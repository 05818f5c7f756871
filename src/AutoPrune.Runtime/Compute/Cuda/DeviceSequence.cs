
namespace AutoPrune.Compute.Cuda;

/// <summary>
/// A prefill sequence built on the device: hidden states [Rows, Hidden] (fp32), positions and visual indices. A
/// generation's prefill takes it over and returns the buffers to the pool when it ends.
/// </summary>
internal sealed class DeviceSequence(DeviceBuffer<float> hidden, DeviceBuffer<int> positions, DeviceBuffer<int> visual, int rows) : IDisposable
{
    public DeviceBuffer<float> Hidden { get; } = hidden;
    public DeviceBuffer<int> Positions { get; } = positions;
    public DeviceBuffer<int> Visual { get; } = visual;
    public int Rows { get; } = rows;

    /// <summary>The last row's RoPE position (n-1, or more when the rows keep original positions), known on the host.</summary>
    public int LastPosition { get; init; } = rows - 1;

    public void Dispose()
    {
        Hidden.Dispose();
        Positions.Dispose();
        Visual.Dispose();
    }
}
