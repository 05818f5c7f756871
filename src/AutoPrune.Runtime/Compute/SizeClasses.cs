namespace AutoPrune.Compute;

/// <summary>
/// The size classes the buffer pools round requests up to (<see cref="Cuda.DeviceArena"/> on the device,
/// <see cref="Cpu.HostMemoryPool"/> on the host), so that slightly different prompt lengths, and a pruned layer's
/// shorter cache, reuse the same buffers.
/// </summary>
internal static class SizeClasses
{
    private const long SmallClassLimit = 1 << 20, LargeClassStep = 2 << 20;

    /// <summary>Size class of a request: the next power of two up to 1 MiB (at least 256 bytes), then the next multiple of 2 MiB.</summary>
    public static long Bytes(long bytes)
    {
        if (bytes <= 256) return 256;
        if (bytes <= SmallClassLimit) return 1L << (64 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(bytes - 1)));
        return (bytes + LargeClassStep - 1) / LargeClassStep * LargeClassStep;
    }
}
