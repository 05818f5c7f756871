namespace AutoPrune;

/// <summary>A piece of a streamed answer; the last one carries the whole <see cref="Answer"/>.</summary>
public sealed record AnswerChunk(string Text, int? TokenId, VisionAnswer? Answer);
