using System.Text.Json;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;
using FunctionCallContent = Microsoft.Extensions.AI.FunctionCallContent;
using SkText = Microsoft.SemanticKernel.TextContent;
using TextContent = Microsoft.Extensions.AI.TextContent;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>The adapters' translation in isolation: no model is loaded (the client loads lazily).</summary>
public sealed class TranslationTests
{
    private static readonly byte[] Png = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3];

    private static AutoPruneChatClient Client(Action<AutoPruneChatClientOptions>? configure = null)
        => new(Path.Combine(Path.GetTempPath(), "autoprune-never-loaded"), configure);

    [Fact]
    public void ImageThenQuestion_RendersLikeTheCli()
    {
        using var client = Client();
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, [new DataContent(Png, "image/png"), new TextContent("How many?")])]);
        var cli = VisionRequest.Create("How many?", ImageInput.FromFile("x.png"));
        Assert.Equal(cli.Turns, req.Turns);
        Assert.Single(req.Images);
        Assert.Equal(Png, req.Images[0].Bytes.ToArray());
        Assert.Null(req.Pruning);
        Assert.Equal(64, req.Generation.MaxNewTokens);
    }

    [Fact]
    public void MultiTurnHistoryWithTwoImages_KeepsOrderAndRoles()
    {
        using var client = Client();
        var dataUri = "data:image/png;base64," + Convert.ToBase64String(Png);
        var file = new Uri(TestData.Image("0003.png"));
        var req = client.CreateRequest(
        [
            new ChatMessage(ChatRole.System, "Answer briefly."),
            new ChatMessage(ChatRole.User, [new DataContent(dataUri), new TextContent("How many"), new TextContent(" circles?")]),
            new ChatMessage(ChatRole.Assistant, "2"),
            new ChatMessage(ChatRole.User, [new TextContent("And here?"), new UriContent(file, "image/png")]),
        ]);
        Assert.Equal(
        [
            new ConversationTurn(TurnRole.System, "Answer briefly."),
            new ConversationTurn(TurnRole.User, "<image>\nHow many circles?"),
            new ConversationTurn(TurnRole.Assistant, "2"),
            new ConversationTurn(TurnRole.User, "And here?\n<image>"),
        ], req.Turns);
        Assert.Equal(2, req.Images.Count);
        Assert.Equal(Png, req.Images[0].Bytes.ToArray());
        Assert.Equal(file.LocalPath, req.Images[1].Path);
    }

    [Fact]
    public void ChatOptions_AreHonoured_AndPruningKnobsPassThrough()
    {
        using var client = Client();
        var options = new ChatOptions
        {
            MaxOutputTokens = 7, Temperature = 0.5f, TopP = 0.9f, Seed = 42, StopSequences = ["\n"],
            AdditionalProperties = new() { ["method"] = "AutoPrune", ["budget"] = 64 },
        };
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], options);
        Assert.Equal(7, req.Generation.MaxNewTokens);
        Assert.Equal(0.5f, req.Generation.Temperature);
        Assert.Equal(0.9f, req.Generation.TopP);
        Assert.Equal(42, req.Generation.Seed);
        Assert.Equal(["\n"], req.Generation.StopSequences!);
        Assert.Equal(PruningMethod.AutoPrune, req.Pruning!.Method);
        Assert.Equal(64, req.Pruning.Budget);

        // JSON values (as from a deserialised request), fraction budgets as strings, enum values, kebab-case names
        var json = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>("""{"method":"sparse-vlm","budget":"0.25"}""")!;
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new(json.ToDictionary(k => k.Key, k => (object?)k.Value)) });
        Assert.Equal(new PruningOptions { Method = PruningMethod.SparseVLM, Budget = 0.25 }, req.Pruning);
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["method"] = PruningMethod.FastV } });
        Assert.Equal(PruningMethod.FastV, req.Pruning!.Method);
    }

    [Fact]
    public void ClientDefaults_ApplyWhenTheRequestSaysNothing()
    {
        using var client = Client(o => { o.Method = "visionzip"; o.Budget = 192; o.MaxOutputTokens = 5; });
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")]);
        Assert.Equal(new PruningOptions { Method = PruningMethod.VisionZip, Budget = 192 }, req.Pruning);
        Assert.Equal(5, req.Generation.MaxNewTokens);
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["method"] = "none" } });
        Assert.Equal(PruningMethod.None, req.Pruning!.Method);
    }

    [Fact]
    public void BadParts_GiveClearErrorsNamingThePart()
    {
        using var client = Client();
        var e1 = Assert.Throws<ArgumentException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, [new TextContent("q"), new DataContent(Png, "application/pdf")])]));
        Assert.Contains("Message 0, part 1", e1.Message);
        Assert.Contains("application/pdf", e1.Message);

        var e2 = Assert.Throws<NotSupportedException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, "q"), new ChatMessage(ChatRole.Assistant, [new FunctionCallContent("c1", "f")]), new ChatMessage(ChatRole.User, "q")]));
        Assert.Contains("Message 1", e2.Message);
        Assert.Contains("part 0", e2.Message);
        Assert.Contains(nameof(FunctionCallContent), e2.Message);

        var e3 = Assert.Throws<NotSupportedException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, [new UriContent("https://example.com/a.png", "image/png"), new TextContent("q")])]));
        Assert.Contains("part 0", e3.Message);

        var e4 = Assert.Throws<ArgumentException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")],
            new ChatOptions { AdditionalProperties = new() { ["method"] = "turbo" } }));
        Assert.Contains("turbo", e4.Message);
        Assert.Contains("autoprune", e4.Message);

        Assert.Throws<ArgumentOutOfRangeException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")],
            new ChatOptions { AdditionalProperties = new() { ["budget"] = -3 } }));
        Assert.Throws<NotSupportedException>(() => client.CreateRequest([new ChatMessage(ChatRole.Tool, "x"), new ChatMessage(ChatRole.User, "q")]));
        Assert.Throws<ArgumentException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q"), new ChatMessage(ChatRole.Assistant, "a")]));
    }

    /// <summary>The SK service over a recording client: ImageContent (bytes, data URI) reaches the client as image DataContent,
    /// and SK settings (typed or generic from JSON) reach it as ChatOptions with the pruning knobs.</summary>
    [Fact]
    public async Task SemanticKernelService_TranslatesHistoryAndSettings()
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
