using System.Runtime.InteropServices;
using AutoPrune.Loading;
using ILGPU;
using Half = System.Half;

namespace AutoPrune.Compute.Cuda;

/// <summary>A linear layer on the device: fp16 weight [Out, In], optional fp32 bias.</summary>
internal sealed class DeviceLinear(DeviceBuffer<ushort> weight, DeviceBuffer<float>? bias, int @in, int @out)
    : LinearWeight(@in, @out, bias is not null), IDisposable
{
    public DeviceBuffer<ushort> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;

    /// <summary>
    /// Several linear layers on the same input stacked into one ([Σ out, in], biases likewise), so one GEMM computes
    /// them all: q|k|v, or gate|up. Fewer, larger GEMMs launch less often and read the input once.
    /// </summary>
    public static DeviceLinear LoadStacked(DeviceArena mem, ITensorSource store, IReadOnlyList<(string Prefix, int Out)> parts, int @in, bool bias)
    {
        int total = parts.Sum(p => p.Out);
        var w = new Half[(long)total * @in];
        var b = bias ? new float[total] : null;
        int row = 0;
        foreach (var (prefix, @out) in parts)
        {
            store.ReadFloat16(prefix + ".weight", @out, @in).CopyTo(w, (long)row * @in);
            if (b is not null) store.ReadFloat32(prefix + ".bias", @out).CopyTo(b, row);
            row += @out;
        }
        var weights = mem.Upload(MemoryMarshal.Cast<Half, ushort>(w.AsSpan()));
        try { return new DeviceLinear(weights, b is null ? null : mem.Upload<float>(b), @in, total); }
        catch { weights.Dispose(); throw; }
    }

    /// <summary>Rows [first, first + count) of the weight (one part of a stacked layer, e.g. k of q|k|v) as a layer of its own, sharing the memory.</summary>
    public (ArrayView<ushort> Weight, int Out) Rows(int first, int count)
    {
        if (first < 0 || count < 0 || first + count > Out)
            throw new ArgumentOutOfRangeException(nameof(first), $"Rows [{first}, {first + count}) of a {Out}-row weight.");
        return (Weight.Slice((long)first * In, (long)count * In), count);
    }

    public void Dispose() { Weight.Dispose(); Bias?.Dispose(); }
}

/// <summary>A norm on the device (fp32 weight, bias for LayerNorm).</summary>
internal sealed class DeviceNorm(DeviceBuffer<float> weight, DeviceBuffer<float>? bias, float eps, NormKind kind)
    : NormWeight((int)weight.Length, eps, kind), IDisposable
{
    private Cpu.NormWeights? _host;

    public DeviceBuffer<float> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;

    public static DeviceNorm Load(DeviceArena mem, ITensorSource store, string prefix, int dim, float eps, NormKind kind)
    {
        var w = mem.Upload<float>(store.ReadFloat32(prefix + ".weight", dim));
        try { return new(w, kind == NormKind.LayerNorm ? mem.Upload<float>(store.ReadFloat32(prefix + ".bias", dim)) : null, eps, kind); }
        catch { w.Dispose(); throw; }
    }

    /// <summary>The weights copied to the host once (for host policies that compare normalised hidden states).</summary>
    internal Cpu.NormWeights Host(DeviceQueue queue) => _host ??= new Cpu.NormWeights(queue.Download(Weight.View, Weight.Length),
        Bias is null ? null : queue.Download(Bias.View, Bias.Length), Eps);

    public void Dispose() { Weight.Dispose(); Bias?.Dispose(); }
}
