using System.Text.Json.Nodes;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// Issue 28 through the OpenAI-compatible endpoint: a user message's <c>[text, image_url]</c> and <c>[image_url, text]</c>
/// give <c>ask</c>'s 589-token prompt and answer (the chat template puts the images first), and a request that names no
/// pruning is pruned with the one default, AutoPrune at 128 visual tokens.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class ImageOrderAndDefaultTests(LibraryFixture library, InProcessServer server) : IClassFixture<InProcessServer>
{
    private const string Image = "0000.png", Question = "Is there a green circle?";

    private static JsonObject Body(bool textFirst)
    {
        var image = new JsonObject { ["type"] = "image_url", ["image_url"] = new JsonObject { ["url"] = Api.DataUrl(Image) } };
        var text = new JsonObject { ["type"] = "text", ["text"] = Question };
        return new JsonObject
        {
            ["model"] = Api.ModelId,
            ["max_tokens"] = Api.MaxTokens,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = textFirst ? new JsonArray(text, image) : new JsonArray(image, text) }),
        };
    }

    [Fact]
    public async Task Text_then_image_and_image_then_text_give_asks_prompt_and_answer_with_the_default_pruning()
    {
        // What `ask` computes: the image placed before the question, the model's default pruning.
        var ask = await library.Model.AskAsync(VisionRequest.Create(Question, ImageInput.FromFile(TestData.Image(Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = Api.MaxTokens },
        });
        Assert.Equal(589, ask.PromptTokens);
        Assert.Equal("yes", ask.Text);
        Assert.Equal(Pruning.PruningMethod.AutoPrune, ask.Report.Method);

        using var http = await server.ReadyClientAsync();
        foreach (bool textFirst in new[] { false, true })
        {
            using var response = await http.SendAsync(Api.Post(Body(textFirst).ToJsonString()));
            string body = await response.Content.ReadAsStringAsync();
            Assert.True(response.IsSuccessStatusCode, body);
            var json = JsonNode.Parse(body)!;
            Assert.Equal(ask.Text, (string?)json["choices"]![0]!["message"]!["content"]);
            Assert.Equal(ask.PromptTokens, (int)json["usage"]!["prompt_tokens"]!);
            var report = json["autoprune"]!["report"]!;
            Assert.Equal("autoprune", (string?)report["method"]);
            Assert.Equal(Pruning.PruningOptions.DefaultBudget, (double)report["budget_asked"]!);
            Assert.Equal(ask.Report.VisualTokensPerLayer, report["visual_tokens_per_layer"]!.AsArray().Select(n => (int)n!).ToArray());
        }
    }
}
