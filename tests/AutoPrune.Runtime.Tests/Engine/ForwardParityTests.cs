using AutoPrune.Compute;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Models.Llava;
using AutoPrune.Tests;
using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>Shared fixture: the tiny model loaded once for the internal-API tests.</summary>
public sealed class TinyModelFixture
{
    internal LlavaModel Model { get; }
    internal ImagePreprocessor Images { get; }

    public TinyModelFixture()
    {
        var config = LlavaConfig.Load(TestData.ModelDir);
        using var store = TensorNames.Open(TestData.ModelDir);
        Model = new LlavaModel(store, config);
        Images = ImagePreprocessor.Load(TestData.ModelDir);
    }

    internal float[] PrefillLogits(int[] ids, string imagePath)
    {
        var pixels = Images.PreprocessFile(imagePath, false);
        var vision = Model.Vision.Forward(pixels);
        var projected = Model.Project(vision.Features, vision.Tokens);
        var state = Sequence(ids, projected);
        using var generation = Model.StartGeneration(4);
        return generation.Prefill(state, null, CancellationToken.None);
    }

    /// <summary>The prefill sequence of a prompt with one image's projected rows.</summary>
    internal SequenceState Sequence(int[] ids, float[] projected) => Model.BuildSequence(ids, [ImageRows.OnHost(projected, Model.Hidden)]);
}

public sealed class ForwardParityTests(TinyModelFixture fx) : IClassFixture<TinyModelFixture>
{
    public static TheoryData<int> ReferenceIds => new(TestData.References.Select(r => r.Id));

    [Theory]
    [MemberData(nameof(ReferenceIds))]
    public void LastPositionLogitsMatchTransformersWithin1e3(int id)
    {
        var reference = TestData.References.Single(r => r.Id == id);
        var row = TestData.Dev.Single(r => r.Id == id);
        var logits = fx.PrefillLogits(reference.InputIds, TestData.Image(row.Image));
        Assert.Equal(reference.LastLogits.Length, logits.Length);
        double maxErr = 0;
        for (int i = 0; i < logits.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(logits[i] - reference.LastLogits[i]));
        Assert.True(maxErr < 1e-3, $"row {id}: max |logit - reference| = {maxErr:E3}");
    }
}
