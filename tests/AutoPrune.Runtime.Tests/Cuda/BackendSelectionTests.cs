using AutoPrune.Compute;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using Microsoft.Extensions.Logging;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// What Load does when the GPU backend cannot start: "auto" falls back to the CPU with a warning, a device asked for by
/// name fails, and checkpoint errors are never hidden. The GPU failure is simulated (no GPU here).
/// </summary>
public sealed class BackendSelectionTests
{
    private sealed class ListLogger : ILogger
    {
        public List<(LogLevel Level, string Message)> Entries { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            => Entries.Add((logLevel, formatter(state, exception)));
    }

    private static Backend Failing(CudaDevice d) => throw new InvalidOperationException("cublasCreate_v2 failed with cublasStatus 1 (CUBLAS_STATUS_NOT_INITIALIZED).");

    private static ILlavaBackend Create(SafeTensorStore store, LlavaConfig config, CudaDevice gpu, bool auto, ILogger log, Func<CudaDevice, Backend> gpuBackend)
        => Models.ModelBackends.Create<ILlavaBackend>(gpu, auto, log, b => new LlavaModel(b, store, config), gpuBackend: gpuBackend);

    [Fact]
    public void AutoFallsBackToTheCpuWithAWarningWhenTheGpuBackendCannotStart()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        var log = new ListLogger();
        var gpu = CudaDevice.CreateForTests();
        using var model = Create(store, config, gpu, auto: true, log, Failing);
        Assert.IsType<LlavaModel>(model);
        Assert.Equal("cpu", model.Device);
        var warning = Assert.Single(log.Entries, e => e.Level == LogLevel.Warning);
        Assert.Contains("CUBLAS_STATUS_NOT_INITIALIZED", warning.Message);
        Assert.Contains("running on the CPU", warning.Message);
        Assert.Throws<ObjectDisposedException>(() => gpu.Accelerator.Allocate1D<float>(1)); // the device was released
    }

    [Fact]
    public void ANamedDeviceFailsInsteadOfFallingBack()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        var gpu = CudaDevice.CreateForTests();
        var e = Assert.Throws<InvalidOperationException>(() => Create(store, config, gpu, auto: false, new ListLogger(), Failing));
        Assert.Contains("cublasCreate_v2", e.Message);
        gpu.Dispose(); // a second dispose is harmless
    }

    [Fact]
    public void CheckpointErrorsAreNeverMaskedByTheFallback()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        var gpu = CudaDevice.CreateForTests();
        Assert.Throws<ModelLoadException>(() => Create(store, config, gpu, auto: true, new ListLogger(),
            d => throw new ModelLoadException("Tensor 'x' in file 'y' has shape [1] but [2] was expected.", "y", "x")));
    }
}
