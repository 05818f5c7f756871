using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>Dependency injection: settings from configuration, validated at start; one model per configuration; disposal with the container.</summary>
public sealed class RegistrationTests
{
    /// <summary>The "AutoPrune" section: the fixture model on the CPU, then <paramref name="values"/> (later keys win).</summary>
    private static IConfiguration Config(params (string Key, string Value)[] values)
    {
        var settings = new Dictionary<string, string?> { ["AutoPrune:ModelDirectory"] = TestData.ModelDir, ["AutoPrune:Device"] = "cpu" };
        foreach (var (key, value) in values) settings[$"AutoPrune:{key}"] = value;
        return new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
    }

    private static IHost Host(IConfiguration config, Action<IServiceCollection> register, ListLoggerProvider? log = null)
    {
        var builder = Microsoft.Extensions.Hosting.Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Configuration.AddConfiguration(config);
        if (log is not null) builder.Logging.AddProvider(log);
        register(builder.Services);
        return builder.Build();
    }

    public static TheoryData<string, string, string> BadSettings => new()
    {
        { "Device", "cuda", "'cuda'" },
        { "Method", "turbo", "autoprune" },
        { "Budget", "96", "smallest feasible budget" },
        { "ModelDirectory", "/nonexistent/autoprune-model", "/nonexistent/autoprune-model" },
        { "MaxOutputTokens", "0", "MaxOutputTokens" },
    };

    [Theory]
    [MemberData(nameof(BadSettings))]
    public async Task Configuration_errors_fail_the_host_at_start_naming_the_problem(string key, string value, string expected)
    {
        // SparseVLM cannot average fewer than 148 visual tokens on the fixture's 8 layers, so 96 is infeasible for it.
        var config = Config(("Method", key == "Budget" ? "sparsevlm" : "fastv"), (key, value));
        using var host = Host(config, s => s.AddAutoPruneChatClient(config.GetSection("AutoPrune")));
        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains(expected, e.Message);
        Assert.Single(e.Failures);
    }

    [Fact]
    public async Task A_valid_configuration_starts_without_loading_the_model()
    {
        var log = new ListLoggerProvider();
        var config = Config(("Method", "fastv"), ("Budget", "0.25"));
        using var host = Host(config, s => s.AddAutoPruneChatClient(config.GetSection("AutoPrune")), log);
        await host.StartAsync();
        var client = host.Services.GetRequiredService<IChatClient>();
        var o = client.GetService<AutoPruneChatClientOptions>()!;
        Assert.Equal((TestData.ModelDir, "cpu", "fastv", 0.25), (o.ModelDirectory, o.Device, o.Method, o.Budget));
        Assert.DoesNotContain(log.Messages, m => m.Text.StartsWith("Loaded ", StringComparison.Ordinal));
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(File.ReadAllBytes(TestData.Image(TestData.KnownImage)), "image/png"), new TextContent(TestData.KnownQuestion)])]);
        Assert.Equal(PruningMethod.FastV, response.GetPruningReport()!.Method);
        Assert.Single(log.Messages, m => m.Text.StartsWith("Loaded ", StringComparison.Ordinal));
        await host.StopAsync();
    }

    [Fact]
    public async Task Registrations_on_the_same_configuration_share_one_model_and_it_is_disposed_with_the_container()
    {
        var log = new ListLoggerProvider();
        var config = Config();
        VisionLanguageModel model;
        using (var host = Host(config, s =>
        {
            s.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
            s.AddKeyedAutoPruneChatClient("same", config.GetSection("AutoPrune"), o => o.Method = "pdrop"); // a different default method, the same model
            s.AddKeyedAutoPruneChatClient("copy", TestData.ModelDir, o => { o.Device = "cpu"; o.PadToSquare = true; });
        }, log))
        {
            await host.StartAsync();
            model = host.Services.GetRequiredService<VisionLanguageModel>();
            Assert.Same(model, host.Services.GetRequiredService<IChatClient>().GetService<VisionLanguageModel>());
            Assert.Same(model, host.Services.GetRequiredKeyedService<IChatClient>("same").GetService<VisionLanguageModel>());
            Assert.Same(model, host.Services.GetRequiredKeyedService<VisionLanguageModel>("same"));
            var other = host.Services.GetRequiredKeyedService<VisionLanguageModel>("copy");
            Assert.NotSame(model, other); // other runtime options (pad to square): another model
            Assert.Equal(2, log.Messages.Count(m => m.Text.StartsWith("Loaded ", StringComparison.Ordinal)));
            await host.StopAsync();
        }
        await Assert.ThrowsAsync<ObjectDisposedException>(() => model.AskAsync(VisionRequest.Create("q")));
    }

    [Fact]
    public void Without_a_host_the_settings_are_checked_when_the_client_is_resolved()
    {
        var services = new ServiceCollection();
        services.AddAutoPruneChatClient(o => o.Device = "cpu");
        using var sp = services.BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => sp.GetRequiredService<IChatClient>());
        Assert.Contains("AutoPrune:ModelDirectory", e.Message);
    }

    [Fact]
    public void The_container_middleware_pipeline_wraps_the_client()
    {
        var services = new ServiceCollection();
        int built = 0;
        services.AddAutoPruneChatClient(TestData.ModelDir, o => o.Device = "cpu").Use(inner => { built++; return new Probe(inner); });
        using var sp = services.BuildServiceProvider();
        var client = sp.GetRequiredService<IChatClient>();
        Assert.IsType<Probe>(client);
        Assert.Equal(1, built);
        Assert.NotNull(client.GetService<AutoPruneChatClient>());
        Assert.Same(client, sp.GetRequiredService<IChatClient>());
    }

    private sealed class Probe(IChatClient inner) : DelegatingChatClient(inner);
}
