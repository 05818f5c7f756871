namespace AutoPrune;

/// <summary>Why generation ended.</summary>
public enum AnswerFinishReason { Stop, Length, StopSequence }
