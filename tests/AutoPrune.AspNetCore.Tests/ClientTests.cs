using System.ClientModel;
using System.ClientModel.Primitives;
using System.Text.Json.Nodes;
using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AIChatRole = Microsoft.Extensions.AI.ChatRole;
using ChatFinishReason = OpenAI.Chat.ChatFinishReason;
using OpenAIChatMessage = OpenAI.Chat.ChatMessage;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// Real clients against the server: the official OpenAI .NET SDK in-process (Microsoft.AspNetCore.Mvc.Testing) and on
/// a loopback port with an API key, and Microsoft.Extensions.AI's IChatClient over the SDK on a loopback port. Every
/// answer must equal the library's (an AutoPruneChatClient over the same model) for the same request.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class ClientTests(LibraryFixture library, InProcessServer server) : IClassFixture<InProcessServer>
{
    private const string Question = TestData.KnownQuestion;
    private const string TextQuestion = "What shape has three sides?";

    private static ChatClient SdkClient(HttpClient http, string key = "unused") =>
        new(Api.ModelId, new ApiKeyCredential(key), new OpenAIClientOptions
        {
            Endpoint = new Uri(http.BaseAddress!, "v1"),
            Transport = new HttpClientPipelineTransport(http),
            NetworkTimeout = TimeSpan.FromMinutes(2),
        });

    private static List<OpenAIChatMessage> ImageQuestion(string image, string question) =>
    [
        OpenAIChatMessage.CreateUserMessage(
            ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(File.ReadAllBytes(TestData.Image(image))), "image/png"),
            ChatMessageContentPart.CreateTextPart(question)),
    ];

    /// <summary>Request options with the pruning extension field (<c>"autoprune": {...}</c>) set through the SDK's JSON patch.</summary>
    private static ChatCompletionOptions Options(string? method = null, double? budget = null)
    {
        var o = new ChatCompletionOptions { MaxOutputTokenCount = Api.MaxTokens };
        if (method is not null || budget is not null)
        {
            var knobs = new JsonObject();
            if (method is not null) knobs["method"] = method;
            if (budget is not null) knobs["budget"] = budget;
            o.Patch.Set("$.autoprune"u8, BinaryData.FromString(knobs.ToJsonString()));
        }
        return o;
    }

    private static ChatFinishReason Finish(ChatResponse r) =>
        r.FinishReason == Microsoft.Extensions.AI.ChatFinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    [Fact]
    public async Task OpenAI_sdk_in_process_image_and_text_answers_equal_the_library_with_pruning_knobs_usage_and_report()
    {
        var sdk = SdkClient(await server.ReadyClientAsync());

        foreach (var (method, budget) in new (string?, double?)[] { (null, null), ("fastv", 0.5), ("autoprune", 64), ("none", null) })
        {
            var result = await sdk.CompleteChatAsync(ImageQuestion(TestData.KnownImage, Question), Options(method, budget));
            var expected = await library.AskAsync(Question, TestData.KnownImage, method, budget);
            Assert.Equal(expected.Text, result.Value.Content[0].Text);
            Assert.Equal(expected.Usage!.InputTokenCount, result.Value.Usage.InputTokenCount);
            Assert.Equal(expected.Usage.OutputTokenCount, result.Value.Usage.OutputTokenCount);
            Assert.Equal(Api.ModelId, result.Value.Model);
            var report = JsonNode.Parse(result.GetRawResponse().Content.ToString())!["autoprune"]!["report"]!;
            var libraryReport = expected.GetPruningReport()!;
            Assert.Equal(Pruning.PruningMethods.Name(libraryReport.Method), (string?)report["method"]);
            Assert.Equal(libraryReport.AvgVisualTokensProcessed, (double)report["avg_visual_tokens_processed"]!);
            Assert.Equal(libraryReport.VisualTokensPerLayer, report["visual_tokens_per_layer"]!.AsArray().Select(n => (int)n!).ToArray());
        }

        var text = await sdk.CompleteChatAsync([OpenAIChatMessage.CreateUserMessage(TextQuestion)], Options());
        var expectedText = await library.AskAsync(TextQuestion);
        Assert.Equal(expectedText.Text, text.Value.Content[0].Text);
        Assert.Equal(Finish(expectedText), text.Value.FinishReason);
    }

    [Fact]
    public async Task OpenAI_sdk_in_process_streaming_equals_the_library_and_ends_with_usage()
    {
        var sdk = SdkClient(await server.ReadyClientAsync());
        foreach (var (image, question, method) in new (string?, string, string?)[] { (TestData.KnownImage, Question, "pdrop"), (null, TextQuestion, null), ("0003.png", "What color is the circle?", "autoprune") })
        {
            var messages = image is null ? [OpenAIChatMessage.CreateUserMessage(question)] : ImageQuestion(image, question);
            var text = new System.Text.StringBuilder();
            ChatFinishReason? finish = null;
            ChatTokenUsage? usage = null;
            await foreach (var update in sdk.CompleteChatStreamingAsync(messages, Options(method)))
            {
                foreach (var part in update.ContentUpdate) text.Append(part.Text);
                if (update.FinishReason is { } f) finish = f;
                usage ??= update.Usage;
            }
            var expected = await library.AskAsync(question, image, method);
            Assert.Equal(expected.Text, text.ToString());
            Assert.Equal(Finish(expected), finish);
            Assert.NotNull(usage); // the SDK asks for it (stream_options.include_usage)
            Assert.Equal(expected.Usage!.InputTokenCount, usage!.InputTokenCount);
            Assert.Equal(expected.Usage.OutputTokenCount, usage.OutputTokenCount);
        }
    }

    [Fact]
    public async Task OpenAI_sdk_lists_the_model_and_a_loopback_server_with_a_key_answers_only_with_it()
    {
        await using var loopback = await LoopbackServer.StartAsync(Api.Settings(("AutoPrune:Server:ApiKeys:0", Api.Key)));
        var models = new OpenAI.Models.OpenAIModelClient(new ApiKeyCredential(Api.Key), new OpenAIClientOptions { Endpoint = new Uri(loopback.Address, "v1") });
        Assert.Equal([Api.ModelId], (await models.GetModelsAsync()).Value.Select(m => m.Id));
        Assert.Equal(Api.ModelId, (await models.GetModelAsync(Api.ModelId)).Value.Id);

        var sdk = new ChatClient(Api.ModelId, new ApiKeyCredential(Api.Key), new OpenAIClientOptions { Endpoint = new Uri(loopback.Address, "v1") });
        var result = await sdk.CompleteChatAsync(ImageQuestion(TestData.KnownImage, Question), Options("visionzip", 0.25));
        Assert.Equal((await library.AskAsync(Question, TestData.KnownImage, "visionzip", 0.25)).Text, result.Value.Content[0].Text);

        var wrong = new ChatClient(Api.ModelId, new ApiKeyCredential("not-the-key"), new OpenAIClientOptions { Endpoint = new Uri(loopback.Address, "v1") });
        var denied = await Assert.ThrowsAsync<ClientResultException>(() => wrong.CompleteChatAsync([OpenAIChatMessage.CreateUserMessage(TextQuestion)], Options()));
        Assert.Equal(401, denied.Status);
        Assert.Contains("Incorrect API key", denied.Message);
    }

    [Fact]
    public async Task Extensions_AI_chat_client_over_a_loopback_port_equals_the_library_streaming_and_not()
    {
        await using var loopback = await LoopbackServer.StartAsync(Api.Settings());
        using IChatClient chat = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(loopback.Address, "v1") })
            .GetChatClient(Api.ModelId).AsIChatClient();

        foreach (var (image, question, method, budget) in new (string?, string, string?, double?)[]
                 { (TestData.KnownImage, Question, "fastv", 0.25), (null, TextQuestion, null, null), ("0005.png", "How many objects are there?", "sparsevlm", 160) })
        {
            var contents = new List<AIContent>();
            if (image is not null) contents.Add(new DataContent(File.ReadAllBytes(TestData.Image(image)), "image/png"));
            contents.Add(new Microsoft.Extensions.AI.TextContent(question));
            var options = new ChatOptions
            {
                MaxOutputTokens = Api.MaxTokens,
                // The pruning knobs travel in the "autoprune" extension field of the OpenAI request.
                RawRepresentationFactory = _ => Options(method, budget),
            };
            var expected = await library.AskAsync(question, image, method, budget);

            var response = await chat.GetResponseAsync([new AIChatMessage(AIChatRole.User, contents)], options);
            Assert.Equal(expected.Text, response.Text);
            Assert.Equal(expected.Usage!.InputTokenCount, response.Usage!.InputTokenCount);
            Assert.Equal(expected.Usage.OutputTokenCount, response.Usage.OutputTokenCount);

            var streamed = await chat.GetStreamingResponseAsync([new AIChatMessage(AIChatRole.User, contents)], options).ToChatResponseAsync();
            Assert.Equal(expected.Text, streamed.Text);
            Assert.Equal(expected.FinishReason, streamed.FinishReason);
        }
    }
}
