using AutoPrune.Generation;
using AutoPrune.Pruning;

namespace AutoPrune;

/// <summary>
/// Checks a request before anything is tokenised, decoded or queued: null parts (ArgumentNullException, naming the
/// turn or image), the conversation's shape, its length in characters, the sampling settings and every pruning value.
/// </summary>
internal static class RequestValidator
{
    /// <param name="maxPromptChars">Characters that can possibly fit the prompt-token limit (see <see cref="MaxPromptChars"/>).</param>
    /// <returns>The generation options the request runs with.</returns>
    public static GenerationOptions Validate(VisionRequest request, ModelOptions options, long maxPromptChars, int maxPromptTokens)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Turns is null) throw new ArgumentNullException(nameof(request), "The request's Turns list is null.");
        if (request.Turns.Count == 0) throw new ArgumentException("The request has no conversation turns.", nameof(request));
        long chars = 0;
        int placeholders = 0;
        for (int i = 0; i < request.Turns.Count; i++)
        {
            var turn = request.Turns[i] ?? throw new ArgumentNullException(nameof(request), $"Turn {i} of the request is null.");
            if (turn.Text is null) throw new ArgumentNullException(nameof(request), $"The text of turn {i} ({turn.Role}) is null.");
            if (!Enum.IsDefined(turn.Role)) throw new ArgumentOutOfRangeException(nameof(request), turn.Role, $"Turn {i} has role {(int)turn.Role}, which is not System, User or Assistant.");
            chars += turn.Text.Length;
        }
        // Before any per-character work: a 10-million-character question is refused here, not after tokenising it.
        if (chars > maxPromptChars)
            throw new ArgumentException(
                $"The conversation is {chars:N0} characters long; the prompt limit of {maxPromptTokens:N0} tokens holds at most {maxPromptChars:N0} characters with this tokenizer.",
                nameof(request));
        foreach (var turn in request.Turns) placeholders += CountPlaceholders(turn.Text);
        var last = request.Turns[^1];
        if (last.Role != TurnRole.User)
            throw new ArgumentException($"The last turn must be the user's (got {last.Role}).", nameof(request));
        if (string.IsNullOrWhiteSpace(last.Text.Replace(Prompting.ImagePlaceholder, "")))
            throw new ArgumentException("The question is empty.", nameof(request));
        if (request.Images is null) throw new ArgumentNullException(nameof(request), "The request's Images list is null.");
        for (int i = 0; i < request.Images.Count; i++)
            if (request.Images[i] is null) throw new ArgumentNullException(nameof(request), $"Image {i} of the request is null.");
        if (placeholders != request.Images.Count)
            throw new ArgumentException($"The conversation has {placeholders} {Prompting.ImagePlaceholder} placeholder(s) but {request.Images.Count} image(s) were given.", nameof(request));

        var g = request.Generation ?? new GenerationOptions();
        if (g.MaxNewTokens < 1 || g.MaxNewTokens > options.MaxNewTokensLimit)
            throw new ArgumentOutOfRangeException(nameof(request), $"MaxNewTokens must be between 1 and {options.MaxNewTokensLimit} (got {g.MaxNewTokens}).");
        _ = new Sampler(g); // temperature, top-p and stop sequences
        if (g.ResponseFormat?.Grammar is not null && g.StopSequences?.Any(s => !string.IsNullOrEmpty(s)) == true)
            throw new ArgumentException($"StopSequences cannot be combined with ResponseFormat {g.ResponseFormat}: a stop sequence could cut the JSON document short; the document ends by itself.", nameof(request));
        (request.Pruning ?? request.DefaultPruning ?? options.DefaultPruning ?? new PruningOptions()).Validate();
        return g;
    }

    /// <summary>
    /// A JSON response format must fit the tokens the request may generate (<paramref name="maxNew"/>: MaxNewTokens, or
    /// less when the context is nearly full): its shortest document, one token per byte, is what the decoder may need to
    /// finish it from any point, so a smaller budget is refused here rather than cut.
    /// </summary>
    public static void CheckResponseFormatBudget(GenerationOptions g, int maxNew)
    {
        if (g.ResponseFormat?.Grammar is not { } grammar || grammar.MinBytes <= maxNew) return;
        throw new ArgumentException(
            $"The response format ({grammar.Description}) needs up to {grammar.MinBytes} tokens to be sure to finish its shortest document, but this request " +
            $"may generate only {maxNew} (MaxNewTokens {g.MaxNewTokens}{(maxNew < g.MaxNewTokens ? ", less the room the prompt leaves in the context" : "")}). Allow more tokens or simplify the schema.",
            "request");
    }

    /// <summary>
    /// An upper bound on the characters a prompt of <paramref name="maxPromptTokens"/> tokens can hold: no token covers
    /// more characters than the tokenizer's longest piece, so a longer text cannot fit and is refused without tokenising.
    /// </summary>
    public static long MaxPromptChars(int maxPromptTokens, int longestTokenChars) => (long)maxPromptTokens * Math.Max(1, longestTokenChars);

    public static int CountPlaceholders(string s)
    {
        int c = 0, i = 0;
        while ((i = s.IndexOf(Prompting.ImagePlaceholder, i, StringComparison.Ordinal)) >= 0) { c++; i += Prompting.ImagePlaceholder.Length; }
        return c;
    }
}
