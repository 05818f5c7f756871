using AutoPrune;
using AutoPrune.MLNet;

namespace Microsoft.ML;

/// <summary><c>mlContext.Transforms.AnswerVisualQuestion(...)</c>.</summary>
public static class VisualQuestionCatalog
{
    /// <summary>
    /// Answers the question in <paramref name="questionColumnName"/> about the image in <paramref name="imageColumnName"/>
    /// (an <c>MLImage</c> column or a text column of file paths) with the LLaVA checkpoint in <paramref name="modelDirectory"/>,
    /// which the stage loads on the first answered row and disposes with the transformer.
    /// </summary>
    /// <remarks>Adds the text column <paramref name="outputColumnName"/> and, named by <see cref="VisualQuestionColumns"/>,
    /// <c>{output}_KeptVisualTokens</c>, <c>{output}_FlopsRatio</c>, <c>{output}_PrefillMs</c> (float) and <c>{output}_Error</c> (text).</remarks>
    public static VisualQuestionEstimator AnswerVisualQuestion(this TransformsCatalog catalog, string outputColumnName,
        string imageColumnName, string questionColumnName, string modelDirectory, VisualQuestionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentException.ThrowIfNullOrWhiteSpace(modelDirectory);
        return new VisualQuestionEstimator(outputColumnName, imageColumnName, questionColumnName, modelDirectory, null, options);
    }

    /// <summary>As above with a model you loaded (and dispose) yourself; <see cref="VisualQuestionOptions.ModelOptions"/> is ignored.</summary>
    public static VisualQuestionEstimator AnswerVisualQuestion(this TransformsCatalog catalog, string outputColumnName,
        string imageColumnName, string questionColumnName, VisionLanguageModel model, VisualQuestionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(model);
        return new VisualQuestionEstimator(outputColumnName, imageColumnName, questionColumnName, null, model, options);
    }
}
