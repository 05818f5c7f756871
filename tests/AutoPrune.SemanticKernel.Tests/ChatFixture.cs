using System.Collections.Concurrent;
using AutoPrune.Extensions.AI;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>The real fixture model, loaded once per test class, with the adapters over it and a DI container with its own registrations.</summary>
public sealed class ChatFixture : IDisposable
{
    public const int MaxTokens = 8;

    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir);
    public AutoPruneChatClient Client { get; }
    public AutoPruneChatCompletionService Service { get; }
    public ServiceProvider Services { get; }

    private readonly ConcurrentDictionary<(string, string), Task<VisionAnswer>> _reference = new();

    public ChatFixture()
    {
        Client = new AutoPruneChatClient(Model, new AutoPruneChatClientOptions { MaxOutputTokens = MaxTokens });
        Service = new AutoPruneChatCompletionService(Client);
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["AutoPrune:ModelDirectory"] = TestData.ModelDir,
            ["AutoPrune:Device"] = "cpu",
            ["AutoPrune:Method"] = "none",
            ["AutoPrune:MaxOutputTokens"] = MaxTokens.ToString(),
            ["AutoPrune:MaxConcurrentRequests"] = "4",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(config);
        services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        services.AddKernel();
        services.AddAutoPruneChatCompletion(config.GetSection("AutoPrune"));
        Services = services.BuildServiceProvider();
    }

    /// <summary>What the CLI computes: <see cref="VisionLanguageModel.AskAsync(VisionRequest, CancellationToken)"/> on <see cref="VisionRequest.Create"/>.</summary>
    public Task<VisionAnswer> ReferenceAsync(string image, string question) => _reference.GetOrAdd((image, question), k =>
        Model.AskAsync(VisionRequest.Create(k.Item2, ImageInput.FromFile(TestData.Image(k.Item1))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = MaxTokens },
        }));

    public static ChatMessage Question(string image, string question) =>
        new(ChatRole.User, [new DataContent(File.ReadAllBytes(TestData.Image(image)), "image/png"), new Microsoft.Extensions.AI.TextContent(question)]);

    public void Dispose()
    {
        Services.Dispose();
        Service.Dispose();
        Client.Dispose();
        Model.Dispose();
    }
}
