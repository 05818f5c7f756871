using System.Text.Json;
using AutoPrune.Extensions.AI;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;
using SkText = Microsoft.SemanticKernel.TextContent;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>The Semantic Kernel service's translation in isolation, over a client that records the request and never loads the model.</summary>
public sealed class ServiceTranslationTests
{
    private static readonly byte[] Png = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3];

    private static AutoPruneChatClient Client() => new(TestData.ModelDir, o => o.Device = "cpu");

    /// <summary>The SK service over a recording client: ImageContent (bytes, data URI) reaches the client as image DataContent,
    /// and SK settings (typed or generic from JSON) reach it as ChatOptions with the pruning knobs.</summary>
    [Fact]
    public async Task Semantic_Kernel_service_translates_history_and_settings()
    {
        using var real = Client();
        var recorder = new RecordingChatClient(real);
        var service = new AutoPruneChatCompletionService(recorder);
        var history = new ChatHistory("Be brief.");
        history.AddUserMessage([new ImageContent(Png, "image/png"), new SkText("How many?")]);
        history.AddAssistantMessage("1");
        history.AddUserMessage([new ImageContent("data:image/png;base64," + Convert.ToBase64String(Png)), new SkText("And now?")]);

        var settings = new AutoPrunePromptExecutionSettings { MaxTokens = 9, PruningMethod = PruningMethod.PDrop, Budget = 0.5 };
        var result = await service.GetChatMessageContentsAsync(history, settings);
        Assert.Equal("ok", result[0].Content);
        var req = recorder.LastRequest!;
        Assert.Equal(["Be brief.", "<image>\nHow many?", "1", "<image>\nAnd now?"], req.Turns.Select(t => t.Text));
        Assert.Equal(2, req.Images.Count);
        Assert.All(req.Images, i => Assert.Equal(Png, i.Bytes.ToArray()));
        Assert.Equal(9, req.Generation.MaxNewTokens);
        Assert.Equal(new PruningOptions { Method = PruningMethod.PDrop, Budget = 0.5 }, req.Pruning);

        var generic = JsonSerializer.Deserialize<PromptExecutionSettings>("""{"max_tokens": 3, "pruning_method": "AdaptPrune", "budget": 96}""")!;
        await foreach (var _ in service.GetStreamingChatMessageContentsAsync(history, generic)) { }
        req = recorder.LastRequest!;
        Assert.Equal(3, req.Generation.MaxNewTokens);
        Assert.Equal(new PruningOptions { Method = PruningMethod.AdaptPrune, Budget = 96 }, req.Pruning);

        // Function calling is rejected, naming the setting.
        var tools = new AutoPrunePromptExecutionSettings { FunctionChoiceBehavior = FunctionChoiceBehavior.Auto() };
        var rejected = await Assert.ThrowsAsync<NotSupportedException>(() => service.GetChatMessageContentsAsync(history, tools));
        Assert.Contains("FunctionChoiceBehavior", rejected.Message);

        var bad = new ChatHistory();
        bad.AddUserMessage([new ImageContent(new Uri("https://example.com/x.png")), new SkText("q")]);
        await Assert.ThrowsAsync<NotSupportedException>(() => service.GetChatMessageContentsAsync(bad));
    }

    /// <summary>Translates with the real client's translator and answers "ok" without a model.</summary>
    private sealed class RecordingChatClient(AutoPruneChatClient inner) : IChatClient
    {
        public VisionRequest? LastRequest { get; private set; }

        public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            LastRequest = inner.CreateRequest(messages, options);
            return Task.FromResult(new ChatResponse(new ChatMessage(ChatRole.Assistant, "ok")) { ResponseId = "r1", FinishReason = ChatFinishReason.Stop });
        }

        public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
            [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
        {
            LastRequest = inner.CreateRequest(messages, options);
            await Task.Yield();
            yield return new ChatResponseUpdate(ChatRole.Assistant, "ok") { ResponseId = "r1" };
        }

        public object? GetService(Type serviceType, object? serviceKey = null) => inner.GetService(serviceType, serviceKey);
        public void Dispose() { }
    }
}
