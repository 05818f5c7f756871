namespace AutoPrune.Compute;

/// <summary>
/// What the vision tower hands to the projector and to the pruning policies. On a GPU backend it stays on the device
/// (<see cref="Device"/>); reading <see cref="Features"/>, <see cref="ClsAttention"/> or <see cref="PatchKeys"/> then
/// copies that array to the host (a counted download), which only host-side code (LLaVA-NeXT's assembly, policies not
/// yet moved to the device, tests) does.
/// </summary>
internal sealed class VisionFeatures
{
    private float[]? _features, _cls, _keys;

    /// <summary>Selected patch features [Tokens, Hidden] at the configured feature layer.</summary>
    public float[] Features
    {
        get => _features ??= Device?.CopyFeaturesToHost() ?? throw new InvalidOperationException("These vision features hold no data.");
        init => _features = value;
    }

    /// <summary>The features where the backend that computed them keeps them (null for features made on the host by other code).</summary>
    public Tensor? FeaturesTensor { get; init; }

    public required int Tokens { get; init; }
    public required int Hidden { get; init; }

    /// <summary>[CLS]→patch attention at the feature layer, per head: [Heads, Patches]; null when the feature layer is the embeddings.</summary>
    public float[]? ClsAttention
    {
        get => _cls ??= Device?.CopyClsToHost();
        init => _cls = value;
    }

    /// <summary>Key projections of the patches at the feature layer: [Patches, Hidden]; null as above.</summary>
    public float[]? PatchKeys
    {
        get => _keys ??= Device?.CopyKeysToHost();
        init => _keys = value;
    }

    public int Heads { get; init; }
    public int Patches { get; init; }

    /// <summary>The same data on a GPU (null on the CPU backend).</summary>
    public Cuda.DeviceVisionFeatures? Device { get; init; }

    /// <summary>
    /// Computed by a CPU backend with <see cref="CpuPrecision.MatchDevice"/>: a selection the host makes on these
    /// features (DivPrune's) rounds where the device's would, so both choose the same rows.
    /// </summary>
    public bool MatchDevice { get; init; }
}
