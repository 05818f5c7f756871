using AutoPrune.Extensions.AI;
using AutoPrune.MLNet;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>Registering the Semantic Kernel service, alone and next to the IChatClient and an ML.NET stage.</summary>
public sealed class RegistrationTests
{
    private static IConfiguration Config(string method = "none") => new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
    {
        ["AutoPrune:ModelDirectory"] = TestData.ModelDir,
        ["AutoPrune:Device"] = "cpu",
        ["AutoPrune:Method"] = method,
        ["AutoPrune:MaxOutputTokens"] = "8",
    }).Build();

    [Fact]
    public void KernelBuilder_registers_the_service_with_an_optional_service_id()
    {
        // IKernelBuilder.Build() lives in Microsoft.SemanticKernel.Core; with the abstractions alone the kernel comes from DI.
        var services = new ServiceCollection();
        IKernelBuilder builder = services.AddKernel();
        builder.AddAutoPruneChatCompletion(TestData.ModelDir, o => o.Device = "cpu", serviceId: "vision");
        builder.AddAutoPruneChatCompletion(TestData.ModelDir, o => { o.Device = "cpu"; o.Method = "pdrop"; });
        using var sp = services.BuildServiceProvider();
        var kernel = sp.GetRequiredService<Kernel>();
        var keyed = Assert.IsType<AutoPruneChatCompletionService>(kernel.GetRequiredService<IChatCompletionService>("vision"));
        var plain = Assert.IsType<AutoPruneChatCompletionService>(kernel.GetRequiredService<IChatCompletionService>());
        Assert.NotSame(keyed, plain);
        Assert.Equal("shapes-llava-tiny", keyed.Attributes["ModelId"]);
        Assert.Equal("pdrop", plain.ChatClient.GetService<AutoPruneChatClientOptions>()!.Method);
        Assert.Null(keyed.ChatClient.GetService<AutoPruneChatClientOptions>()!.Method);
    }

    [Fact]
    public void A_bad_configuration_fails_when_the_service_is_resolved_naming_the_problem()
    {
        var services = new ServiceCollection();
        services.AddKernel().AddAutoPruneChatCompletion(TestData.ModelDir, o => { o.Device = "cpu"; o.Method = "turbo"; });
        using var sp = services.BuildServiceProvider();
        var e = Assert.ThrowsAny<Exception>(() => sp.GetRequiredService<IChatCompletionService>());
        Assert.Contains("turbo", e.Message);
        Assert.Contains("autoprune", e.Message);
    }

    /// <summary>
    /// The IChatClient and the Semantic Kernel service registered on the same configuration share one model (one
    /// "Loaded" log line), which is also the container's VisionLanguageModel an ML.NET stage can use.
    /// </summary>
    [Fact]
    public async Task The_chat_client_the_kernel_service_and_an_MLNet_stage_share_one_model()
    {
        var log = new CountingLoggerProvider();
        var config = Config();
        var services = new ServiceCollection();
        services.AddLogging(b => b.AddProvider(log));
        services.AddSingleton(config);
        services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        services.AddKernel().AddAutoPruneChatCompletion(config.GetSection("AutoPrune"));
        await using var sp = services.BuildServiceProvider();

        var chat = sp.GetRequiredService<IChatClient>();
        var kernelService = sp.GetRequiredService<Kernel>().GetRequiredService<IChatCompletionService>();
        var model = sp.GetRequiredService<VisionLanguageModel>();
        Assert.Same(model, chat.GetService<VisionLanguageModel>());
        Assert.Same(model, ((AutoPruneChatCompletionService)kernelService).ChatClient.GetService<VisionLanguageModel>());

        var bytes = File.ReadAllBytes(TestData.Image(TestData.KnownImage));
        var viaChat = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(bytes, "image/png"), new Microsoft.Extensions.AI.TextContent(TestData.KnownQuestion)])]);
        var history = new ChatHistory();
        history.AddUserMessage([new ImageContent(bytes, "image/png"), new Microsoft.SemanticKernel.TextContent(TestData.KnownQuestion)]);
        var viaKernel = await kernelService.GetChatMessageContentAsync(history);

        var ml = new MLContext(seed: 1);
        var rows = ml.Data.LoadFromEnumerable([new Row { Image = TestData.Image(TestData.KnownImage), Question = TestData.KnownQuestion }]);
        using var stage = ml.Transforms.AnswerVisualQuestion("Answer", "Image", "Question", model,
            new VisualQuestionOptions { Generation = new GenerationOptions { MaxNewTokens = 8 } }).Fit(rows);
        var viaMl = stage.Transform(rows).GetColumn<string>("Answer").Single();

        Assert.Equal("0", viaChat.Text.Trim());
        Assert.Equal(viaChat.Text, viaKernel.Content);
        Assert.Equal(viaChat.Text, viaMl);
        Assert.Equal(1, log.Loaded);
    }

    [Fact]
    public async Task InvokePromptAsync_answers_a_text_only_prompt_even_with_a_default_pruning_method()
    {
        var config = Config(method: "autoprune");
        var kernel = Kernel.CreateBuilder();
        kernel.Services.AddAutoPruneChatCompletion(config.GetSection("AutoPrune"));
        var result = await kernel.Build().InvokePromptAsync("What shape has three sides?");
        var content = result.GetValue<ChatMessageContent>()!;
        var report = Assert.IsType<PruningReport>(content.Metadata![PruningKnobs.ReportKey]);
        Assert.Equal(PruningMethod.None, report.Method);
        Assert.Contains(report.Notes, n => n.Contains("'autoprune'", StringComparison.Ordinal));
        Assert.Equal(content.Content, result.ToString());
    }

    private sealed class Row
    {
        public string Image { get; set; } = "";
        public string Question { get; set; } = "";
    }

    /// <summary>Counts the runtime's "Loaded ..." lines.</summary>
    private sealed class CountingLoggerProvider : ILoggerProvider
    {
        private int _loaded;
        public int Loaded => Volatile.Read(ref _loaded);
        public ILogger CreateLogger(string categoryName) => new Logger(this);
        public void Dispose() { }

        private sealed class Logger(CountingLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (formatter(state, exception).StartsWith("Loaded ", StringComparison.Ordinal)) Interlocked.Increment(ref owner._loaded);
            }
        }
    }
}
