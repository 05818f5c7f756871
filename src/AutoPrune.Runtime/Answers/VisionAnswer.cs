using AutoPrune.Pruning;

namespace AutoPrune;

/// <summary>The model's answer with what it cost.</summary>
public sealed record VisionAnswer
{
    public required string Text { get; init; }
    public required IReadOnlyList<int> TokenIds { get; init; }
    public required AnswerFinishReason FinishReason { get; init; }
    public required int PromptTokens { get; init; }
    /// <summary>Visual tokens in the prompt (before any pruning).</summary>
    public required int VisualTokens { get; init; }
    /// <summary>The largest logits at the last prompt position, largest first.</summary>
    public required IReadOnlyList<TokenLogit> TopLogits { get; init; }
    public required AnswerTimings Timings { get; init; }
    public required string Device { get; init; }
    /// <summary>What pruning did (always present; method None when the model ran unpruned).</summary>
    public required PruningReport Report { get; init; }
    /// <summary>What the request asked of the GPU, by stage (host syncs, launches, copies, ...); null on the CPU backend.</summary>
    public Diagnostics.RequestDeviceCounters? DeviceCounters { get; init; }
}
