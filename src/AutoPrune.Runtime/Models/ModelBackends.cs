using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Models;

/// <summary>Builds a model on the backend a device name chose, with "auto"'s fallback to the CPU.</summary>
internal static class ModelBackends
{
    /// <summary>
    /// The model built by <paramref name="build"/> on <paramref name="gpu"/> (which the backend then owns), or on the CPU
    /// when there is no GPU. With <paramref name="auto"/>, a GPU backend or model that fails to start (kernels the driver
    /// rejects, cuBLAS that will not initialise) falls back to the CPU with a warning and <paramref name="gpu"/> is
    /// disposed; a device asked for by name fails instead. Checkpoint errors (<see cref="ModelLoadException"/>) are never
    /// masked.
    /// </summary>
    /// <param name="build">Builds the model on a backend it then owns.</param>
    /// <param name="gpuBackend">Opens the GPU backend (tests simulate a failure here); default a <see cref="CudaBackend"/>.</param>
    public static T Create<T>(CudaDevice? gpu, bool auto, ILogger log, Func<Backend, T> build, CpuPrecision cpuPrecision = CpuPrecision.Fp32,
        bool cudaGraphs = false, Func<CudaDevice, Backend>? gpuBackend = null) where T : class
    {
        if (gpu is null) return build(new CpuBackend(cpuPrecision));
        gpuBackend ??= d => new CudaBackend(d, cudaGraphs);
        try
        {
            Backend backend;
            try { backend = gpuBackend(gpu); }
            catch { gpu.Dispose(); throw; }
            var model = build(backend);
            if (backend is CudaBackend { TiledAttentionWarning: { } warning }) log.LogWarning("{Warning}", warning);
            return model;
        }
        catch (Exception e) when (auto && e is not ModelLoadException)
        {
            log.LogWarning("Device auto: the GPU backend could not start on {Gpu} ({Error}: {Message}); running on the CPU",
                gpu.Description, e.GetType().Name, e.Message);
            gpu.Dispose();
            return build(new CpuBackend(cpuPrecision));
        }
    }
}
