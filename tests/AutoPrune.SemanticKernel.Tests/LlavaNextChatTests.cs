using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;
using SkText = Microsoft.SemanticKernel.TextContent;
using TextContent = Microsoft.Extensions.AI.TextContent;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>IChatClient and Semantic Kernel over a LLaVA-NeXT checkpoint folder, unchanged (a Mistral text model).</summary>
public sealed class LlavaNextChatTests
{
    private static readonly string Dir = Path.Combine(TestData.RepoRoot, "tests", "data", "llava-next-tiny", "llava-next-tiny-mistral");
    private static readonly string ImagePath = Path.Combine(TestData.RepoRoot, "tests", "data", "llava-next-tiny", "images", "06_50x60.png");
    private const string Question = "How many circles are there?";

    [Fact]
    public async Task ChatClient_and_SemanticKernel_answer_as_the_library_does()
    {
        // Unpruned (the default prunes): transformers' tokens are the full model's.
        using var model = VisionLanguageModel.Load(Dir, new ModelOptions { Device = "cpu", DefaultPruning = null });
        var reference = await model.AskAsync(VisionRequest.Create(Question, ImageInput.FromFile(ImagePath)) with { Generation = new GenerationOptions { MaxNewTokens = 4 } });
        Assert.Equal([264, 264, 264, 264], reference.TokenIds); // transformers' greedy tokens for this image

        using var client = new AutoPruneChatClient(Dir, o => { o.Device = "cpu"; o.MaxOutputTokens = 4; o.Method = "none"; });
        var bytes = File.ReadAllBytes(ImagePath);
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(bytes, "image/png"), new TextContent(Question)])]);
        Assert.Equal(reference.Text, response.Text);
        Assert.Equal(1103, response.Usage!.InputTokenCount); // [INST] ... [/INST] around 1080 image tokens

        using var service = new AutoPruneChatCompletionService(client);
        var history = new ChatHistory();
        history.AddUserMessage([new ImageContent(bytes, "image/png"), new SkText(Question)]);
        var sk = await service.GetChatMessageContentAsync(history);
        Assert.Equal(reference.Text, sk.Content);
    }

    [Fact]
    public async Task ChatClient_prunes_a_llava_next_image_by_request_and_by_a_configured_per_view_budget()
    {
        var bytes = File.ReadAllBytes(ImagePath);
        ChatMessage[] messages = [new ChatMessage(ChatRole.User, [new DataContent(bytes, "image/png"), new TextContent(Question)])];
        using var client = new AutoPruneChatClient(Dir, o => { o.Device = "cpu"; o.MaxOutputTokens = 1; });
        var response = await client.GetResponseAsync(messages, new ChatOptions { AdditionalProperties = new() { ["method"] = "divprune", ["budget"] = 0.25 } });
        var report = response.GetPruningReport()!;
        Assert.Equal(AutoPrune.Pruning.PruningMethod.DivPrune, report.Method);
        Assert.Equal(264, report.AvgVisualTokensProcessed, 6); // a quarter of the 50x60 image's 1,056 patches
        Assert.NotNull(report.Patches);

        using var perView = new AutoPruneChatClient(Dir, o =>
        {
            o.Device = "cpu";
            o.MaxOutputTokens = 1;
            o.Pruning = new AutoPrune.Pruning.PruningOptions
            {
                Method = AutoPrune.Pruning.PruningMethod.VisionZip, Budget = 100, BudgetScope = AutoPrune.Pruning.BudgetScope.PerView,
            };
        });
        report = (await perView.GetResponseAsync(messages)).GetPruningReport()!;
        Assert.Equal(AutoPrune.Pruning.PruningMethod.VisionZip, report.Method);
        Assert.Equal(300, report.AvgVisualTokensProcessed, 6); // 100 in the base view and 100 in each of its two tiles (240 patches each)
    }
}
