using System.Text.Json;
using AutoPrune.Pruning;
using Microsoft.SemanticKernel;
using Xunit;

namespace AutoPrune.SemanticKernel.Tests;

public sealed class SettingsTests
{
    [Fact]
    public void Settings_round_trip_through_JSON_with_snake_case_names()
    {
        var s = new AutoPrunePromptExecutionSettings
        {
            ServiceId = "vision", MaxTokens = 16, Temperature = 0.2f, TopP = 0.8f, Seed = 7, StopSequences = ["."],
            PruningMethod = PruningMethod.AutoPrune, Budget = 0.125,
        };
        var json = JsonSerializer.Serialize(s);
        foreach (var name in new[] { "\"max_tokens\":16", "\"temperature\":0.2", "\"top_p\":0.8", "\"seed\":7", "\"pruning_method\":\"autoprune\"", "\"budget\":0.125", "\"stop_sequences\":[\".\"]" })
            Assert.Contains(name, json);
        var back = JsonSerializer.Deserialize<AutoPrunePromptExecutionSettings>(json)!;
        Assert.Equal(JsonSerializer.Serialize(back), json);
        Assert.Equal(PruningMethod.AutoPrune, back.PruningMethod);
        Assert.Equal(0.125, back.Budget);

        // Any PromptExecutionSettings, e.g. loaded from JSON or a prompt template, converts without throwing on missing keys
        var generic = JsonSerializer.Deserialize<PromptExecutionSettings>(json)!;
        var converted = AutoPrunePromptExecutionSettings.FromExecutionSettings(generic);
        Assert.Equal(json, JsonSerializer.Serialize(converted));
        var empty = AutoPrunePromptExecutionSettings.FromExecutionSettings(new PromptExecutionSettings());
        Assert.Null(empty.MaxTokens);
        Assert.Null(empty.PruningMethod);
        Assert.Null(AutoPrunePromptExecutionSettings.FromExecutionSettings(null).Budget);
        var strings = AutoPrunePromptExecutionSettings.FromExecutionSettings(
            JsonSerializer.Deserialize<PromptExecutionSettings>("""{"max_tokens":"12","method":"FastV","other":true}""")!);
        Assert.Equal(12, strings.MaxTokens);
        Assert.Equal(PruningMethod.FastV, strings.PruningMethod);
        Assert.True(strings.ExtensionData!.ContainsKey("other"));
    }

    [Fact]
    public void Clone_and_freeze()
    {
        var s = new AutoPrunePromptExecutionSettings { MaxTokens = 4, PruningMethod = PruningMethod.VisionZip, Budget = 64, StopSequences = ["x"] };
        var c = (AutoPrunePromptExecutionSettings)s.Clone();
        Assert.NotSame(s, c);
        Assert.Equal(JsonSerializer.Serialize(s), JsonSerializer.Serialize(c));
        s.Freeze();
        Assert.True(s.IsFrozen);
        Assert.Throws<InvalidOperationException>(() => s.Budget = 1);
        Assert.Throws<InvalidOperationException>(() => s.PruningMethod = PruningMethod.None);
        Assert.Throws<NotSupportedException>(() => s.StopSequences!.Add("y"));
        var thawed = (AutoPrunePromptExecutionSettings)s.Clone();
        Assert.False(thawed.IsFrozen);
        thawed.Budget = 32;
        Assert.Equal(32, thawed.Budget);
    }

    [Fact]
    public void ToChatOptions_carries_the_pruning_knobs()
    {
        var o = new AutoPrunePromptExecutionSettings { MaxTokens = 3, PruningMethod = PruningMethod.SparseVLM, Budget = 0.5 }.ToChatOptions();
        Assert.Equal(3, o.MaxOutputTokens);
        Assert.Equal("sparsevlm", o.AdditionalProperties!["method"]);
        Assert.Equal(0.5, o.AdditionalProperties["budget"]);
        Assert.Null(new AutoPrunePromptExecutionSettings().ToChatOptions().AdditionalProperties);
    }
}
