using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;

namespace ReadmeSnippets;

internal static class ChatClient
{
    public static async Task RunAsync()
    {
        using IChatClient chat = new AutoPruneChatClient("samples/models/shapes-llava-tiny");

        var response = await chat.GetResponseAsync(
            [new ChatMessage(ChatRole.User,
                [new DataContent(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png"), "image/png"),
                 new TextContent("How many blue objects are there?")])],
            new ChatOptions
            {
                MaxOutputTokens = 32,
                AdditionalProperties = new() { ["method"] = "autoprune", ["budget"] = 128 },  // or 0.3 = 30 % of the visual tokens
            });

        Console.WriteLine(response.Text);                                   // 0
        var report = response.GetPruningReport()!;                         // also on messages, streaming updates and cached responses
        Console.WriteLine($"{report.FlopsRatio:P0} of the unpruned prefill FLOPs; {response.Usage!.InputTokenCount} prompt tokens");
    }
}
