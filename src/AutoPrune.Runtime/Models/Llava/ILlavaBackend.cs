using AutoPrune.Compute;
using AutoPrune.Loading;

namespace AutoPrune.Models.Llava;

/// <summary>
/// A loaded LLaVA model on one compute backend: the CPU (<see cref="LlavaModel"/>) or a CUDA GPU
/// (CudaLlavaModel). Images, sequences and pruning bookkeeping stay on the host; what a backend
/// keeps on its device is its own business.
/// </summary>
internal interface ILlavaBackend : IVisualProjector, IDisposable
{
    LlavaConfig Config { get; }
    /// <summary>"cpu", or the GPU it runs on ("cuda:0 NVIDIA H100 ...").</summary>
    string Device { get; }
    /// <summary>Visual tokens one image contributes.</summary>
    int TokensPerImage { get; }
    /// <summary>Patches per side of the vision grid.</summary>
    int Grid { get; }
    int DecoderLayers { get; }

    /// <summary>The pruning signals this model provides (without attention layers in the vision tower, none of its own).</summary>
    Pruning.PruningSignals Signals { get; }

    /// <summary>The device's counters (host syncs, launches, copies, ...); null on the CPU backend.</summary>
    Diagnostics.DeviceCounterSet? Counters => null;

    /// <summary>Runs the vision tower on one preprocessed image ([3, size, size], CHW); <paramref name="ct"/> is checked between layers.</summary>
    VisionFeatures VisionForward(ReadOnlySpan<float> pixels, CancellationToken ct = default);

    /// <summary>
    /// Runs the vision tower on <paramref name="views"/> preprocessed images laid end to end ([views, 3, size, size]; a
    /// LLaVA-NeXT image's base view and tiles). A GPU runs them as one batch; the default runs them one after another.
    /// </summary>
    VisionFeatures[] VisionForwardViews(ReadOnlySpan<float> pixels, int views, CancellationToken ct = default)
    {
        if (views < 1 || pixels.Length % views != 0) throw new ArgumentException($"{pixels.Length} values are not {views} views.", nameof(pixels));
        int length = pixels.Length / views;
        var result = new VisionFeatures[views];
        for (int v = 0; v < views; v++) result[v] = VisionForward(pixels.Slice(v * length, length), ct);
        return result;
    }

    /// <summary>Projects vision features [rows, visionHidden] into the decoder's space [rows, Hidden].</summary>
    float[] Project(ReadOnlySpan<float> features, int rows);

    /// <summary>Projects one image's vision features into decoder rows, kept where the backend computes (host or device).</summary>
    ImageRows ProjectImage(VisionFeatures vision);

    /// <summary>
    /// The prefill sequence: token embeddings with each image's rows spliced in at its placeholder run (a GPU builds it
    /// on the device from the token ids). <paramref name="visualIndices"/> names each image row's patch (default 0..n-1).
    /// </summary>
    /// <paramref name="positions"/>: each row's RoPE position when they are not 0..n-1 (a selection before the LLM that keeps
    /// the original positions).
    SequenceState BuildSequence(ReadOnlySpan<int> ids, IReadOnlyList<ImageRows> images, IReadOnlyList<int[]>? visualIndices = null, PositionIds? positions = null);

    /// <summary>Copies the token embedding of each id into <paramref name="dst"/> ([ids, Hidden]).</summary>
    void Embed(ReadOnlySpan<int> ids, Span<float> dst);

    /// <summary>Starts one request's decoding: a KV cache with room for <paramref name="extraCapacity"/> generated tokens.</summary>
    IGeneration StartGeneration(int extraCapacity);
}
