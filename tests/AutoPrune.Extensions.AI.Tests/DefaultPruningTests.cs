using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>
/// Issue 28: with nothing configured, the IChatClient prunes with the default every surface shares,
/// <see cref="PruningOptions.Default"/> (AutoPrune at 128 visual tokens), not with none.
/// </summary>
public sealed class DefaultPruningTests
{
    private static ChatMessage Question() => new(ChatRole.User,
        [new DataContent(File.ReadAllBytes(TestData.Image(TestData.KnownImage)), "image/png"), new TextContent(TestData.KnownQuestion)]);

    private static void AssertDefault(PruningReport report, double budget = PruningOptions.DefaultBudget)
    {
        Assert.Equal(PruningMethod.AutoPrune, report.Method);
        Assert.Equal(budget < 1 ? budget * 576 : budget, report.BudgetAsked); // a fraction of the fixture's 576 visual tokens
        Assert.True(report.FlopsRatio < 0.5, $"FLOPs ratio {report.FlopsRatio}");
    }

    [Fact]
    public async Task A_client_over_a_model_folder_with_nothing_configured_prunes_with_autoprune_at_128()
    {
        using var client = new AutoPruneChatClient(new AutoPruneChatClientOptions { ModelDirectory = TestData.ModelDir, Device = "cpu", MaxOutputTokens = 4 });
        var response = await client.GetResponseAsync([Question()]);
        Assert.Equal("0", response.Text);
        AssertDefault(response.GetPruningReport()!);
        // A budget alone keeps the default method, configured or per request.
        AssertDefault((await client.GetResponseAsync([Question()], new ChatOptions { AdditionalProperties = new() { ["budget"] = 96 } })).GetPruningReport()!, 96);
        using var budgetOnly = new AutoPruneChatClient(new AutoPruneChatClientOptions { ModelDirectory = TestData.ModelDir, Device = "cpu", MaxOutputTokens = 4, Budget = 0.25 });
        AssertDefault((await budgetOnly.GetResponseAsync([Question()])).GetPruningReport()!, 0.25);
    }

    [Fact]
    public async Task A_client_registered_from_a_configuration_with_only_the_model_folder_prunes_with_autoprune_at_128()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["AutoPrune:ModelDirectory"] = TestData.ModelDir,
            ["AutoPrune:Device"] = "cpu",
            ["AutoPrune:MaxOutputTokens"] = "4",
        }).Build();
        var services = new ServiceCollection();
        services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        await using var provider = services.BuildServiceProvider();
        var response = await provider.GetRequiredService<IChatClient>().GetResponseAsync([Question()]);
        AssertDefault(response.GetPruningReport()!);
    }
}
