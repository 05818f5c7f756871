using AutoPrune.Compute.Cuda;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Compute;

/// <summary>
/// Turns a device name into a backend: "cpu"; "auto" (CUDA device 0 when the driver, a device and cuBLAS are all
/// present, else the CPU, the log says which and why); "cuda" / "cuda:N" (that GPU, or an error naming what is
/// missing); "ilgpu-cpu" (the GPU code path on ILGPU's CPU accelerator with a host GEMM: slow, for checking the GPU
/// path on a machine without one).
/// </summary>
internal static class DeviceSelector
{
    public const string ExpectedNames = "\"cpu\", \"auto\", \"cuda\", \"cuda:N\" or \"ilgpu-cpu\"";

    /// <summary>Whether <paramref name="device"/> names "auto" (the default).</summary>
    public static bool IsAuto(string? device) => Normalise(device) is "auto" or "";

    /// <summary>
    /// Why <paramref name="device"/> cannot be used on this machine, without opening it (null when it can). "auto" can
    /// always be used (it falls back to the CPU); a named GPU needs the driver, the device and cuBLAS.
    /// </summary>
    public static string? Problem(string? device)
    {
        var d = Normalise(device);
        if (d is "cpu" or "auto" or "" or "ilgpu-cpu") return null;
        if (!d.StartsWith("cuda", StringComparison.Ordinal)) return $"Unknown device '{device}': expected {ExpectedNames}.";
        int index;
        try { index = CudaDevice.ParseIndex(d); }
        catch (ArgumentException e) { return e.Message; }
        var probe = CudaDevice.Probe(index);
        return probe.Usable ? null : $"Device '{device}' was asked for, but it cannot be used: {probe.Problem}.";
    }

    /// <summary>The GPU to run on, or null for the CPU backend.</summary>
    /// <exception cref="NotSupportedException">A named GPU that cannot be used (the message names what is missing).</exception>
    /// <exception cref="ArgumentException">An unknown device name.</exception>
    public static CudaDevice? Open(string? device, ILogger log)
    {
        var d = Normalise(device);
        switch (d)
        {
            case "cpu":
                return null;
            case "ilgpu-cpu":
                return CudaDevice.CreateForTests();
            case "auto" or "":
            {
                var probe = CudaDevice.Probe(0);
                if (!probe.Usable)
                {
                    log.LogInformation("Device auto: {Probe}; running on the CPU", probe.Describe());
                    return null;
                }
                try
                {
                    var gpu = CudaDevice.Open("cuda:0");
                    log.LogInformation("Device auto: running on {Gpu}", gpu.Description);
                    return gpu;
                }
                catch (Exception e)
                {
                    log.LogWarning("Device auto: {Probe} could not be opened ({Error}); running on the CPU", probe.Describe(), e.Message);
                    return null;
                }
            }
        }
        if (d.StartsWith("cuda", StringComparison.Ordinal))
            return CudaDevice.Open(d); // throws NotSupportedException naming the missing piece
        throw new ArgumentException($"Unknown device '{device}': expected {ExpectedNames}.", nameof(device));
    }

    private static string Normalise(string? device) => (device ?? "").Trim().ToLowerInvariant();
}
