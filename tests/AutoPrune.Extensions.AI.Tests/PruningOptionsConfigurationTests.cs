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

    private static AutoPruneChatClientOptions Bound(params (string Key, string? Value)[] values)
    {
        var settings = new Dictionary<string, string?> { ["AutoPrune:ModelDirectory"] = TestData.ModelDir, ["AutoPrune:Device"] = "cpu" };
        foreach (var (k, v) in values) settings[k] = v;
        var config = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection();
        services.AddAutoPruneChatClient(config.GetSection("AutoPrune"));
        using var sp = services.BuildServiceProvider();
        try { return sp.GetRequiredService<IChatClient>().GetService<AutoPruneChatClientOptions>()!; }
        catch (Microsoft.Extensions.Options.OptionsValidationException e) { throw new ArgumentException(string.Join(" || ", e.Failures)); }
    }

    /// <summary>Issue 28, item 5: "AutoPrune:Pruning:Preset=autoprune-paper" was ignored silently; it is applied as in a file.</summary>
    [Fact]
    public void A_preset_in_the_configuration_section_is_applied_and_other_keys_override_it()
    {
        var o = Bound(("AutoPrune:Pruning:Preset", "autoprune-paper"), ("AutoPrune:Pruning:Budget", "96"));
        Assert.Equal(PruningOptions.AutoPrunePaper(96), o.Pruning);
        Assert.Equal(PruningOptions.Parse("""{"Preset": "autoprune-paper", "Budget": 96}"""), o.Pruning);
        // Every type an options file holds, from configuration strings: enums, numbers, booleans, a nested calibration.
        var all = Bound(("AutoPrune:Pruning:Method", "dart"), ("AutoPrune:Pruning:Accounting", "published"), ("AutoPrune:Pruning:AutoPruneRecycle", "true"),
            ("AutoPrune:Pruning:DartVisualPivots", "6"), ("AutoPrune:Pruning:AutoPruneCalibration:low", "0.1"), ("AutoPrune:Pruning:AutoPruneCalibration:high", "0.4"),
            ("AutoPrune:Pruning:AutoPruneCalibration:samples", "100")).Pruning!;
        Assert.Equal((PruningMethod.Dart, BudgetAccounting.Published, true, 6), (all.Method, all.Accounting, all.AutoPruneRecycle, all.DartVisualPivots));
        Assert.Equal((0.1, 0.4, 100), (all.AutoPruneCalibration!.Low, all.AutoPruneCalibration.High, all.AutoPruneCalibration.Samples));
    }

    /// <summary>Issue 28, item 5: unknown keys passed; now each is refused naming the key, in the section and in Pruning.</summary>
    [Theory]
    [InlineData("AutoPrune:Pruning:Budgett", "96", "Configuration section 'AutoPrune:Pruning': unknown field 'Budgett'")]
    [InlineData("AutoPrune:Pruning:Preset", "autoprune-papr", "field 'Preset' is 'autoprune-papr', not a preset")]
    [InlineData("AutoPrune:Pruning:Budget", "lots", "field 'Budget' has a value that is not a number")]
    [InlineData("AutoPrune:Pruning:Method", "turbo", "Method")]
    [InlineData("AutoPrune:Pruning:AutoPruneCoverage", "2", "field 'AutoPruneCoverage' = 2 is out of range")]
    [InlineData("AutoPrune:Methd", "fastv", "Configuration key 'AutoPrune:Methd' is not a setting")]
    [InlineData("AutoPrune:ModelOptions:MaxImagePixel", "100", "Configuration key 'AutoPrune:ModelOptions:MaxImagePixel' is not a setting")]
    public void An_unknown_key_or_a_bad_value_in_the_section_fails_at_start_naming_it(string key, string value, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => Bound((key, value)));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain(" || ", e.Message); // one problem, reported once (the binder does not report Pruning's too)
    }

    [Fact]
    public void Known_keys_of_the_section_and_the_servers_own_section_pass()
    {
        var o = Bound(("AutoPrune:Method", "fastv"), ("AutoPrune:Budget", "0.5"), ("AutoPrune:MaxOutputTokens", "7"), ("AutoPrune:ModelOptions:MaxImagePixels", "1000000"),
            ("AutoPrune:ModelOptions:FileLimits:ConfigBytes", "1000000"), ("AutoPrune:Server:QueueLimit", "3"), ("AutoPrune:modelid", "m"));
        Assert.Equal(("fastv", 0.5, 7, 1_000_000L, "m"), (o.Method, o.Budget, o.MaxOutputTokens, o.ModelOptions!.MaxImagePixels, o.ModelId));
        Assert.Null(o.Pruning);
    }
}
