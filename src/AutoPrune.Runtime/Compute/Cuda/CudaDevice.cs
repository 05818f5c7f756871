using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using IlgpuCudaDevice = ILGPU.Runtime.Cuda.CudaDevice;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// What <see cref="CudaDevice.Probe"/> found on this machine. Never throws; <see cref="Problem"/> names what
/// is missing (null when the device is usable).
/// </summary>
internal sealed record CudaProbe(
    bool DriverFound,
    int DeviceCount,
    int Index,
    string? DeviceName,
    int ComputeMajor,
    int ComputeMinor,
    string? CuBlasLibrary,
    string? Problem)
{
    /// <summary>True when the driver, device <see cref="Index"/> and a cuBLAS library are all present.</summary>
    public bool Usable => Problem is null;

    /// <summary>One line for logs and reports.</summary>
    public string Describe() => Usable
        ? $"cuda:{Index} {DeviceName} (compute {ComputeMajor}.{ComputeMinor}, {CuBlasLibrary})"
        : $"cuda:{Index} not usable: {Problem}";
}

/// <summary>
/// An ILGPU context plus one accelerator: a CUDA GPU (<see cref="Open"/>) or, for tests on machines without a
/// GPU, ILGPU's CPU accelerator (<see cref="CreateForTests"/>). The kernels in <see cref="CudaKernels"/> run on either.
/// </summary>
/// <remarks>
/// Only the CPU-accelerator path has been executed (the development machine has no GPU). <see cref="Open"/> on a
/// real NVIDIA GPU is untested.
/// </remarks>
internal sealed class CudaDevice : IDisposable
{
    /// <summary>Names tried for the CUDA driver library (Linux first, then Windows).</summary>
    internal static readonly string[] DriverLibraryNames = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"];

    public Context Context { get; }
    public Accelerator Accelerator { get; }
    /// <summary>True on a CUDA GPU, false on ILGPU's CPU accelerator.</summary>
    public bool IsCuda { get; }
    /// <summary>"cuda:N NAME (compute X.Y, libcublas...)" or "ILGPU CPU accelerator (tests)".</summary>
    public string Description { get; }
    /// <summary>The cuBLAS library file that was found (null on the CPU accelerator).</summary>
    public string? CuBlasLibrary { get; }

    private CudaDevice(Context context, Accelerator accelerator, bool isCuda, string description, string? cublas)
    {
        Context = context;
        Accelerator = accelerator;
        IsCuda = isCuda;
        Description = description;
        CuBlasLibrary = cublas;
    }

    /// <summary>ILGPU's CPU accelerator (kernels emulated on the host), for tests without a GPU.</summary>
    public static CudaDevice CreateForTests()
    {
        var context = Context.Create(b => b.CPU().EnableAlgorithms());
        try
        {
            var accelerator = context.CreateCPUAccelerator(0);
            return new CudaDevice(context, accelerator, false, "ILGPU CPU accelerator (tests)", null);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Parses "cuda" (device 0) or "cuda:N". Throws <see cref="ArgumentException"/> for anything else
    /// ("cpu" and "auto" are decided by the caller).
    /// </summary>
    public static int ParseIndex(string device)
    {
        ArgumentNullException.ThrowIfNull(device);
        var d = device.Trim().ToLowerInvariant();
        if (d == "cuda") return 0;
        if (d.StartsWith("cuda:", StringComparison.Ordinal)
            && int.TryParse(d.AsSpan(5), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n))
            return n;
        throw new ArgumentException($"Device '{device}' is not a CUDA device name: expected \"cuda\" or \"cuda:N\" (N = 0, 1, ...).", nameof(device));
    }

    /// <summary>
    /// Opens CUDA device <paramref name="device"/> ("cuda" or "cuda:N"). Throws <see cref="NotSupportedException"/>
    /// naming what is missing: the NVIDIA driver, any CUDA device, the index (with the device count), or cuBLAS.
    /// </summary>
    public static CudaDevice Open(string device)
    {
        int index = ParseIndex(device);
        var probe = Probe(index);
        if (!probe.Usable)
            throw new NotSupportedException($"Device '{device}' was asked for, but it cannot be used: {probe.Problem}.");
        var context = Context.Create(b => b.Cuda().EnableAlgorithms());
        try
        {
            var accelerator = context.CreateCudaAccelerator(index);
            return new CudaDevice(context, accelerator, true, probe.Describe(), probe.CuBlasLibrary);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reports, without throwing, whether the NVIDIA driver loads, how many CUDA devices ILGPU enumerates, the name and
    /// compute capability of device <paramref name="index"/>, and which cuBLAS library (if any) loads.
    /// </summary>
    public static CudaProbe Probe(int index)
    {
        bool driver = TryLoadAny(DriverLibraryNames, out _);
        int count = 0;
        string? name = null;
        int major = 0, minor = 0;
        string? enumerationError = null;
        if (driver)
        {
            try
            {
                using var context = Context.Create(b => b.Cuda());
                var devices = context.GetCudaDevices();
                count = devices.Count;
                if (index >= 0 && index < count)
                {
                    IlgpuCudaDevice dev = devices[index];
                    name = dev.Name;
                    major = dev.Architecture?.Major ?? 0;
                    minor = dev.Architecture?.Minor ?? 0;
                }
            }
            catch (Exception e)
            {
                enumerationError = $"{e.GetType().Name}: {e.Message}";
            }
        }
        string? cublas = CuBlas.ResolveLibraryName(static n => NativeLibrary.TryLoad(n, out _));
        string? problem = Diagnose(driver, count, index, cublas, enumerationError);
        return new CudaProbe(driver, count, index, name, major, minor, cublas, problem);
    }

    /// <summary>The first missing piece, in the order they are needed; null when everything is there. Pure, for tests.</summary>
    internal static string? Diagnose(bool driverFound, int deviceCount, int index, string? cublasLibrary, string? enumerationError = null)
    {
        if (!driverFound)
            return $"no NVIDIA driver (none of {string.Join(", ", DriverLibraryNames)} could be loaded)";
        if (enumerationError is not null)
            return $"the NVIDIA driver loaded but enumerating CUDA devices failed ({enumerationError})";
        if (deviceCount == 0)
            return "no CUDA device (the NVIDIA driver loaded but reports no device ILGPU can use)";
        if (index < 0 || index >= deviceCount)
            return $"CUDA device index {index} is out of range: {deviceCount} device(s) found (cuda:0..cuda:{deviceCount - 1})";
        if (cublasLibrary is null)
            return $"no cuBLAS library found (tried {string.Join(", ", CuBlas.LibraryNames)})";
        return null;
    }

    private static bool TryLoadAny(IEnumerable<string> names, out string? loaded)
    {
        foreach (var n in names)
        {
            if (NativeLibrary.TryLoad(n, out var h))
            {
                NativeLibrary.Free(h);
                loaded = n;
                return true;
            }
        }
        loaded = null;
        return false;
    }

    private int _disposed;

    /// <summary>Releases the accelerator and the context (once; later calls do nothing).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Accelerator.Dispose();
        Context.Dispose();
    }
}
