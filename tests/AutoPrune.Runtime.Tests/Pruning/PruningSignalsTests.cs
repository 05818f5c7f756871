using AutoPrune.Pruning;
using AutoPrune.Tests;
using AutoPrune.Tests.Reliability;
using Xunit;

namespace AutoPrune.Runtime.Tests.Pruning;

/// <summary>
/// A method is refused on a model that lacks a signal it reads, naming the signal: the demo model with its vision feature
/// layer at the embeddings has no vision-tower attention or keys, so VisionZip and AutoPrune cannot run there, while the
/// methods reading only the decoder (FastV) and the projected tokens (DivPrune) do.
/// </summary>
public sealed class PruningSignalsTests
{
    [Fact]
    public void Each_method_declares_what_it_reads()
    {
        Assert.Equal(PruningSignals.None, PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.None }));
        Assert.Equal(PruningSignals.DecoderAttention, PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.FastV }));
        Assert.Equal(PruningSignals.ProjectedTokens, PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.DivPrune }));
        Assert.True(PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.VisionZip }).HasFlag(PruningSignals.VisionAttention));
        var coverage = PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.AutoPrune });
        var diversity = PruningSignalNeeds.Of(new PruningOptions { Method = PruningMethod.AutoPrune, AutoPruneBeforeLlmSelection = AutoPruneBeforeLlmSelection.Diversity });
        Assert.True(coverage.HasFlag(PruningSignals.VisionKeys) && !coverage.HasFlag(PruningSignals.ProjectedTokens));
        Assert.True(diversity.HasFlag(PruningSignals.ProjectedTokens) && !diversity.HasFlag(PruningSignals.VisionKeys));
    }

    [Fact]
    public async Task A_method_reading_a_signal_the_model_lacks_is_refused_naming_it_and_a_default_falls_back()
    {
        using var folder = new ModelFolder().EditJson("config.json", c => c["vision_feature_layer"] = 0);
        using var model = VisionLanguageModel.Load(folder.Path, new ModelOptions { Device = "cpu" });
        var row = TestData.Dev[0];
        VisionRequest Request(PruningOptions? pruning, PruningOptions? fallback = null) => VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 1 },
            Pruning = pruning,
            DefaultPruning = fallback,
        };
        foreach (var method in new[] { PruningMethod.VisionZip, PruningMethod.AutoPrune })
        {
            var e = await Assert.ThrowsAsync<NotSupportedException>(() => model.AskAsync(Request(new PruningOptions { Method = method, Budget = 128 })));
            Assert.Contains("the vision tower's attention to each visual token", e.Message);
            Assert.Contains("which this model does not provide", e.Message);
        }
        // A default that cannot serve the request runs unpruned, and the report says why.
        var fellBack = await model.AskAsync(Request(null, new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 }));
        Assert.Equal(PruningMethod.None, fellBack.Report.Method);
        Assert.Contains(fellBack.Report.Notes, n => n.Contains("which this model does not provide", StringComparison.Ordinal));
        // Methods that read only the decoder or the projected tokens still run.
        foreach (var method in new[] { PruningMethod.FastV, PruningMethod.DivPrune })
        {
            var answer = await model.AskAsync(Request(new PruningOptions { Method = method, Budget = 128 }));
            Assert.Equal(method, answer.Report.Method);
            Assert.InRange(answer.Report.AvgVisualTokensProcessed, 127, 128);
        }
    }
}
