using AutoPrune.SemanticKernel;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using OpenAI.Chat;

namespace ReadmeSnippets;

internal static class StructuredOutputSkAndServer
{
    public static async Task RunAsync()
    {
        // Semantic Kernel: response_format in the OpenAI connector's forms ("json_object", a Type, a ChatResponseFormat, OpenAI's JSON object)
        var kernel = Kernel.CreateBuilder().AddAutoPruneChatCompletion("samples/models/shapes-llava-tiny").Build();
        var history = new ChatHistory();
        history.AddUserMessage([
            new ImageContent(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png"), "image/png"),
            new TextContent("How many objects are there?")]);
        var settings = new AutoPrunePromptExecutionSettings { MaxTokens = 64, ResponseFormat = typeof(StructuredOutput.ShapeReport) };
        var reply = await kernel.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(history, settings);
        Console.WriteLine(reply.Content);   // {"count":...,"color":"..."}

        // The server through the OpenAI .NET SDK: "response_format": {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}
        var options = new ChatCompletionOptions
        {
            MaxOutputTokenCount = 64,
            ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("count",
                BinaryData.FromString("""{"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}"""), jsonSchemaIsStrict: true),
            // or ChatResponseFormat.CreateJsonObjectFormat()
        };
        _ = options;   // send with ChatClient.CompleteChatAsync(messages, options) to autoprune serve
    }
}
