using AutoPrune.Pruning;
using AutoPrune.Tests.Reliability;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>
/// A request's pruning plan is solved once: the planner creates the request's pruning session (solving the method's
/// schedule and checking its budget) before queueing, and the pipeline runs that session. Counted over whole requests;
/// in the serial collection so no other test creates sessions meanwhile.
/// </summary>
[Collection(SerialReliability.Name)]
public sealed class RequestPlanTests
{
    [Theory]
    [InlineData(PruningMethod.None)]
    [InlineData(PruningMethod.FastV)]
    [InlineData(PruningMethod.VisionZip)]
    [InlineData(PruningMethod.AutoPrune)]
    public async Task One_request_solves_its_pruning_plan_once(PruningMethod method)
    {
        using var model = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", DefaultPruning = null });
        var row = TestData.Dev[1];
        var request = VisionRequest.Create(row.Question, ImageInput.FromFile(TestData.Image(row.Image))) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 2 },
            Pruning = method == PruningMethod.None ? null : new PruningOptions { Method = method, Budget = 128 },
        };
        await model.AskAsync(request); // warm: nothing below depends on it, but the first load's work is out of the count
        long before = PruningSession.Created;
        var answer = await model.AskAsync(request);
        Assert.Equal(1, PruningSession.Created - before);
        Assert.Equal(method, answer.Report.Method);
    }
}
