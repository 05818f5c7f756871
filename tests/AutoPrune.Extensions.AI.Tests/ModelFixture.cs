namespace AutoPrune.Extensions.AI.Tests;

/// <summary>The real fixture model, loaded once per test class that asks for it, with a client over it.</summary>
public sealed class ModelFixture : IDisposable
{
    public const int MaxTokens = 8;

    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu" });

    public AutoPruneChatClient Client(Action<AutoPruneChatClientOptions>? configure = null)
    {
        var o = new AutoPruneChatClientOptions { MaxOutputTokens = MaxTokens };
        configure?.Invoke(o);
        return new AutoPruneChatClient(Model, o);
    }

    public static Microsoft.Extensions.AI.ChatMessage Question(string image, string question) =>
        new(Microsoft.Extensions.AI.ChatRole.User,
            [new Microsoft.Extensions.AI.DataContent(File.ReadAllBytes(TestData.Image(image)), "image/png"), new Microsoft.Extensions.AI.TextContent(question)]);

    public void Dispose() => Model.Dispose();
}
