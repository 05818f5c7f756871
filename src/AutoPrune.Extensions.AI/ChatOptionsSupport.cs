using Microsoft.Extensions.AI;

namespace AutoPrune.Extensions.AI;

/// <summary>How the AutoPrune chat client treats each <see cref="ChatOptions"/> property.</summary>
public enum ChatOptionSupport
{
    /// <summary>Honoured.</summary>
    Supported,

    /// <summary>Setting it is a <see cref="NotSupportedException"/> naming the option: the local model cannot do what it asks.</summary>
    Rejected,

    /// <summary>Setting it is allowed and changes nothing; a warning is logged naming it.</summary>
    Ignored,
}

/// <summary>
/// The one table of what the AutoPrune chat client does with each <see cref="ChatOptions"/> property, and the checks
/// that enforce it (the README's table is this one).
/// </summary>
public static class ChatOptionsSupport
{
    /// <summary>Every public <see cref="ChatOptions"/> property and how it is treated.</summary>
    public static IReadOnlyDictionary<string, ChatOptionSupport> Table { get; } = new Dictionary<string, ChatOptionSupport>(StringComparer.Ordinal)
    {
        [nameof(ChatOptions.MaxOutputTokens)] = ChatOptionSupport.Supported,
        [nameof(ChatOptions.Temperature)] = ChatOptionSupport.Supported,
        [nameof(ChatOptions.TopP)] = ChatOptionSupport.Supported,
        [nameof(ChatOptions.Seed)] = ChatOptionSupport.Supported,
        [nameof(ChatOptions.StopSequences)] = ChatOptionSupport.Supported,
        [nameof(ChatOptions.Instructions)] = ChatOptionSupport.Supported,        // a system message after the chat's own
        [nameof(ChatOptions.AdditionalProperties)] = ChatOptionSupport.Supported, // "method", "budget", "pruning_method"; other keys are ignored with a warning
        [nameof(ChatOptions.ModelId)] = ChatOptionSupport.Supported,             // null or this client's model id; another id is rejected
        [nameof(ChatOptions.ResponseFormat)] = ChatOptionSupport.Supported,      // Text, Json (any object) or ForJsonSchema: constrained decoding
        [nameof(ChatOptions.ToolMode)] = ChatOptionSupport.Supported,            // null, None or Auto (there are no tools); RequireAny/RequireSpecific are rejected
        [nameof(ChatOptions.Tools)] = ChatOptionSupport.Rejected,                // when non-empty: no function calling
        [nameof(ChatOptions.TopK)] = ChatOptionSupport.Rejected,
        [nameof(ChatOptions.FrequencyPenalty)] = ChatOptionSupport.Rejected,
        [nameof(ChatOptions.PresencePenalty)] = ChatOptionSupport.Rejected,
        [nameof(ChatOptions.ConversationId)] = ChatOptionSupport.Rejected,       // stateless: send the whole chat
        [nameof(ChatOptions.ContinuationToken)] = ChatOptionSupport.Rejected,
        [nameof(ChatOptions.AllowBackgroundResponses)] = ChatOptionSupport.Rejected, // when true
        [nameof(ChatOptions.AllowMultipleToolCalls)] = ChatOptionSupport.Ignored,
        [nameof(ChatOptions.Reasoning)] = ChatOptionSupport.Ignored,
        [nameof(ChatOptions.RawRepresentationFactory)] = ChatOptionSupport.Ignored,
    };

    /// <summary>The <c>AdditionalProperties</c> keys the client reads.</summary>
    public static IReadOnlyList<string> KnownAdditionalProperties { get; } = [PruningKnobs.MethodKey, PruningKnobs.PruningMethodKey, PruningKnobs.BudgetKey];

    /// <summary>
    /// Throws <see cref="NotSupportedException"/> for the first option set that the model cannot honour; returns a
    /// description of each option set that it ignores (the client logs them as warnings).
    /// </summary>
    internal static IReadOnlyList<string> Check(ChatOptions? o, string modelId)
    {
        if (o is null) return [];
        if (o.Tools is { Count: > 0 } tools)
            throw Rejected(nameof(ChatOptions.Tools), $"{tools.Count} tool(s) were given, but the local model has no function calling");
        if (o.ToolMode is RequiredChatToolMode)
            throw Rejected(nameof(ChatOptions.ToolMode), "a tool call is required, but the local model has no function calling");
        if (o.ModelId is { } id && !string.Equals(id, modelId, StringComparison.Ordinal))
            throw Rejected(nameof(ChatOptions.ModelId), $"'{id}' was asked for, but this client serves '{modelId}'");
        if (o.TopK is not null) throw Rejected(nameof(ChatOptions.TopK), "top-k sampling is not implemented (use TopP)");
        if (o.FrequencyPenalty is not null) throw Rejected(nameof(ChatOptions.FrequencyPenalty), "repetition penalties are not implemented");
        if (o.PresencePenalty is not null) throw Rejected(nameof(ChatOptions.PresencePenalty), "repetition penalties are not implemented");
        if (o.ConversationId is not null) throw Rejected(nameof(ChatOptions.ConversationId), "the client keeps no conversations; send the whole chat with each request");
        if (o.ContinuationToken is not null) throw Rejected(nameof(ChatOptions.ContinuationToken), "there are no background responses to continue");
        if (o.AllowBackgroundResponses == true) throw Rejected(nameof(ChatOptions.AllowBackgroundResponses), "responses are computed while the caller waits");

        var ignored = new List<string>();
        if (o.AllowMultipleToolCalls is not null) ignored.Add(nameof(ChatOptions.AllowMultipleToolCalls));
        if (o.Reasoning is not null) ignored.Add(nameof(ChatOptions.Reasoning));
        if (o.RawRepresentationFactory is not null) ignored.Add(nameof(ChatOptions.RawRepresentationFactory));
        if (o.AdditionalProperties is { } extra)
            foreach (var key in extra.Keys)
                if (!KnownAdditionalProperties.Contains(key, StringComparer.Ordinal))
                    ignored.Add($"{nameof(ChatOptions.AdditionalProperties)}[\"{key}\"]");
        return ignored;
    }

    private static NotSupportedException Rejected(string option, string why) =>
        new($"ChatOptions.{option} is not supported by the AutoPrune chat client: {why}.");
}
