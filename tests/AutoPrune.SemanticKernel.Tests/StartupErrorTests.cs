using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Microsoft.SemanticKernel;
using Xunit;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>Both adapters on one configuration (IChatClient and Semantic Kernel): a bad setting fails the start once, cleanly.</summary>
public sealed class StartupErrorTests
{
    public static TheoryData<string, string, string> BadSettings => new()
    {
        { "Method", "magic", "Unknown pruning method 'magic' in 'AutoPrune:Method'" },
        { "Budget", "3", "The smallest feasible budget is 148." },
    };

    [Theory]
    [MemberData(nameof(BadSettings))]
    public async Task With_both_adapters_registered_each_start_up_error_appears_once_without_parameter_tails(string key, string value, string words)
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["AutoPrune:ModelDirectory"] = TestData.ModelDir,
            ["AutoPrune:Device"] = "cpu",
            ["AutoPrune:Method"] = "sparsevlm", // SparseVLM cannot average fewer than 148 visual tokens on the fixture
            [$"AutoPrune:{key}"] = value,
        }).Build();
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddConfiguration(config);
        builder.Services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        builder.Services.AddAutoPruneChatCompletion(config.GetSection("AutoPrune"));
        using var host = builder.Build();

        var e = await Assert.ThrowsAnyAsync<Exception>(() => host.StartAsync());
        var failures = (e is AggregateException a ? a.Flatten().InnerExceptions : [e]).Cast<OptionsValidationException>().SelectMany(x => x.Failures).ToList();
        var message = Assert.Single(failures);
        Assert.Contains(words, message);
        Assert.DoesNotContain("(Parameter", message);
        Assert.DoesNotContain("''", message);
    }
}
