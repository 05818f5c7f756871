using System.Text.Json;
using AutoPrune;
using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;

namespace ReadmeSnippets;

internal static class StructuredOutput
{
    /// <summary>What the model is asked to fill in (Microsoft.Extensions.AI generates its JSON schema).</summary>
    public sealed record ShapeReport(int Count, string Color);

    public static async Task RunAsync()
    {
        using var model = VisionLanguageModel.Load("samples/models/shapes-llava-tiny");

        // The library: a JSON schema (or ResponseFormat.JsonObject for any JSON object)
        var answer = await model.AskAsync(VisionRequest.Create("How many objects are there?", ImageInput.FromFile("tests/data/shapes-vqa-dev/images/0002.png")) with
        {
            Generation = new GenerationOptions
            {
                MaxNewTokens = 64,
                ResponseFormat = ResponseFormat.ForJsonSchema("""
                    {"type": "object", "properties": {"count": {"type": "integer"}, "shape": {"enum": ["circle", "square", "triangle"]}},
                     "required": ["count", "shape"], "additionalProperties": false}
                    """, "shapes"),
            },
        });
        using var doc = JsonDocument.Parse(answer.Text);   // always parses and validates: {"count":...,"shape":"..."}
        Console.WriteLine(answer.Text);

        // Microsoft.Extensions.AI: a typed result (ShapeReport is a record with an int Count and a string Color)
        using IChatClient chat = new AutoPruneChatClient(model);
        var typed = await chat.GetResponseAsync<ShapeReport>(
            [new ChatMessage(ChatRole.User,
                [new DataContent(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png"), "image/png"), new TextContent("How many objects are there?")])],
            new ChatOptions { MaxOutputTokens = 64 });   // or ResponseFormat = ChatResponseFormat.Json / ChatResponseFormat.ForJsonSchema(schema, "name")
        Console.WriteLine(typed.Result);
    }
}
