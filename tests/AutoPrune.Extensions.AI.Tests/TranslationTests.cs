using System.Text.Json;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>The client's translation in isolation: no model is loaded (the client loads lazily).</summary>
public sealed class TranslationTests
{
    private static readonly byte[] Png = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3];

    private static AutoPruneChatClient Client(Action<AutoPruneChatClientOptions>? configure = null)
        => new(TestData.ModelDir, o => { o.Device = "cpu"; configure?.Invoke(o); });

    [Fact]
    public void Image_then_question_renders_like_the_CLI()
    {
        using var client = Client();
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, [new DataContent(Png, "image/png"), new TextContent("How many?")])]);
        var cli = VisionRequest.Create("How many?", ImageInput.FromFile("x.png"));
        Assert.Equal(cli.Turns, req.Turns);
        Assert.Single(req.Images);
        Assert.Equal(Png, req.Images[0].Bytes.ToArray());
        Assert.Null(req.Pruning);
        Assert.Equal(64, req.Generation.MaxNewTokens);
    }

    [Fact]
    public void Multi_turn_history_with_two_images_keeps_order_and_roles()
    {
        using var client = Client();
        var dataUri = "data:image/png;base64," + Convert.ToBase64String(Png);
        var file = new Uri(TestData.Image("0003.png"));
        var req = client.CreateRequest(
        [
            new ChatMessage(ChatRole.System, "Answer briefly."),
            new ChatMessage(ChatRole.User, [new DataContent(dataUri), new TextContent("How many"), new TextContent(" circles?")]),
            new ChatMessage(ChatRole.Assistant, "2"),
            new ChatMessage(ChatRole.User, [new TextContent("And here?"), new UriContent(file, "image/png")]),
        ]);
        Assert.Equal(
        [
            new ConversationTurn(TurnRole.System, "Answer briefly."),
            new ConversationTurn(TurnRole.User, "<image>\nHow many circles?"),
            new ConversationTurn(TurnRole.Assistant, "2"),
            new ConversationTurn(TurnRole.User, "And here?\n<image>"),
        ], req.Turns);
        Assert.Equal(2, req.Images.Count);
        Assert.Equal(Png, req.Images[0].Bytes.ToArray());
        Assert.Equal(file.LocalPath, req.Images[1].Path);
    }

    [Fact]
    public void Chat_options_are_honoured_and_pruning_knobs_pass_through()
    {
        using var client = Client();
        var options = new ChatOptions
        {
            MaxOutputTokens = 7, Temperature = 0.5f, TopP = 0.9f, Seed = 42, StopSequences = ["\n"],
            AdditionalProperties = new() { ["method"] = "AutoPrune", ["budget"] = 64 },
        };
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], options);
        Assert.Equal(7, req.Generation.MaxNewTokens);
        Assert.Equal(0.5f, req.Generation.Temperature);
        Assert.Equal(0.9f, req.Generation.TopP);
        Assert.Equal(42, req.Generation.Seed);
        Assert.Equal(["\n"], req.Generation.StopSequences!);
        Assert.Equal(PruningMethod.AutoPrune, req.Pruning!.Method);
        Assert.Equal(64, req.Pruning.Budget);

        // JSON values (as from a deserialised request), fraction budgets as strings, enum values, kebab-case names
        var json = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>("""{"method":"sparse-vlm","budget":"0.25"}""")!;
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new(json.ToDictionary(k => k.Key, k => (object?)k.Value)) });
        Assert.Equal(new PruningOptions { Method = PruningMethod.SparseVLM, Budget = 0.25 }, req.Pruning);
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["method"] = PruningMethod.FastV } });
        Assert.Equal(PruningMethod.FastV, req.Pruning!.Method);
        // The attention-free methods by name, like every other.
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["method"] = "Div-Prune", ["budget"] = 96 } });
        Assert.Equal(new PruningOptions { Method = PruningMethod.DivPrune, Budget = 96 }, req.Pruning);
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["pruning_method"] = "DART" } });
        Assert.Equal(PruningMethod.Dart, req.Pruning!.Method);
    }

    [Fact]
    public void Client_defaults_apply_when_the_request_says_nothing()
    {
        using var client = Client(o => { o.Method = "visionzip"; o.Budget = 192; o.MaxOutputTokens = 5; });
        var req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")]);
        // The configured method is a default: a request it cannot serve runs unpruned instead of failing.
        Assert.Null(req.Pruning);
        Assert.Equal(new PruningOptions { Method = PruningMethod.VisionZip, Budget = 192 }, req.DefaultPruning);
        Assert.Equal(5, req.Generation.MaxNewTokens);
        // A method in the request is explicit (and keeps the configured budget).
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["method"] = "fastv" } });
        Assert.Equal(new PruningOptions { Method = PruningMethod.FastV, Budget = 192 }, req.Pruning);
        Assert.Null(req.DefaultPruning);
        req = client.CreateRequest([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { AdditionalProperties = new() { ["budget"] = 64 } });
        Assert.Equal(new PruningOptions { Method = PruningMethod.VisionZip, Budget = 64 }, req.DefaultPruning);
    }

    [Fact]
    public void Bad_parts_give_clear_errors_naming_the_part()
    {
        using var client = Client();
        var e1 = Assert.Throws<ArgumentException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, [new TextContent("q"), new DataContent(Png, "application/pdf")])]));
        Assert.Contains("Message 0, part 1", e1.Message);
        Assert.Contains("application/pdf", e1.Message);

        var e2 = Assert.Throws<NotSupportedException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, "q"), new ChatMessage(ChatRole.Assistant, [new FunctionCallContent("c1", "f")]), new ChatMessage(ChatRole.User, "q")]));
        Assert.Contains("Message 1", e2.Message);
        Assert.Contains("part 0", e2.Message);
        Assert.Contains(nameof(FunctionCallContent), e2.Message);

        var e3 = Assert.Throws<NotSupportedException>(() => client.CreateRequest(
            [new ChatMessage(ChatRole.User, [new UriContent("https://example.com/a.png", "image/png"), new TextContent("q")])]));
        Assert.Contains("part 0", e3.Message);

        var e4 = Assert.Throws<ArgumentException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")],
            new ChatOptions { AdditionalProperties = new() { ["method"] = "turbo" } }));
        Assert.Contains("turbo", e4.Message);
        Assert.Contains("autoprune", e4.Message);

        Assert.Throws<ArgumentOutOfRangeException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")],
            new ChatOptions { AdditionalProperties = new() { ["budget"] = -3 } }));
        Assert.Throws<NotSupportedException>(() => client.CreateRequest([new ChatMessage(ChatRole.Tool, "x"), new ChatMessage(ChatRole.User, "q")]));
        Assert.Throws<ArgumentException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q"), new ChatMessage(ChatRole.Assistant, "a")]));
    }

    [Fact]
    public void A_chat_without_images_is_a_text_question_and_instructions_become_a_system_turn()
    {
        using var client = Client();
        var req = client.CreateRequest([new ChatMessage(ChatRole.System, "Be brief."), new ChatMessage(ChatRole.User, "What is a triangle?")],
            new ChatOptions { Instructions = "Answer in one word." });
        Assert.Empty(req.Images);
        Assert.Equal([new ConversationTurn(TurnRole.System, "Be brief.\nAnswer in one word."), new ConversationTurn(TurnRole.User, "What is a triangle?")], req.Turns);
    }

    public static TheoryData<string, ChatOptions> RejectedOptions => new()
    {
        { nameof(ChatOptions.Tools), new ChatOptions { Tools = [AIFunctionFactory.Create(() => 1, "one")] } },
        { nameof(ChatOptions.ToolMode), new ChatOptions { ToolMode = ChatToolMode.RequireAny } },
        { nameof(ChatOptions.ModelId), new ChatOptions { ModelId = "gpt-4o" } },
        { nameof(ChatOptions.TopK), new ChatOptions { TopK = 5 } },
        { nameof(ChatOptions.FrequencyPenalty), new ChatOptions { FrequencyPenalty = 0.5f } },
        { nameof(ChatOptions.PresencePenalty), new ChatOptions { PresencePenalty = 0.5f } },
        { nameof(ChatOptions.ConversationId), new ChatOptions { ConversationId = "c1" } },
        { nameof(ChatOptions.AllowBackgroundResponses), new ChatOptions { AllowBackgroundResponses = true } },
    };

    [Theory]
    [MemberData(nameof(RejectedOptions))]
    public void Options_the_model_cannot_honour_are_rejected_naming_the_option(string option, ChatOptions options)
    {
        using var client = Client();
        var e = Assert.Throws<NotSupportedException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")], options));
        Assert.Contains($"ChatOptions.{option}", e.Message);
        Assert.NotEqual(ChatOptionSupport.Ignored, ChatOptionsSupport.Table[option]);
    }

    [Fact]
    public void Supported_values_of_the_partly_supported_options_pass()
    {
        using var client = Client();
        var ok = new ChatOptions
        {
            ToolMode = ChatToolMode.Auto,
            Tools = [],
            ResponseFormat = ChatResponseFormat.Text,
            ModelId = "shapes-llava-tiny",
            AllowBackgroundResponses = false,
        };
        Assert.Single(client.CreateRequest([new ChatMessage(ChatRole.User, "q")], ok).Turns);
    }

    [Fact]
    public void Ignored_options_are_logged_as_warnings_naming_them()
    {
        var log = new ListLoggerProvider();
        using var factory = LoggerFactory.Create(b => b.AddProvider(log));
        using var client = new AutoPruneChatClient(TestData.ModelDir, o =>
        {
            o.Device = "cpu";
            o.ModelOptions = new ModelOptions { LoggerFactory = factory };
        });
        var options = new ChatOptions
        {
            AllowMultipleToolCalls = true,
            RawRepresentationFactory = _ => new object(),
            AdditionalProperties = new() { ["method"] = "none", ["user_tier"] = "gold" },
        };
        client.CreateRequest([new ChatMessage(ChatRole.User, "q")], options);
        var warnings = log.Messages.Where(m => m.Level == LogLevel.Warning).Select(m => m.Text).ToList();
        Assert.Equal(3, warnings.Count);
        Assert.Contains(warnings, w => w.Contains("ChatOptions.AllowMultipleToolCalls is ignored", StringComparison.Ordinal));
        Assert.Contains(warnings, w => w.Contains("ChatOptions.RawRepresentationFactory is ignored", StringComparison.Ordinal));
        Assert.Contains(warnings, w => w.Contains("ChatOptions.AdditionalProperties[\"user_tier\"] is ignored", StringComparison.Ordinal));
    }

    /// <summary>Every public ChatOptions property has a row in the table, so a new one in a later Microsoft.Extensions.AI is a decision, not an accident.</summary>
    [Fact]
    public void Every_chat_option_is_classified()
    {
        var properties = typeof(ChatOptions).GetProperties(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance)
            .Where(p => p.CanWrite).Select(p => p.Name).Order().ToList();
        Assert.Equal(properties, ChatOptionsSupport.Table.Keys.Order().ToList());
    }
}
