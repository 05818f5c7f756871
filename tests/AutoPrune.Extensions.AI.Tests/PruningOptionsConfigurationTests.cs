using AutoPrune.Pruning;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary>
/// The options file <c>autoprune recommend</c> writes, as an "AutoPrune:Pruning" configuration section or as a file path:
/// the client's default pruning (no model is loaded).
/// </summary>
public sealed class PruningOptionsConfigurationTests
{
    private static string TempDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "autoprune-di-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    [Fact]
    public void A_recommended_options_file_works_as_a_section_or_a_path()
    {
        var written = new PruningOptions
        {
            Method = PruningMethod.AutoPrune, Budget = 96, Accounting = BudgetAccounting.Published, Positions = PrunedPositions.Original,
            AutoPruneScheduleShape = AutoPruneScheduleShape.Smooth, AutoPruneCoverage = 0.5, RecycleClusterDivisor = 7,
        };
        var dir = TempDir();
        var file = Path.Combine(dir, "autoprune-options.json");
        File.WriteAllText(file, written.ToJson());
        // appsettings.json with the file's object pasted under "AutoPrune:Pruning".
        var appsettings = Path.Combine(dir, "appsettings.json");
        File.WriteAllText(appsettings, "{ \"AutoPrune\": { \"ModelDirectory\": \"" + TestData.ModelDir + "\", \"Device\": \"cpu\", \"Pruning\": " + written.ToJson() + " } }");
        var config = new ConfigurationBuilder().AddJsonFile(appsettings).Build();
        var services = new ServiceCollection();
        services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        services.AddKeyedAutoPruneChatClient("file", TestData.ModelDir, o => { o.Device = "cpu"; o.PruningOptionsFile = file; });
        services.AddKeyedAutoPruneChatClient("override", TestData.ModelDir, o => { o.Device = "cpu"; o.PruningOptionsFile = file; o.Budget = 128; });
        using var sp = services.BuildServiceProvider();
        ChatMessage[] request = [new ChatMessage(ChatRole.User, "q")];
        AutoPruneChatClient Client(object? key) => (key is null ? sp.GetRequiredService<IChatClient>() : sp.GetRequiredKeyedService<IChatClient>(key)).GetService<AutoPruneChatClient>()!;
        Assert.Equal(written, Client(null).CreateRequest(request).DefaultPruning);
        Assert.Equal(written, Client("file").CreateRequest(request).DefaultPruning);
        Assert.Equal(written with { Budget = 128 }, Client("override").CreateRequest(request).DefaultPruning);
        // A method named by the request is explicit and keeps the configured constants.
        var knobs = new ChatOptions { AdditionalProperties = new() { ["method"] = "fastv" } };
        var asked = Client(null).CreateRequest(request, knobs);
        Assert.Equal(written with { Method = PruningMethod.FastV }, asked.Pruning);
        Assert.Null(asked.DefaultPruning);
    }

    [Fact]
    public void A_bad_file_or_section_is_an_error_naming_the_field()
    {
        var file = Path.Combine(TempDir(), "bad.json");
        File.WriteAllText(file, "{ \"Method\": \"AutoPrune\", \"AutoPruneCoverage\": -1 }");
        var e = Assert.ThrowsAny<ArgumentException>(() => new AutoPruneChatClient(new AutoPruneChatClientOptions { ModelDirectory = TestData.ModelDir, Device = "cpu", PruningOptionsFile = file }));
        Assert.Contains(file, e.Message);
        Assert.Contains("AutoPruneCoverage", e.Message);

        var options = new AutoPruneChatClientOptions { ModelDirectory = TestData.ModelDir, Device = "cpu", Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = -3 } };
        var problems = options.Validate();
        Assert.Contains(problems, p => p.Contains("AutoPrune:Pruning") && p.Contains("Budget"));
    }
}
