using System.Diagnostics.Metrics;
using System.Text.Json.Serialization;

namespace AutoPrune.Diagnostics;

/// <summary>
/// What a stage of a request asked of a GPU backend, counted deterministically on the host (the same on a GPU and on
/// ILGPU's CPU accelerator): host synchronisations (the host waiting for the device: a blocking copy or an explicit
/// synchronize), kernel launches (device-to-device copies and graph launches included), cuBLAS calls, bytes and copies
/// each way, and device allocations (pool hits are not allocations).
/// </summary>
public sealed record DeviceCounters
{
    [JsonPropertyName("host_syncs")] public long HostSyncs { get; init; }
    [JsonPropertyName("launches")] public long Launches { get; init; }
    [JsonPropertyName("blas_calls")] public long BlasCalls { get; init; }
    [JsonPropertyName("h2d_bytes")] public long H2DBytes { get; init; }
    [JsonPropertyName("d2h_bytes")] public long D2HBytes { get; init; }
    [JsonPropertyName("h2d_copies")] public long H2DCopies { get; init; }
    [JsonPropertyName("d2h_copies")] public long D2HCopies { get; init; }
    [JsonPropertyName("device_allocations")] public long DeviceAllocations { get; init; }

    public static readonly DeviceCounters Zero = new();

    public static DeviceCounters operator -(DeviceCounters a, DeviceCounters b) => new()
    {
        HostSyncs = a.HostSyncs - b.HostSyncs, Launches = a.Launches - b.Launches, BlasCalls = a.BlasCalls - b.BlasCalls,
        H2DBytes = a.H2DBytes - b.H2DBytes, D2HBytes = a.D2HBytes - b.D2HBytes, H2DCopies = a.H2DCopies - b.H2DCopies,
        D2HCopies = a.D2HCopies - b.D2HCopies, DeviceAllocations = a.DeviceAllocations - b.DeviceAllocations,
    };

    public static DeviceCounters operator +(DeviceCounters a, DeviceCounters b) => new()
    {
        HostSyncs = a.HostSyncs + b.HostSyncs, Launches = a.Launches + b.Launches, BlasCalls = a.BlasCalls + b.BlasCalls,
        H2DBytes = a.H2DBytes + b.H2DBytes, D2HBytes = a.D2HBytes + b.D2HBytes, H2DCopies = a.H2DCopies + b.H2DCopies,
        D2HCopies = a.D2HCopies + b.D2HCopies, DeviceAllocations = a.DeviceAllocations + b.DeviceAllocations,
    };

    /// <summary>Launches plus cuBLAS calls: the work items the host enqueued.</summary>
    [JsonIgnore] public long Enqueued => Launches + BlasCalls;

    public override string ToString() =>
        $"syncs {HostSyncs}, launches {Launches}, cuBLAS {BlasCalls}, h2d {H2DBytes} B in {H2DCopies}, d2h {D2HBytes} B in {D2HCopies}, allocations {DeviceAllocations}";
}

/// <summary>
/// The device counters of one request, by stage (null on the CPU backend). <see cref="Decode"/> is the sum over the
/// <see cref="DecodeSteps"/> decode steps; <see cref="DecodePerToken"/> one steady step (every step after the first
/// counts the same on the GPU path; the first may set things up).
/// </summary>
public sealed record RequestDeviceCounters(
    [property: JsonPropertyName("vision")] DeviceCounters Vision,
    [property: JsonPropertyName("prefill")] DeviceCounters Prefill,
    [property: JsonPropertyName("decode")] DeviceCounters Decode,
    [property: JsonPropertyName("decode_steps")] int DecodeSteps,
    [property: JsonPropertyName("decode_per_token")] DeviceCounters? DecodePerToken);

/// <summary>
/// Mutable, thread-safe counters. A backend counts into its own set; while a request runs, the same events are also
/// counted into the request's set (<see cref="BeginRequest"/>, flowing with the request's execution context), so
/// per-request figures stay exact when several requests share a device.
/// </summary>
internal sealed class DeviceCounterSet
{
    private static readonly AsyncLocal<DeviceCounterSet?> s_request = new();
    private const int Syncs = 0, Launches = 1, BlasCalls = 2, H2DBytes = 3, D2HBytes = 4, H2DCopies = 5, D2HCopies = 6, Allocations = 7;
    private readonly long[] _c = new long[8];

