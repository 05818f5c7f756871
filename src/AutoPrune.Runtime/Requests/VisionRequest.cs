using AutoPrune.Pruning;

namespace AutoPrune;

/// <summary>A question about images, or a whole conversation.</summary>
public sealed record VisionRequest
{
    public required IReadOnlyList<ConversationTurn> Turns { get; init; }
    public IReadOnlyList<ImageInput> Images { get; init; } = [];
    public GenerationOptions Generation { get; init; } = new();
    /// <summary>
    /// Visual-token pruning this request asks for. A method that cannot serve the request (see
    /// <see cref="PruningCapabilities"/>: no image, or several) is an <see cref="ArgumentException"/> naming the method and
    /// the reason. Null uses <see cref="DefaultPruning"/>.
    /// </summary>
    public PruningOptions? Pruning { get; init; }

    /// <summary>
    /// Pruning used when <see cref="Pruning"/> is null (an adapter's or the CLI's default). A method that cannot serve the
    /// request never fails it: the request runs unpruned and the report's notes say why. Null uses
    /// <see cref="ModelOptions.DefaultPruning"/>, which behaves the same way.
    /// </summary>
    public PruningOptions? DefaultPruning { get; init; }

    /// <summary>A single question about zero or more images (each image placed before the question).</summary>
    public static VisionRequest Create(string question, params ImageInput[] images) => new()
    {
        // Null question or image list: ArgumentNullException here; a null image in the list: when the request is asked.
        Turns = [new ConversationTurn(TurnRole.User, string.Concat(Enumerable.Repeat(Prompting.ImagePlaceholder + "\n", (images ?? throw new ArgumentNullException(nameof(images))).Length))
            + (question ?? throw new ArgumentNullException(nameof(question))))],
        Images = images,
    };
}
