using System.Diagnostics;
using AutoPrune.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;

namespace AutoPrune.MLNet.Tests;

public sealed class FloatQuestion
{
    public string ImagePath { get; set; } = "";
    public float Question { get; set; }
}

/// <summary>Schema checks, laziness, saving and disposal: none of these answer a question.</summary>
[Collection(ModelCollection.Name)]
public sealed class StageTests(ModelFixture fx)
{
    private readonly MLContext _ml = new(seed: 1);
    private IDataView Good => _ml.Data.LoadFromEnumerable(new[] { new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" } });

    private VisualQuestionEstimator Estimator(string image = "ImagePath", string question = "Question") =>
        _ml.Transforms.AnswerVisualQuestion("Answer", image, question, RepoPaths.TinyModel, ModelFixture.Options());

    [Fact]
    public void MissingColumn_IsNamedInTheError()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Estimator(question: "Prompt").Fit(Good));
        Assert.Contains("'Prompt'", e.Message);
        Assert.Contains("not found", e.Message);
        Assert.Contains("String", e.Message);
        var shapeError = Assert.Throws<ArgumentOutOfRangeException>(() => Estimator(image: "Picture").GetOutputSchema(SchemaChecks.ShapeOf(Good.Schema)));
        Assert.Contains("'Picture'", shapeError.Message);
        Assert.Contains("'ImagePath'", shapeError.Message); // lists what is there
    }

    [Fact]
    public void WrongColumnType_NamesColumnExpectedAndActual()
    {
        var data = _ml.Data.LoadFromEnumerable(new[] { new FloatQuestion { ImagePath = "images/0002.png", Question = 1 } });
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Estimator().Fit(data));
        Assert.Contains("'Question'", e.Message);
        Assert.Contains("Single", e.Message);
        Assert.Contains("expected String", e.Message);

        var shapeError = Assert.Throws<ArgumentOutOfRangeException>(() => Estimator(image: "Question").GetOutputSchema(SchemaChecks.ShapeOf(data.Schema)));
        Assert.Contains("image column 'Question' has type Single", shapeError.Message);
        Assert.Contains("Image (an MLImage", shapeError.Message);

        using var t = Estimator().Fit(Good);
        var schemaError = Assert.Throws<ArgumentOutOfRangeException>(() => t.GetOutputSchema(data.Schema));
        Assert.Contains("'Question'", schemaError.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Transform(data));
    }

    [Fact]
    public void OutputSchema_HasAnswerAndReportColumns()
    {
        var shape = Estimator().GetOutputSchema(SchemaChecks.ShapeOf(Good.Schema));
        Assert.Equal(["ImagePath", "Question", "Answer", "Answer_KeptVisualTokens", "Answer_FlopsRatio", "Answer_PrefillMs", "Answer_Error"], shape.Select(c => c.Name));
        using var t = Estimator().Fit(Good);
        var schema = t.GetOutputSchema(Good.Schema);
        Assert.Equal(TextDataViewType.Instance, schema["Answer"].Type);
        Assert.Equal(NumberDataViewType.Single, schema["Answer_KeptVisualTokens"].Type);
        Assert.Equal(NumberDataViewType.Single, schema["Answer_FlopsRatio"].Type);
        Assert.Equal(NumberDataViewType.Single, schema["Answer_PrefillMs"].Type);
        Assert.Equal(TextDataViewType.Instance, schema["Answer_Error"].Type);
    }

    [Fact]
    public void FitAndTransform_AreInstantAndLazy()
    {
        var many = _ml.Data.LoadFromEnumerable(Enumerable.Range(0, 10_000).Select(i => new VqaInput { ImagePath = $"images/{i}.png", Question = "q" }));
        var sw = Stopwatch.StartNew();
        using var t = Estimator().Fit(many);
        var view = t.Transform(many);
        Assert.Equal(many.GetRowCount(), view.GetRowCount());
        // Reading only input columns never touches the model.
        Assert.Equal(10_000, view.GetColumn<string>("ImagePath").Count());
        Assert.True(sw.ElapsedMilliseconds < 3000, $"took {sw.ElapsedMilliseconds} ms");
        Assert.False(t.IsModelLoaded);
    }

    [Fact]
    public void Save_ThrowsNotSupported_WithTheAlternative()
    {
        using var t = Estimator().Fit(Good);
        using var stream = new MemoryStream();
        var e = Record.Exception(() => _ml.Model.Save(t, Good.Schema, stream));
        var ns = e as NotSupportedException ?? e?.InnerException as NotSupportedException;
        Assert.True(ns is not null, $"expected NotSupportedException, got {e}");
        Assert.Contains("AnswerVisualQuestion", ns!.Message);
        Assert.Contains("mlContext.Model.Save", ns.Message);

        // Also inside a chain with a stock transform.
        var chain = _ml.Transforms.CopyColumns("Q", "Question").Append(Estimator()).Fit(Good);
        var e2 = Record.Exception(() => _ml.Model.Save(chain, Good.Schema, stream));
        Assert.True(e2 is NotSupportedException || e2?.InnerException is NotSupportedException, $"got {e2}");
    }

    [Fact]
    public async Task Dispose_OwnedModelOnly()
    {
        var owned = Estimator().Fit(Good);
        owned.Dispose();
        Assert.Throws<ObjectDisposedException>(() => owned.Transform(Good));

        var borrowed = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model).Fit(Good);
        borrowed.Dispose();
        // The caller's model is still usable: an empty question is rejected as invalid, not as disposed.
        var e = await Assert.ThrowsAnyAsync<Exception>(() => fx.Model.AskAsync(VisionRequest.Create(" ")));
        Assert.IsNotType<ObjectDisposedException>(e);
    }
}
