using System.Diagnostics;
using System.Text;
using System.Text.Json;
using AutoPrune.Extensions.AI;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;
using SkText = Microsoft.SemanticKernel.TextContent;
using TextContent = Microsoft.Extensions.AI.TextContent;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>Every surface on the real fixture model.</summary>
public sealed class EndToEndTests(ChatFixture fx) : IClassFixture<ChatFixture>
{
    private const string Image = TestData.KnownImage, Question = TestData.KnownQuestion;

    [Fact]
    public async Task Same_answer_through_the_CLI_chat_client_Semantic_Kernel_and_dependency_injection()
    {
        var reference = await fx.ReferenceAsync(Image, Question);
        Assert.Equal("0", reference.Text.Trim());
        Assert.Equal(RunCli(Image, Question, ChatFixture.MaxTokens), reference.Text.Trim());

        // IChatClient, image as bytes
        var response = await fx.Client.GetResponseAsync([ChatFixture.Question(Image, Question)]);
        Assert.Equal(reference.Text, response.Text);
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
        Assert.Equal(reference.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(reference.TokenIds.Count, response.Usage.OutputTokenCount);
        Assert.False(string.IsNullOrEmpty(response.ResponseId));
        var report = Assert.IsType<PruningReport>(response.AdditionalProperties![PruningKnobs.ReportKey]);
        Assert.Equal(PruningMethod.AutoPrune, report.Method); // the one default, as ask's (PruningOptions.Default)
        Assert.Equal(PruningOptions.DefaultBudget, report.BudgetAsked);
        Assert.Equal("shapes-llava-tiny", response.ModelId);

        // IChatClient, image as a file: URI
        var byUri = await fx.Client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new UriContent(new Uri(TestData.Image(Image)), "image/png"), new TextContent(Question)])]);
        Assert.Equal(reference.Text, byUri.Text);

        // Semantic Kernel, ImageContent as bytes and as a data URI
        var bytes = File.ReadAllBytes(TestData.Image(Image));
        foreach (var image in new[] { new ImageContent(bytes, "image/png"), new ImageContent("data:image/png;base64," + Convert.ToBase64String(bytes)) })
        {
            var history = new ChatHistory();
            history.AddUserMessage([image, new SkText(Question)]);
            var sk = await fx.Service.GetChatMessageContentAsync(history, new AutoPrunePromptExecutionSettings { PruningMethod = PruningMethod.None });
            Assert.Equal(reference.Text, sk.Content);
            Assert.Equal(AuthorRole.Assistant, sk.Role);
            Assert.IsType<PruningReport>(sk.Metadata![PruningKnobs.ReportKey]);
        }

        // DI-resolved IChatClient and the Kernel's IChatCompletionService
        var di = await fx.Services.GetRequiredService<IChatClient>().GetResponseAsync([ChatFixture.Question(Image, Question)]);
        Assert.Equal(reference.Text, di.Text);
        var kernel = fx.Services.GetRequiredService<Kernel>();
        var kh = new ChatHistory();
        kh.AddUserMessage([new ImageContent(bytes, "image/png"), new SkText(Question)]);
        var kernelAnswer = await kernel.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(kh, kernel: kernel);
        Assert.Equal(reference.Text, kernelAnswer.Content);
    }

    /// <summary>
    /// Issue 28: a Semantic Kernel user message <c>[text, image]</c> gives <c>ask</c>'s 589-token prompt and answer, as
    /// <c>[image, text]</c> does (the chat template puts the images first); with no settings the service prunes with the
    /// one default, AutoPrune at 128.
    /// </summary>
    [Fact]
    public async Task Text_then_image_in_a_chat_history_gives_asks_prompt_and_answer_and_the_default_pruning()
    {
        const string image = "0000.png", question = "Is there a green circle?";
        var reference = await fx.ReferenceAsync(image, question);
        Assert.Equal(589, reference.PromptTokens);
        Assert.Equal("yes", reference.Text);
        Assert.Equal(RunCli(image, question, ChatFixture.MaxTokens), reference.Text);
        var bytes = File.ReadAllBytes(TestData.Image(image));
        foreach (var order in new[] { "image first", "text first" })
        {
            var history = new ChatHistory();
            history.AddUserMessage(order == "image first"
                ? [new ImageContent(bytes, "image/png"), new SkText(question)]
                : [new SkText(question), new ImageContent(bytes, "image/png")]);
            var sk = await fx.Service.GetChatMessageContentAsync(history);
            Assert.Equal(reference.Text, sk.Content);
            var usage = Assert.IsType<UsageDetails>(sk.Metadata!["Usage"]);
            Assert.Equal(reference.PromptTokens, usage.InputTokenCount);
            var report = Assert.IsType<PruningReport>(sk.Metadata![PruningKnobs.ReportKey]);
            Assert.Equal(PruningMethod.AutoPrune, report.Method);
            Assert.Equal(PruningOptions.DefaultBudget, report.BudgetAsked);
        }
    }

    [Fact]
    public async Task Streaming_concatenates_to_the_answer_with_one_response_id()
    {
        var reference = await fx.ReferenceAsync("0006.png", "What shape is the green object?");
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in fx.Client.GetStreamingResponseAsync([ChatFixture.Question("0006.png", "What shape is the green object?")]))
            updates.Add(u);
        Assert.Equal(reference.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.NotNull(updates[0].ResponseId);
        Assert.Equal(ChatFinishReason.Stop, updates[^1].FinishReason);
        var merged = updates.ToChatResponse();
        Assert.Equal(reference.Text, merged.Text);
        Assert.Equal(reference.PromptTokens, merged.Usage!.InputTokenCount);

        var history = new ChatHistory();
        history.AddUserMessage([new ImageContent(File.ReadAllBytes(TestData.Image("0006.png")), "image/png"), new SkText("What shape is the green object?")]);
        var sb = new StringBuilder();
        await foreach (var c in fx.Service.GetStreamingChatMessageContentsAsync(history))
            sb.Append(c.Content);
        Assert.Equal(reference.Text, sb.ToString());
    }

    [Fact]
    public async Task Cancellation_mid_stream_stops_within_one_token_and_leaves_the_model_usable()
    {
        // The fixture model ends its answers after a token or two; very hot sampling with this seed gives 13 tokens.
        var options = new ChatOptions { Temperature = 5f, Seed = 3, MaxOutputTokens = 30 };
        using var cts = new CancellationTokenSource();
        int before = 0, after = 0;
        var sw = Stopwatch.StartNew();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in fx.Client.GetStreamingResponseAsync([ChatFixture.Question(Image, "Describe the picture.")], options, cts.Token))
            {
                if (cts.IsCancellationRequested) after++;
                else if (u.Text.Length > 0 && ++before == 2) cts.Cancel();
            }
        });
        Assert.Equal(2, before);
        Assert.True(after <= 1, $"{after} updates arrived after cancellation");

        // Stopping early without a token (break) also ends the request.
        await foreach (var u in fx.Client.GetStreamingResponseAsync([ChatFixture.Question(Image, "Describe the picture.")], options))
            if (u.Text.Length > 0) break;

        var again = await fx.Client.GetResponseAsync([ChatFixture.Question(Image, Question)]);
        Assert.Equal((await fx.ReferenceAsync(Image, Question)).Text, again.Text);
    }

    [Fact]
    public async Task Several_turns_use_the_conversation_format()
    {
        // The fixture's 1024-token context holds one image (576 visual tokens), so the multi-turn test uses one;
        // two-image histories are covered by the translation tests and by the runtime's own length error below.
        ChatMessage[] chat =
        [
            new(ChatRole.System, "You answer questions about shapes."),
            ChatFixture.Question(Image, Question),
            new(ChatRole.Assistant, "0"),
            new(ChatRole.User, "What shape is the green object?"),
        ];
        var response = await fx.Client.GetResponseAsync(chat);
        var direct = await fx.Model.AskAsync(new VisionRequest
        {
            Turns =
            [
                new(TurnRole.System, "You answer questions about shapes."),
                new(TurnRole.User, "<image>\n" + Question),
                new(TurnRole.Assistant, "0"),
                new(TurnRole.User, "What shape is the green object?"),
            ],
            Images = [ImageInput.FromFile(TestData.Image(Image))],
            Generation = new GenerationOptions { MaxNewTokens = ChatFixture.MaxTokens },
        });
        Assert.Equal(direct.Text, response.Text);
        Assert.Equal(direct.PromptTokens, response.Usage!.InputTokenCount);
        Assert.True(response.Usage.InputTokenCount > (await fx.ReferenceAsync(Image, Question)).PromptTokens);

        var twoImages = new List<ChatMessage>(chat) { ChatFixture.Question("0006.png", "And here?") };
        twoImages.RemoveAt(3);
        var e = await Assert.ThrowsAsync<ArgumentException>(() => fx.Client.GetResponseAsync(twoImages));
        Assert.Contains("2 image(s)", e.Message);
    }

    /// <summary>
    /// Two images and several turns on the real weights: a copy of the fixture whose config.json allows 2048
    /// positions (the bundled one says 1024, which two 576-token images exceed). Answers through the client equal
    /// the engine's for the same conversation, and the prompt holds both images.
    /// </summary>
    [Fact]
    public async Task Two_images_and_several_turns_on_a_longer_context_copy()
    {
        var dir = Path.Combine(Path.GetTempPath(), "autoprune-sk-2048-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var cfgPath = Path.Combine(dir, "config.json");
            var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))!;
            cfg["text_config"]!["max_position_embeddings"] = 2048;
            File.WriteAllText(cfgPath, cfg.ToJsonString());
            using var model = VisionLanguageModel.Load(dir);
            using var client = new AutoPruneChatClient(model);
            ChatMessage[] chat =
            [
                new(ChatRole.System, "You answer questions about shapes."),
                ChatFixture.Question(Image, Question),
                new(ChatRole.Assistant, "0"),
                ChatFixture.Question("0006.png", "What shape is the green object?"),
            ];
            var response = await client.GetResponseAsync(chat, new ChatOptions { MaxOutputTokens = ChatFixture.MaxTokens });
            var direct = await model.AskAsync(new VisionRequest
            {
                Turns =
                [
                    new(TurnRole.System, "You answer questions about shapes."),
                    new(TurnRole.User, "<image>\n" + Question),
                    new(TurnRole.Assistant, "0"),
                    new(TurnRole.User, "<image>\nWhat shape is the green object?"),
                ],
                Images = [ImageInput.FromFile(TestData.Image(Image)), ImageInput.FromFile(TestData.Image("0006.png"))],
                Generation = new GenerationOptions { MaxNewTokens = ChatFixture.MaxTokens },
            });
            Assert.Equal(1152, direct.VisualTokens);
            Assert.True(direct.PromptTokens > 1152);
            Assert.Equal(direct.PromptTokens, response.Usage!.InputTokenCount);
            Assert.Equal(direct.Text, response.Text);
            Assert.NotEmpty(direct.TokenIds);
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    [Fact]
    public async Task Sixteen_concurrent_requests_through_one_registered_client_match_one_at_a_time()
    {
        var client = fx.Services.GetRequiredService<IChatClient>();
        (string Image, string Question)[] pairs =
        [
            (Image, Question), ("0005.png", "How many squares are there?"), ("0006.png", "What shape is the green object?"), ("0301.png", "How many objects are there?"),
        ];
        var sequential = new List<string>();
        foreach (var (img, q) in pairs)
            sequential.Add((await client.GetResponseAsync([ChatFixture.Question(img, q)])).Text);
        var concurrent = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Task.Run(async () =>
            (i, (await client.GetResponseAsync([ChatFixture.Question(pairs[i % 4].Image, pairs[i % 4].Question)])).Text))));
        Assert.All(concurrent, r => Assert.Equal(sequential[r.i % 4], r.Text));
        Assert.Equal((await fx.ReferenceAsync(Image, Question)).Text, sequential[0]);
    }

    /// <summary>Runs the CLI's built <c>autoprune.dll ask --json</c> (copied next to the tests by the project reference).</summary>
    private static string RunCli(string image, string question, int maxTokens)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "autoprune.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "ask", "--image", TestData.Image(image), "--question", question, "--method", "none", "--json",
                     "--model", TestData.ModelDir, "--max-tokens", maxTokens.ToString() })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(60_000), "the CLI did not finish in 60 s");
        Assert.True(p.ExitCode == 0, $"CLI exit code {p.ExitCode}: {stderr.Result}");
        using var doc = JsonDocument.Parse(stdout.Result);
        return doc.RootElement.GetProperty("answer").GetString()!;
    }
}
