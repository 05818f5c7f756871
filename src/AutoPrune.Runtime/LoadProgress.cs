namespace AutoPrune;

/// <summary>Progress of a model load: a stage name and the fraction done (0..1).</summary>
public readonly record struct LoadProgress(string Stage, double Fraction);
