using AutoPrune.Compute;
using AutoPrune.Diagnostics;
using AutoPrune.Generation;

namespace AutoPrune.Models;

/// <summary>
/// A loaded model of one family on one backend, as the host runs it: what it is (<see cref="Info"/>, the pruning shape,
/// the signals it offers), how a request becomes a prompt (<see cref="Plan"/>: the family's chat template, tokenizer and
/// image token counts from the images' headers), how its images become decoder rows (<see cref="Encode"/>: preprocessing,
/// vision tower, projector, a selection before the LLM) and how the prompt becomes a sequence for its decoder
/// (<see cref="BuildSequence"/>). The generation loop itself is the family-neutral <see cref="InferencePipeline"/>.
/// Thread-safe.
/// </summary>
internal abstract class ModelRuntime : IDisposable
{
    public abstract ModelInfo Info { get; }

    /// <summary>Decoder and visual-token shape as the pruning policies see it (the largest image, where it varies).</summary>
    public abstract Pruning.ModelShape Shape { get; }

    /// <summary>"cpu", or the GPU it runs on.</summary>
    public abstract string Device { get; }

    /// <summary>The device's counters (null on the CPU).</summary>
    public abstract DeviceCounterSet? Counters { get; }

    public abstract ITextTokenizer Tokenizer { get; }

    /// <summary>The pruning signals the model provides.</summary>
    public abstract Pruning.PruningSignals Signals { get; }

    /// <summary>Tokens the model's positions allow for prompt and answer together.</summary>
    public abstract int ContextLength { get; }

    /// <summary>A text model that attends within a sliding window (Mistral): its size; null otherwise.</summary>
    public virtual int? SlidingWindow => null;

    /// <summary>Whether an image is cut into several views (LLaVA-NeXT's base view and tiles).</summary>
    public virtual bool MultiViewImages => false;

    /// <summary>The AutoPrune calibration found in the model folder at load, if any.</summary>
    public Pruning.AutoPruneCalibration? Calibration { get; init; }

    /// <summary>
    /// The prompt of a validated request: its ids with each image's tokens expanded (counted from the image's header, before
    /// any pixel is decoded), the tokens before the first visual token, and the pruning shape of its (first) image.
    /// </summary>
    public abstract PromptPlan Plan(VisionRequest request);

    /// <summary>Preprocessing, vision tower and projector for each image of a prepared request (a policy's selection before the LLM included).</summary>
    public abstract EncodedImages Encode(PreparedRequest p, RequestTelemetry telemetry, CancellationToken ct);

    /// <summary>The prefill sequence from what <see cref="Encode"/> made (its rows are released here, whatever happens).</summary>
    public abstract SequenceState BuildSequence(PreparedRequest p, EncodedImages encoded);

    /// <summary>Starts one request's decoding: a KV cache with room for <paramref name="extraCapacity"/> generated tokens.</summary>
    public abstract IGeneration StartGeneration(int extraCapacity);

    /// <summary>Drops cached work (a vision cache) before the backend goes.</summary>
    public virtual void ClearCaches() { }

    public abstract void Dispose();
}

/// <summary>A request's prompt as the family builds it.</summary>
/// <param name="Ids">The prompt ids, each image's run of visual tokens expanded.</param>
/// <param name="ImageTokens">Each image's rows in the prompt (visual tokens and separator rows such as LLaVA-NeXT's image_newline).</param>
/// <param name="Prefix">Rows before the first image's run (never pruned); the whole prompt when there is no image.</param>
internal sealed record PromptPlan(int[] Ids, int[] ImageTokens, int Prefix)
{
    /// <summary>Each image's visual tokens (its rows without separators); null when every image row is a visual token.</summary>
    public int[]? ImagePatches { get; init; }

    /// <summary>The shape the pruning policy sees (the first image's tokens and views); null for the model's fixed shape.</summary>
    public Pruning.ModelShape? PruningShape { get; init; }
}

/// <summary>
/// What <see cref="ModelRuntime.Encode"/> made of a request's images, until the prefill consumes it: the prompt ids (an
/// image run shortened by a selection before the LLM), the family's rows, and the timings.
/// </summary>
internal abstract class EncodedImages(int[] ids, double preprocessMs, double visionMs)
{
    public int[] Ids { get; } = ids;
    public double PreprocessMs { get; } = preprocessMs;
    public double VisionMs { get; } = visionMs;

    /// <summary>Prompt tokens after the prefix that are not visual tokens (text, markers, separator rows).</summary>
    public abstract int TextTokens { get; }

    /// <summary>Releases what was held for the prefill (vision features a policy may read there); called once it ends.</summary>
    public virtual void Release() { }
}

/// <summary>One request's decoder state (its KV cache) on a backend.</summary>
internal interface IGeneration : IDisposable
{
    /// <summary>Runs the prompt through every layer (a hook may shrink it between layers); logits at the last position.</summary>
    float[] Prefill(SequenceState state, IPrefillHook? hook, CancellationToken ct);

    /// <summary>Runs one generated token through every layer; its logits.</summary>
    float[] Step(int tokenId);

    /// <summary>
    /// Runs one generated token through every layer and returns the greedy next token (the first largest logit):
    /// on a GPU only that id comes back, not the vocabulary-sized logits.
    /// </summary>
    int StepGreedy(int tokenId);

    /// <summary>Tokens each layer's cache holds.</summary>
    int[] CachedTokensPerLayer();
}
