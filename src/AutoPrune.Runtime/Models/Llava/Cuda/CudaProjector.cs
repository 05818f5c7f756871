using AutoPrune.Compute;
using AutoPrune.Loading;
using ILGPU;

using AutoPrune.Compute.Cuda;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// The 2-layer MLP projector on the device (<c>multi_modal_projector.linear_1/2</c>), mirroring
/// <see cref="MultiModalProjector"/>: vision features in, decoder rows out, both on the device.
/// </summary>
internal sealed class CudaProjector : IDisposable
{
    private readonly CudaLlavaModel _m;
    private readonly DeviceLinear _l1, _l2;
    private readonly ActivationFunction _act;

    public CudaProjector(CudaLlavaModel model, ITensorSource store, LlavaConfig config)
    {
        _m = model;
        int vh = config.VisionConfig.HiddenSize, th = config.TextConfig.HiddenSize;
        _act = config.ProjectorActivation; // an unsupported activation fails at load
        _l1 = DeviceLinear.Load(model.Memory, store, "multi_modal_projector.linear_1", vh, th, config.MultimodalProjectorBias);
        try { _l2 = DeviceLinear.Load(model.Memory, store, "multi_modal_projector.linear_2", th, th, config.MultimodalProjectorBias); }
        catch { _l1.Dispose(); throw; }
    }

    public int In => _l1.In;
    public int Out => _l2.Out;

    /// <summary>Projects rows of vision features [rows, In] (fp32, device) into a new pooled buffer [rows, Out] the caller owns.</summary>
    public DeviceBuffer<float> Forward(ArrayView<float> features, int rows)
    {
        var mem = _m.Memory;
        int vh = In, th = Out;
        using var xH = mem.Allocate<ushort>((long)rows * vh);
        using var h1 = mem.Allocate<float>((long)rows * th);
        using var h1H = mem.Allocate<ushort>((long)rows * th);
        var y = mem.Allocate<float>((long)rows * th);
        try
        {
            _m.ToHalf(features, xH.View, (long)rows * vh);
            _m.Linear(_l1, xH.View, rows, h1.View);
            _m.Ops.Activation(_act, h1.View);
            _m.ToHalf(h1.View, h1H.View, (long)rows * th);
            _m.Linear(_l2, h1H.View, rows, y.View);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _l1.Dispose();
        _l2.Dispose();
    }
}
