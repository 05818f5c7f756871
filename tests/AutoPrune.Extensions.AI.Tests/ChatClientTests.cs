using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.Caching.Memory;
using Microsoft.Extensions.Options;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>The IChatClient on the real fixture model: requests of every shape and the typed report wherever it ends up.</summary>
public sealed class ChatClientTests(ModelFixture fx) : IClassFixture<ModelFixture>
{
    private const string Image = TestData.KnownImage, Question = TestData.KnownQuestion;

    [Fact]
    public async Task A_text_only_chat_answers_like_the_engine_with_a_report_of_zero_visual_tokens()
    {
        using var client = fx.Client();
        var response = await client.GetResponseAsync("What shape has three sides?");
        var direct = await fx.Model.AskAsync(VisionRequest.Create("What shape has three sides?") with
        {
            Generation = new GenerationOptions { MaxNewTokens = ModelFixture.MaxTokens },
        });
        Assert.Equal(direct.Text, response.Text);
        Assert.Equal(direct.PromptTokens, response.Usage!.InputTokenCount);
        var report = response.GetPruningReport()!;
        Assert.Equal(PruningMethod.None, report.Method);
        Assert.All(report.VisualTokensPerLayer, n => Assert.Equal(0, n));
        Assert.Equal(0, Assert.IsType<int>(response.AdditionalProperties!["autoprune.visual_tokens"]));
    }

    [Fact]
    public async Task A_configured_default_method_falls_back_on_a_text_only_chat_and_an_asked_for_one_is_an_error()
    {
        using var client = fx.Client(o => { o.Method = "autoprune"; o.Budget = 128; });
        var response = await client.GetResponseAsync("What shape has three sides?");
        var report = response.GetPruningReport()!;
        Assert.Equal(PruningMethod.None, report.Method);
        Assert.Contains(report.Notes, n => n.Contains("'autoprune'", StringComparison.Ordinal) && n.Contains("no image", StringComparison.Ordinal));

        // With an image the default prunes.
        var pruned = (await client.GetResponseAsync([ModelFixture.Question(Image, Question)])).GetPruningReport()!;
        Assert.Equal(PruningMethod.AutoPrune, pruned.Method);

        var e = await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync("What shape has three sides?",
            new ChatOptions { AdditionalProperties = new() { ["method"] = "fastv" } }));
        Assert.Contains("'fastv'", e.Message);
        Assert.Contains("no image", e.Message);
    }

    /// <summary>
    /// Issue 28: <c>[text, image]</c> (the order most OpenAI examples use) built <c>USER: question\n&lt;image&gt;</c>, 588
    /// tokens, and answered "red"; the model's chat template puts a message's images first whatever the order, so both
    /// orders give <c>ask</c>'s 589-token prompt and its answer.
    /// </summary>
    [Fact]
    public async Task Text_then_image_gives_asks_prompt_and_answer_like_image_then_text()
    {
        const string image = "0000.png", question = "Is there a green circle?";
        var ask = await fx.Model.AskAsync(VisionRequest.Create(question, ImageInput.FromFile(TestData.Image(image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = ModelFixture.MaxTokens },
        });
        Assert.Equal(589, ask.PromptTokens);
        Assert.Equal("yes", ask.Text);
        using var client = fx.Client();
        var bytes = File.ReadAllBytes(TestData.Image(image));
        foreach (var parts in new List<AIContent>[]
        {
            [new DataContent(bytes, "image/png"), new TextContent(question)],
            [new TextContent(question), new DataContent(bytes, "image/png")],
        })
        {
            var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, parts)]);
            Assert.Equal(ask.PromptTokens, response.Usage!.InputTokenCount);
            Assert.Equal(ask.Text, response.Text);
            Assert.Equal(ask.TokenIds, ((VisionAnswer)response.RawRepresentation!).TokenIds);
        }
    }

    [Fact]
    public async Task GetPruningReport_works_on_the_response_its_message_streaming_updates_and_their_merge()
    {
        using var client = fx.Client(o => o.Method = "fastv");
        var response = await client.GetResponseAsync([ModelFixture.Question(Image, Question)]);
        var report = response.GetPruningReport()!;
        Assert.Equal(PruningMethod.FastV, report.Method);
        Assert.Same(report, response.Messages[^1].GetPruningReport());
        Assert.Same(report, response.RawRepresentation is VisionAnswer a ? a.Report : null);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync([ModelFixture.Question(Image, Question)])) updates.Add(u);
        Assert.All(updates.SkipLast(1), u => Assert.Null(u.GetPruningReport()));
        var last = updates[^1].GetPruningReport()!;
        Assert.Equal(report.VisualTokensPerLayer, last.VisualTokensPerLayer);
        var merged = updates.ToChatResponse();
        Assert.Equal(report.VisualTokensPerLayer, merged.GetPruningReport()!.VisualTokensPerLayer);

        // Another client's response has none.
        Assert.Null(new ChatResponse(new ChatMessage(ChatRole.Assistant, "hi")).GetPruningReport());
        var wrong = new ChatResponse(new ChatMessage(ChatRole.Assistant, "hi")) { AdditionalProperties = new() { [PruningKnobs.ReportKey] = 42 } };
        Assert.Contains(PruningKnobs.ReportKey, Assert.Throws<InvalidOperationException>(() => wrong.GetPruningReport()).Message);
    }

    [Fact]
    public async Task GetPruningReport_reads_a_report_that_a_distributed_cache_serialized()
    {
        using var inner = fx.Client(o => o.Method = "adaptprune");
        var cache = new MemoryDistributedCache(Options.Create(new MemoryDistributedCacheOptions()));
        using var cached = inner.AsBuilder().UseDistributedCache(cache).Build();
        var first = await cached.GetResponseAsync([ModelFixture.Question(Image, Question)]);
        var second = await cached.GetResponseAsync([ModelFixture.Question(Image, Question)]);
        Assert.Null(second.RawRepresentation); // answered by the cache, from JSON
        var fromCache = second.GetPruningReport()!;
        var original = first.GetPruningReport()!;
        Assert.Equal(PruningMethod.AdaptPrune, fromCache.Method);
        Assert.Equal(original.VisualTokensPerLayer, fromCache.VisualTokensPerLayer);
        Assert.Equal(original.FlopsRatio, fromCache.FlopsRatio);
        Assert.Equal(original.KeptIndicesPerLayer, fromCache.KeptIndicesPerLayer);
        Assert.Equal(original.Signals, fromCache.Signals);
        Assert.Equal(first.Text, second.Text);
    }

    [Fact]
    public void Metadata_names_the_provider_and_model_without_a_provider_uri()
    {
        using var client = fx.Client();
        var metadata = client.GetService<ChatClientMetadata>()!;
        Assert.Equal("autoprune", metadata.ProviderName);
        Assert.Equal("shapes-llava-tiny", metadata.DefaultModelId);
        Assert.Null(metadata.ProviderUri);
    }
}
