namespace AutoPrune.Compute;

/// <summary>
/// A model's map from vision features to decoder rows (LLaVA's projector), as a selection made before the LLM on a
/// backend uses it: the kept (or merged) rows of the vision tower's output are projected where they are.
/// </summary>
internal interface IVisualProjector
{
    /// <summary>The decoder's width (the projected rows').</summary>
    int Hidden { get; }

    /// <summary>Projects Float vision features [rows, visionHidden] into a new Float tensor [rows, Hidden] the caller owns.</summary>
    Tensor Project(Tensor features, int rows);
}
