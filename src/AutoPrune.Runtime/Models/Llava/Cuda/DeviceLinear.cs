using System.Runtime.InteropServices;
using AutoPrune.Loading;
using ILGPU;
using Half = System.Half;

using AutoPrune.Compute.Cuda;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>A linear layer on the device: fp16 weight [Out, In], optional fp32 bias.</summary>
internal sealed class DeviceLinear(DeviceBuffer<ushort> weight, DeviceBuffer<float>? bias, int @in, int @out) : IDisposable
{
    public DeviceBuffer<ushort> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;
    public int In { get; } = @in;
    public int Out { get; } = @out;

    public static DeviceLinear Load(DeviceArena mem, ITensorSource store, string prefix, int @in, int @out, bool bias)
        => LoadStacked(mem, store, [(prefix, @out)], @in, bias);

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
        return new DeviceLinear(mem.Upload(MemoryMarshal.Cast<Half, ushort>(w.AsSpan())), b is null ? null : mem.Upload<float>(b), @in, total);
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
internal sealed class DeviceNorm(DeviceBuffer<float> weight, DeviceBuffer<float>? bias, float eps) : IDisposable
{
    public DeviceBuffer<float> Weight { get; } = weight;
    public DeviceBuffer<float>? Bias { get; } = bias;
    public float Eps { get; } = eps;

    public static DeviceNorm Load(DeviceArena mem, ITensorSource store, string prefix, int dim, float eps, bool bias)
        => new(mem.Upload<float>(store.ReadFloat32(prefix + ".weight", dim)), bias ? mem.Upload<float>(store.ReadFloat32(prefix + ".bias", dim)) : null, eps);

    public void Dispose() { Weight.Dispose(); Bias?.Dispose(); }
}
