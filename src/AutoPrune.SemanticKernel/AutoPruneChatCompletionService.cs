using System.Runtime.CompilerServices;
using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Microsoft.SemanticKernel.Services;

namespace AutoPrune.SemanticKernel;

/// <summary>
/// Semantic Kernel <see cref="IChatCompletionService"/> derived from an <see cref="IChatClient"/> (normally an
/// <see cref="AutoPruneChatClient"/>): <see cref="ImageContent"/> in the <see cref="ChatHistory"/> (bytes or data URI)
/// becomes image <see cref="DataContent"/>; a history without images is a text question (so <c>InvokePromptAsync</c> works);
/// settings go through <see cref="AutoPrunePromptExecutionSettings"/>. <see cref="PromptExecutionSettings.FunctionChoiceBehavior"/>
/// is rejected with a <see cref="NotSupportedException"/> (the local model has no function calling).
/// </summary>
public sealed class AutoPruneChatCompletionService : IChatCompletionService, IDisposable
{
    private readonly IChatClient _client;
    private readonly bool _ownsClient;
    private readonly Dictionary<string, object?> _attributes = new();

    /// <summary>Wraps a chat client; <paramref name="ownsClient"/> disposes it with the service.</summary>
    public AutoPruneChatCompletionService(IChatClient chatClient, bool ownsClient = false)
    {
        ArgumentNullException.ThrowIfNull(chatClient);
        _client = chatClient;
        _ownsClient = ownsClient;
        if (chatClient.GetService<ChatClientMetadata>()?.DefaultModelId is { } id) _attributes[AIServiceExtensions.ModelIdKey] = id;
    }

    /// <summary>The chat client the service runs on.</summary>
    public IChatClient ChatClient => _client;

    public IReadOnlyDictionary<string, object?> Attributes => _attributes;

    public async Task<IReadOnlyList<ChatMessageContent>> GetChatMessageContentsAsync(ChatHistory chatHistory, PromptExecutionSettings? executionSettings = null,
        Kernel? kernel = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(chatHistory);
        var options = ToChatOptions(executionSettings);
        var response = await _client.GetResponseAsync(ToMessages(chatHistory), options, cancellationToken).ConfigureAwait(false);
        var message = response.Messages.LastOrDefault() ?? new ChatMessage(ChatRole.Assistant, response.Text);
        var content = new ChatMessageContent(AuthorRole.Assistant, message.Text, response.ModelId ?? options.ModelId, response, metadata: Metadata(response.ResponseId,
            response.FinishReason, response.Usage, response.AdditionalProperties));
        return [content];
    }

    public async IAsyncEnumerable<StreamingChatMessageContent> GetStreamingChatMessageContentsAsync(ChatHistory chatHistory,
        PromptExecutionSettings? executionSettings = null, Kernel? kernel = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(chatHistory);
        var options = ToChatOptions(executionSettings);
        await foreach (var update in _client.GetStreamingResponseAsync(ToMessages(chatHistory), options, cancellationToken).ConfigureAwait(false))
        {
            var usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
            yield return new StreamingChatMessageContent(AuthorRole.Assistant, update.Text, update, modelId: update.ModelId ?? options.ModelId,
                metadata: Metadata(update.ResponseId, update.FinishReason, usage, update.AdditionalProperties));
        }
    }

    private static ChatOptions ToChatOptions(PromptExecutionSettings? executionSettings)
    {
        var settings = AutoPrunePromptExecutionSettings.FromExecutionSettings(executionSettings);
        if (settings.FunctionChoiceBehavior is { } behavior)
            throw new NotSupportedException(
                $"PromptExecutionSettings.FunctionChoiceBehavior ({behavior.GetType().Name}) is not supported by the AutoPrune chat completion service: the local model has no function calling. Leave it unset.");
        return settings.ToChatOptions();
    }

    private static List<ChatMessage> ToMessages(ChatHistory history)
    {
        var list = new List<ChatMessage>(history.Count);
        for (int i = 0; i < history.Count; i++)
        {
            var item = history[i];
            foreach (var part in item.Items)
                if (part is ImageContent { Data: null, Uri: { } uri } && !uri.IsFile)
                    throw new NotSupportedException($"Chat history message {i}: ImageContent with URI '{uri}' is not supported; pass the image bytes, a data URI or a file: URI.");
            list.Add(item.ToChatMessage());
        }
        return list;
    }

    private static Dictionary<string, object?> Metadata(string? responseId, ChatFinishReason? finish, UsageDetails? usage, AdditionalPropertiesDictionary? extra)
    {
        var m = new Dictionary<string, object?>();
        if (responseId is not null) m["ResponseId"] = responseId;
        if (finish is { } f) m["FinishReason"] = f.Value;
        if (usage is not null) m["Usage"] = usage;
        if (extra is not null)
            foreach (var (k, v) in extra) m[k] = v;
        return m;
    }

    public void Dispose()
    {
        if (_ownsClient) _client.Dispose();
    }
}
