using AutoPrune.Loading;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>Registration without loading a model (models load on the first request).</summary>
public sealed class RegistrationTests
{
    private static readonly string Missing = Path.Combine(Path.GetTempPath(), "autoprune-no-such-model");

    [Fact]
    public async Task ChatClient_BindsTheConfigSection_LoadsLazily_AndIsDisposedWithTheContainer()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["AutoPrune:ModelDirectory"] = Missing,
            ["AutoPrune:Device"] = "cpu",
            ["AutoPrune:Method"] = "AutoPrune",
            ["AutoPrune:Budget"] = "0.25",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(config);
        int middleware = 0;
        services.AddAutoPruneChatClient().Use(inner => { middleware++; return new DelegatingProbe(inner); });
        AutoPruneChatClient inner;
        using (var sp = services.BuildServiceProvider())
        {
            var client = sp.GetRequiredService<IChatClient>();
            Assert.IsType<DelegatingProbe>(client);
            Assert.Equal(1, middleware);
            inner = client.GetService<AutoPruneChatClient>()!;
            var o = inner.Options;
            Assert.Equal((Missing, "cpu", "AutoPrune", 0.25), (o.ModelDirectory, o.Device, o.Method, o.Budget));
            Assert.Equal(new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 0.25 },
                inner.CreateRequest([new ChatMessage(ChatRole.User, "q")]).Pruning);
            Assert.Same(client, sp.GetRequiredService<IChatClient>());
            // The model loads on the first request, so a bad folder shows up there, naming the folder.
            var e = await Assert.ThrowsAsync<ModelLoadException>(() => client.GetResponseAsync("q"));
            Assert.Contains(Missing, e.Message);
        }
        Assert.Throws<ObjectDisposedException>(() => inner.Model);
    }

    [Fact]
    public void ExplicitDirectory_AndCallback_OverrideConfiguration()
    {
        var services = new ServiceCollection();
        services.AddAutoPruneChatClient(Missing, o => o.Method = "fastv");
        using var sp = services.BuildServiceProvider();
        var o = sp.GetRequiredService<IChatClient>().GetService<AutoPruneChatClientOptions>()!;
        Assert.Equal((Missing, "fastv"), (o.ModelDirectory, o.Method));

        var none = new ServiceCollection();
        none.AddAutoPruneChatClient();
        using var sp2 = none.BuildServiceProvider();
        var error = Assert.Throws<InvalidOperationException>(() => sp2.GetRequiredService<IChatClient>());
        Assert.Contains("AutoPrune:ModelDirectory", error.Message);
    }

    [Fact]
    public void KernelBuilder_RegistersTheChatCompletionService_WithAnOptionalServiceId()
    {
        // IKernelBuilder.Build() lives in Microsoft.SemanticKernel.Core; with the abstractions alone the kernel comes from DI.
        var services = new ServiceCollection();
        IKernelBuilder builder = services.AddKernel();
        builder.AddAutoPruneChatCompletion(Missing, serviceId: "vision");
        builder.AddAutoPruneChatCompletion(Missing, o => o.Method = "pdrop");
        using var sp = services.BuildServiceProvider();
        var kernel = sp.GetRequiredService<Kernel>();
        var keyed = Assert.IsType<AutoPruneChatCompletionService>(kernel.GetRequiredService<IChatCompletionService>("vision"));
        var plain = Assert.IsType<AutoPruneChatCompletionService>(kernel.GetRequiredService<IChatCompletionService>());
        Assert.NotSame(keyed, plain);
        Assert.Equal("autoprune-no-such-model", keyed.Attributes["ModelId"]);
        Assert.Equal("pdrop", plain.ChatClient.GetService<AutoPruneChatClientOptions>()!.Method);
    }

    private sealed class DelegatingProbe(IChatClient inner) : DelegatingChatClient(inner);
}
