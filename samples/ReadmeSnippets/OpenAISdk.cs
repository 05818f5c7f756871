using System.ClientModel;
using OpenAI;
using OpenAI.Chat;

namespace ReadmeSnippets;

internal static class OpenAISdk
{
    public static async Task RunAsync()
    {
        var chat = new OpenAI.Chat.ChatClient("shapes-llava-tiny", new ApiKeyCredential(Environment.GetEnvironmentVariable("AUTOPRUNE_API_KEY") ?? "none"),
            new OpenAIClientOptions { Endpoint = new Uri("http://127.0.0.1:8080/v1") });

        var options = new ChatCompletionOptions { MaxOutputTokenCount = 32 };
        #pragma warning disable SCME0001 // ChatCompletionOptions.Patch (extra JSON fields) is marked experimental in OpenAI 2.x; it is the SDK's way to send one
        options.Patch.Set("$.autoprune"u8, BinaryData.FromString("""{"method": "autoprune", "budget": 96}"""));  // optional
        #pragma warning restore SCME0001

        ChatCompletion answer = await chat.CompleteChatAsync(
            [ChatMessage.CreateUserMessage(
                ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png")), "image/png"),
                ChatMessageContentPart.CreateTextPart("How many blue objects are there?"))],
            options);
        Console.WriteLine(answer.Content[0].Text);  // 0
    }
}