    /// <summary>Counts everything any backend does on this execution context into <paramref name="request"/> until disposed.</summary>
    public static IDisposable BeginRequest(DeviceCounterSet request)
    {
        var previous = s_request.Value;
        s_request.Value = request;
        return new Restore(previous);
    }

    private sealed class Restore(DeviceCounterSet? previous) : IDisposable
    {
        public void Dispose() => s_request.Value = previous;
    }

    public void Sync() => Add(Syncs, 1);
    public void Launch(int n = 1) => Add(Launches, n);
    public void Blas() => Add(BlasCalls, 1);
    public void Allocation() => Add(Allocations, 1);

    public void HostToDevice(long bytes)
    {
        Add(H2DBytes, bytes);
        Add(H2DCopies, 1);
    }

    public void DeviceToHost(long bytes)
    {
        Add(D2HBytes, bytes);
        Add(D2HCopies, 1);
    }

    /// <summary>While true nothing is counted (work recorded into a CUDA graph is not launched; the graph's launch counts).</summary>
    public bool Paused { get; set; }

    private void Add(int kind, long n)
    {
        if (Paused) return;
        Interlocked.Add(ref _c[kind], n);
        if (s_request.Value is { } r && !ReferenceEquals(r, this)) Interlocked.Add(ref r._c[kind], n);
    }

    private long Read(int kind) => Interlocked.Read(ref _c[kind]);

    public DeviceCounters Snapshot() => new()
    {
        HostSyncs = Read(Syncs), Launches = Read(Launches), BlasCalls = Read(BlasCalls), H2DBytes = Read(H2DBytes), D2HBytes = Read(D2HBytes),
        H2DCopies = Read(H2DCopies), D2HCopies = Read(D2HCopies), DeviceAllocations = Read(Allocations),
    };
}

/// <summary>
/// The device counters as counters of the <see cref="AutoPruneTelemetry.MeterName"/> meter
/// (<see cref="AutoPruneTelemetry.Instruments.DeviceHostSyncs"/>, ...), tagged with the stage, so OpenTelemetry collects them.
/// </summary>
internal static class DeviceCounterMetrics
{
    private static readonly Counter<long> s_syncs = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceHostSyncs, "{sync}", "Host synchronisations with the GPU.");
    private static readonly Counter<long> s_launches = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceLaunches, "{launch}", "Kernel launches (copies and graph launches included).");
    private static readonly Counter<long> s_blas = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceBlasCalls, "{call}", "cuBLAS calls.");
    private static readonly Counter<long> s_h2dBytes = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceH2DBytes, "By", "Bytes copied host to device.");
    private static readonly Counter<long> s_d2hBytes = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceD2HBytes, "By", "Bytes copied device to host.");
    private static readonly Counter<long> s_h2dCopies = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceH2DCopies, "{copy}", "Host-to-device copies.");
    private static readonly Counter<long> s_d2hCopies = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceD2HCopies, "{copy}", "Device-to-host copies.");
    private static readonly Counter<long> s_allocations = AutoPruneTelemetry.Meter.CreateCounter<long>(AutoPruneTelemetry.Instruments.DeviceAllocations, "{allocation}", "Device allocations.");

    public static void Record(string stage, DeviceCounters c)
    {
        var tag = new KeyValuePair<string, object?>(AutoPruneTelemetry.Tags.Stage, stage);
        s_syncs.Add(c.HostSyncs, tag);
        s_launches.Add(c.Launches, tag);
        s_blas.Add(c.BlasCalls, tag);
        s_h2dBytes.Add(c.H2DBytes, tag);
        s_d2hBytes.Add(c.D2HBytes, tag);
        s_h2dCopies.Add(c.H2DCopies, tag);
        s_d2hCopies.Add(c.D2HCopies, tag);
        s_allocations.Add(c.DeviceAllocations, tag);
    }
}
