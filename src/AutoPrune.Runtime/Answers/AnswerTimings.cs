namespace AutoPrune;

/// <summary>Where the time went, in milliseconds.</summary>
public sealed record AnswerTimings(double PreprocessMs, double VisionMs, double PrefillMs, double DecodeMs, double TotalMs);
