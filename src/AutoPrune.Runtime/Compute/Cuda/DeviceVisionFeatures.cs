using AutoPrune.Compute;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// One image's vision-tower output kept on the device: the selected features [Tokens, Hidden], the [CLS] attention
/// [Heads, Patches] and the patch keys [Patches, Hidden] (both null when the feature layer is the embeddings). Shared
/// by the vision cache and the requests using it: counted references, the buffers go back to the pool with the last.
/// </summary>
internal sealed class DeviceVisionFeatures
{
    private readonly CudaBackend _m;
    private int _references = 1;

    internal DeviceVisionFeatures(CudaBackend model, DeviceBuffer<float> features, DeviceBuffer<float>? cls, DeviceBuffer<float>? keys,
        int tokens, int hidden, int heads, int patches)
    {
        _m = model;
        Features = features; Cls = cls; Keys = keys; Tokens = tokens; Hidden = hidden; Heads = heads; Patches = patches;
    }

    /// <summary>The backend that computed and holds these buffers.</summary>
    public CudaBackend Backend => _m;

    public DeviceBuffer<float> Features { get; }
    public DeviceBuffer<float>? Cls { get; }
    public DeviceBuffer<float>? Keys { get; }
    public int Tokens { get; }
    public int Hidden { get; }
    public int Heads { get; }
    public int Patches { get; }

    /// <summary>One more holder (the cache, a running request).</summary>
    public void Retain()
    {
        if (Interlocked.Increment(ref _references) <= 1)
            throw new ObjectDisposedException(nameof(DeviceVisionFeatures), "These vision features were already released.");
    }

    /// <summary>A holder is done; the last one returns the buffers to the pool.</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _references) != 0) return;
        using var scope = _m.Enter();
        Features.Dispose();
        Cls?.Dispose();
        Keys?.Dispose();
    }

    /// <summary>Explicit copies to the host (counted: a download each), for the CPU-side code and tests.</summary>
    public float[] CopyFeaturesToHost() => _m.Download(DeviceTensor.Of(Features.View.SubView(0, (long)Tokens * Hidden)));
    public float[]? CopyClsToHost() => Cls is null ? null : _m.Download(DeviceTensor.Of(Cls.View.SubView(0, (long)Heads * Patches)));
    public float[]? CopyKeysToHost() => Keys is null ? null : _m.Download(DeviceTensor.Of(Keys.View.SubView(0, (long)Patches * Hidden)));
}
