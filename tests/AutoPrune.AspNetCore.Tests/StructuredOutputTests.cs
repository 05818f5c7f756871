using System.ClientModel;
using System.ClientModel.Primitives;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;

namespace AutoPrune.AspNetCore.Tests;

/// <summary><c>response_format</c> through the official OpenAI .NET SDK: JSON object and JSON schema answers parse and validate, streamed or not, and equal the library's.</summary>
[Collection(ServerCollection.Name)]
public sealed class StructuredOutputTests(LibraryFixture library, InProcessServer server) : IClassFixture<InProcessServer>
{
    private const string Schema = """
        {"type":"object","properties":{"shape":{"enum":["circle","square","triangle"]},"count":{"type":"integer"},"colors":{"type":"array","items":{"type":"string","maxLength":8},"maxItems":2}},
         "required":["shape","count"],"additionalProperties":false}
        """;

    private static ChatClient Sdk(HttpClient http) => new(Api.ModelId, new ApiKeyCredential("unused"), new OpenAIClientOptions
    {
        Endpoint = new Uri(http.BaseAddress!, "v1"),
        Transport = new HttpClientPipelineTransport(http),
        NetworkTimeout = TimeSpan.FromMinutes(2),
    });

    private static List<ChatMessage> Question(string question) =>
    [
        ChatMessage.CreateUserMessage(
            ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(File.ReadAllBytes(TestData.Image(TestData.KnownImage))), "image/png"),
            ChatMessageContentPart.CreateTextPart(question)),
    ];

    [Fact]
    public async Task A_json_schema_answer_validates_streamed_or_not_and_equals_the_library()
    {
        var sdk = Sdk(await server.ReadyClientAsync());
        var options = new ChatCompletionOptions
        {
            MaxOutputTokenCount = 48,
            ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("shapes", BinaryData.FromString(Schema), jsonSchemaIsStrict: true),
        };
        var result = await sdk.CompleteChatAsync(Question("Which shape is the largest, and how many are there?"), options);
        string text = result.Value.Content[0].Text;
        var root = JsonDocument.Parse(text).RootElement;
        Assert.Contains(root.GetProperty("shape").GetString(), new[] { "circle", "square", "triangle" });
        Assert.Equal(JsonValueKind.Number, root.GetProperty("count").ValueKind);
        Assert.All(root.EnumerateObject(), p => Assert.Contains(p.Name, new[] { "shape", "count", "colors" }));

        var streamed = new StringBuilder();
        await foreach (var update in sdk.CompleteChatStreamingAsync(Question("Which shape is the largest, and how many are there?"), options))
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
        Assert.Equal(text, streamed.ToString());

        // the library through Microsoft.Extensions.AI with the same schema
        using var client = library.Client(o => o.MaxOutputTokens = 48);
        var messages = new List<Microsoft.Extensions.AI.ChatMessage>
        {
            new(Microsoft.Extensions.AI.ChatRole.User,
                [new Microsoft.Extensions.AI.DataContent(File.ReadAllBytes(TestData.Image(TestData.KnownImage)), "image/png"), new Microsoft.Extensions.AI.TextContent("Which shape is the largest, and how many are there?")]),
        };
        var expected = await client.GetResponseAsync(messages,
            new Microsoft.Extensions.AI.ChatOptions { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.ForJsonSchema(JsonDocument.Parse(Schema).RootElement, "shapes") });
        Assert.Equal(expected.Text, text);
    }

    [Fact]
    public async Task A_json_object_answer_is_an_object()
    {
        var sdk = Sdk(await server.ReadyClientAsync());
        var result = await sdk.CompleteChatAsync(Question("What is in the picture?"),
            new ChatCompletionOptions { MaxOutputTokenCount = 32, ResponseFormat = ChatResponseFormat.CreateJsonObjectFormat() });
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(result.Value.Content[0].Text).RootElement.ValueKind);
        var text = await sdk.CompleteChatAsync(Question("What is in the picture?"),
            new ChatCompletionOptions { MaxOutputTokenCount = Api.MaxTokens, ResponseFormat = ChatResponseFormat.CreateTextFormat() });
        var plain = await library.AskAsync("What is in the picture?", TestData.KnownImage);
        Assert.Equal(plain.Text, text.Value.Content[0].Text);
    }
}
