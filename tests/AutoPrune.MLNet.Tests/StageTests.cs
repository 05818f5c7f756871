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
    public void Missing_column_is_named_in_the_error()
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
    public void Wrong_column_type_names_column_expected_and_actual()
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
    public void Output_schema_has_answer_and_report_columns()
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
    public void Fit_and_transform_are_lazy()
    {
        var many = _ml.Data.LoadFromEnumerable(Enumerable.Range(0, 10_000).Select(i => new VqaInput { ImagePath = $"images/{i}.png", Question = "q" }));
        using var t = Estimator().Fit(many);
        var view = t.Transform(many);
        Assert.Equal(many.GetRowCount(), view.GetRowCount());
        // Reading only input columns never touches the model.
        Assert.Equal(10_000, view.GetColumn<string>("ImagePath").Count());
        Assert.False(t.IsModelLoaded);
    }

    [Fact]
    public void Fit_fails_on_a_model_folder_that_cannot_work_instead_of_failing_every_row()
    {
        var missing = Path.Combine(Path.GetTempPath(), "autoprune-no-such-model");
        var e = Assert.Throws<ArgumentException>(() => _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", missing).Fit(Good));
        Assert.Contains(missing, e.Message);

        var cuda = new VisualQuestionOptions { ModelOptions = new ModelOptions { Device = "cuda" } };
        var device = Assert.Throws<ArgumentException>(() => _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", RepoPaths.TinyModel, cuda).Fit(Good));
        Assert.Contains("'cuda'", device.Message);

        // SparseVLM cannot average fewer than 148 visual tokens on the fixture's 8 layers.
        var infeasible = ModelFixture.Options() with { Pruning = new Pruning.PruningOptions { Method = Pruning.PruningMethod.SparseVLM, Budget = 96 } };
        var budget = Assert.Throws<ArgumentException>(() => _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", RepoPaths.TinyModel, infeasible).Fit(Good));
        Assert.Contains("smallest feasible budget", budget.Message);
        var givenModel = Assert.Throws<ArgumentException>(() => _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, infeasible).Fit(Good));
        Assert.Contains("smallest feasible budget", givenModel.Message);
    }

    [Fact]
    public void A_checkpoint_that_cannot_load_fails_the_cursor_not_each_row()
    {
        var dir = Path.Combine(Path.GetTempPath(), "autoprune-broken-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var f in Directory.GetFiles(RepoPaths.TinyModel)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors")); // config.json is fine, so Fit passes
            using var t = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", dir, ModelFixture.Options()).Fit(Good);
            var e = Assert.Throws<Loading.ModelLoadException>(() => t.Transform(Good).GetColumn<string>("Answer").ToList());
            Assert.Contains("model-00002-of-00002.safetensors", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Save_throws_not_supported_with_the_alternative()
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
    public async Task Dispose_releases_only_a_model_the_stage_loaded_and_the_stage_stays_usable()
    {
        var owned = Estimator().Fit(Good);
        Assert.Equal("0", owned.Transform(Good).GetColumn<string>("Answer").Single());
        var first = owned.Model;
        owned.Dispose();
        Assert.False(owned.IsModelLoaded);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => first.AskAsync(VisionRequest.Create("q")));
        Assert.Equal("0", owned.Transform(Good).GetColumn<string>("Answer").Single()); // loaded again
        Assert.NotSame(first, owned.Model);
        owned.Dispose();

        var borrowed = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, ModelFixture.Options()).Fit(Good);
        borrowed.Dispose();
        // The caller's model is still usable: an empty question is rejected as invalid, not as disposed.
        var e = await Assert.ThrowsAnyAsync<Exception>(() => fx.Model.AskAsync(VisionRequest.Create(" ")));
        Assert.IsNotType<ObjectDisposedException>(e);
        Assert.Equal("0", borrowed.Transform(Good).GetColumn<string>("Answer").Single());
    }

    [Fact]
    public void Disposing_a_PredictionEngine_leaves_its_stage_usable()
    {
        foreach (var stage in new[] { _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, ModelFixture.Options()).Fit(Good), Estimator().Fit(Good) })
        {
            using (var engine = _ml.Model.CreatePredictionEngine<VqaInput, VqaOutput>(stage))
                Assert.Equal("0", engine.Predict(new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" }).Answer);
            Assert.Equal("0", stage.Transform(Good).GetColumn<string>("Answer").Single());
            using var again = _ml.Model.CreatePredictionEngine<VqaInput, VqaOutput>(stage);
            Assert.Equal("0", again.Predict(new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" }).Answer);
            stage.Dispose();
        }
    }
}
