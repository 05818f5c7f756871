namespace AutoPrune;

/// <summary>A token id with its logit.</summary>
public readonly record struct TokenLogit(int Id, float Logit);
