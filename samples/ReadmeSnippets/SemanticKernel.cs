using AutoPrune.Pruning;
using AutoPrune.SemanticKernel;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

namespace ReadmeSnippets;

internal static class SemanticKernel
{
    public static async Task RunAsync()
    {
        var kernel = Kernel.CreateBuilder()
            .AddAutoPruneChatCompletion("samples/models/shapes-llava-tiny", o => o.Method = "autoprune", serviceId: "vision")
            .Build();   // Build() comes with Microsoft.SemanticKernel(.Core); with the abstractions only, use services.AddKernel() and resolve Kernel
        var chat = kernel.GetRequiredService<IChatCompletionService>("vision");

        var history = new ChatHistory("You answer questions about pictures of shapes.");
        history.AddUserMessage([
            new ImageContent(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png"), "image/png"),   // or new ImageContent("data:image/png;base64,...")
            new TextContent("How many blue objects are there?")]);

        var settings = new AutoPrunePromptExecutionSettings { MaxTokens = 32, PruningMethod = PruningMethod.AutoPrune, Budget = 128 };
        await foreach (var chunk in chat.GetStreamingChatMessageContentsAsync(history, settings, kernel))
            Console.Write(chunk.Content);

        // A prompt without an image: the default method (autoprune) falls back to none, and the report says why.
        Console.WriteLine(await kernel.InvokePromptAsync("What shape has three sides?"));
    }
}
