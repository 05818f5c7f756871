using System.Diagnostics;
using AutoPrune.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;

namespace AutoPrune.MLNet.Tests;

[Collection(ModelCollection.Name)]
public sealed class AnswerTests(ModelFixture fx, ITestOutputHelper output)
{
    private readonly MLContext _ml = new(seed: 1);

    private List<VqaOutput> RunPathPipeline(IEnumerable<VqaInput> rows, VisualQuestionOptions options)
    {
        var data = _ml.Data.LoadFromEnumerable(rows.ToList());
        using var transformer = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, options).Fit(data);
        return _ml.Data.CreateEnumerable<VqaOutput>(transformer.Transform(data), reuseRowObject: false).ToList();
    }

    private IDataView ImagePipeline(IDataView data, VisualQuestionOptions options, out VisualQuestionTransformer vqa)
    {
        var loaded = _ml.Transforms.LoadImages("Image", RepoPaths.DevSet, "ImagePath").Fit(data).Transform(data);
        vqa = _ml.Transforms.AnswerVisualQuestion("Answer", "Image", "Question", fx.Model, options).Fit(loaded);
        return vqa.Transform(loaded);
    }

    [Fact]
    public void Known_pair_path_column_answers_zero_with_report_columns()
    {
        var sw = Stopwatch.StartNew();
        var rows = RunPathPipeline([new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" }], ModelFixture.Options());
        var r = Assert.Single(rows);
        output.WriteLine($"answer '{r.Answer}' kept {r.KeptVisualTokens} flops {r.FlopsRatio} prefill {r.PrefillMs:F0} ms, wall {sw.ElapsedMilliseconds} ms");
        Assert.Equal("0", r.Answer);
        Assert.Equal("", r.Error);
        Assert.Equal(fx.Model.Info.VisualTokensPerImage, r.KeptVisualTokens, 3);
        Assert.Equal(1f, r.FlopsRatio, 3);
        Assert.True(r.PrefillMs > 0);
    }

    [Fact]
    public async Task Pruning_options_reach_the_engine_and_the_report_columns()
    {
        var options = ModelFixture.Options() with { Pruning = new AutoPrune.Pruning.PruningOptions { Method = AutoPrune.Pruning.PruningMethod.AutoPrune, Budget = 128 } };
        var input = new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" };
        var r = Assert.Single(RunPathPipeline([input], options));
        var direct = await fx.Model.AskAsync(VisionRequest.Create(input.Question, ImageInput.FromFile(Path.Combine(RepoPaths.DevSet, input.ImagePath))) with
        {
            Generation = options.Generation,
            Pruning = options.Pruning,
        });
        Assert.Equal(direct.Text.Trim(), r.Answer);
        Assert.Equal((float)direct.Report.AvgVisualTokensProcessed, r.KeptVisualTokens, 3);
        Assert.InRange(r.KeptVisualTokens, 127f, 128f);
        Assert.Equal((float)direct.Report.FlopsRatio, r.FlopsRatio, 4);
        Assert.True(r.FlopsRatio < 0.3f);
    }

    [Fact]
    public void Known_pair_MLImage_column_answers_zero()
    {
        var data = _ml.Data.LoadFromEnumerable(new[] { new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" } });
        var view = ImagePipeline(data, ModelFixture.Options(), out var vqa);
        using (vqa)
        {
            var answers = view.GetColumn<string>("Answer").ToList();
            var errors = view.GetColumn<string>("Answer_Error").ToList();
            Assert.Equal("", Assert.Single(errors));
            Assert.Equal("0", Assert.Single(answers));
        }
    }

    [Fact]
    public async Task Pipeline_answers_equal_AskAsync_for_path_and_image_columns()
    {
        var options = ModelFixture.Options(maxNewTokens: 8);
        var dev = fx.Rows.Take(4).ToList();
        var expected = new List<string>();
        foreach (var r in dev)
        {
            var request = VisionRequest.Create(r.Question, ImageInput.FromFile(Path.Combine(RepoPaths.DevSet, r.Image))) with
            {
                Generation = options.Generation,
                Pruning = options.Pruning,
            };
            expected.Add((await fx.Model.AskAsync(request)).Text);
        }
        var viaPath = RunPathPipeline(dev.Select(ModelFixture.Input), options);
        Assert.Equal(expected, viaPath.Select(o => o.Answer));
        Assert.All(viaPath, o => Assert.Equal("", o.Error));

        var data = _ml.Data.LoadFromEnumerable(dev.Select(ModelFixture.Input).ToList());
        var view = ImagePipeline(data, options, out var vqa);
        using (vqa) Assert.Equal(expected, view.GetColumn<string>("Answer"));
        output.WriteLine(string.Join(" | ", dev.Zip(expected, (r, a) => $"{r.Question} -> {a}")));
    }

    [Fact]
    public void Missing_or_corrupt_images_give_empty_answer_and_error_rest_answered()
    {
        string tmp = Directory.CreateTempSubdirectory("autoprune-mlnet-").FullName;
        try
        {
            string corrupt = Path.Combine(tmp, "corrupt.png");
            File.WriteAllBytes(corrupt, [0x89, 0x50, 0x4E, 0x47, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
            string good = Path.Combine(RepoPaths.DevSet, "images", "0002.png");
            var rows = new[]
            {
                new VqaInput { ImagePath = Path.Combine(tmp, "missing.png"), Question = "How many blue objects are there?" },
                new VqaInput { ImagePath = good, Question = "How many blue objects are there?" },
                new VqaInput { ImagePath = corrupt, Question = "How many blue objects are there?" },
                new VqaInput { ImagePath = good, Question = "How many blue objects are there?" },
            };
            var outRows = RunPathPipeline(rows, ModelFixture.Options());
            foreach (var o in outRows) output.WriteLine($"{Path.GetFileName(o.ImagePath)}: '{o.Answer}' error '{o.Error}'");
            Assert.Equal(["", "0", "", "0"], outRows.Select(o => o.Answer));
            Assert.Contains("missing.png", outRows[0].Error);
            Assert.Contains("corrupt.png", outRows[2].Error);
            Assert.True(float.IsNaN(outRows[0].FlopsRatio) && float.IsNaN(outRows[2].KeptVisualTokens));
            Assert.Equal("", outRows[1].Error);

            // The same through an MLImage column: LoadImages fails on the bad rows, the stage records it and goes on.
            var data = _ml.Data.LoadFromEnumerable(rows);
            var view = ImagePipeline(data, ModelFixture.Options(), out var vqa);
            using (vqa)
            {
                var answers = view.GetColumn<string>("Answer").ToList();
                var errors = view.GetColumn<string>("Answer_Error").ToList();
                output.WriteLine("MLImage errors: " + string.Join(" | ", errors));
                Assert.Equal(["", "0", "", "0"], answers);
                Assert.NotEqual("", errors[0]);
                Assert.NotEqual("", errors[2]);
            }
        }
        finally { Directory.Delete(tmp, recursive: true); }
    }

    [Fact]
    public void Preview_shows_answers()
    {
        var data = _ml.Data.LoadFromEnumerable(fx.Rows.Skip(2).Take(1).Select(ModelFixture.Input).ToList());
        using var t = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, ModelFixture.Options()).Fit(data);
        var preview = t.Transform(data).Preview(maxRows: 1);
        var row = Assert.Single(preview.RowView);
        var answer = row.Values.Single(kv => kv.Key == "Answer").Value;
        Assert.Equal("0", answer.ToString());
        Assert.Contains(preview.ColumnView, c => c.Column.Name == "Answer_FlopsRatio");
    }

    [Fact]
    public async Task Parallel_cursors_give_the_same_answers_as_one_cursor()
    {
        var options = ModelFixture.Options(maxNewTokens: 4);
        var dev = fx.Rows.Skip(2).Take(3).ToList();
        var data = _ml.Data.LoadFromEnumerable(dev.Select(ModelFixture.Input).ToList());
        using var t = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, options).Fit(data);
        var view = t.Transform(data);
        List<string> Read()
        {
            var col = view.Schema["Answer"];
            using var cursor = view.GetRowCursor([col]);
            var get = cursor.GetGetter<ReadOnlyMemory<char>>(col);
            var list = new List<string>();
            ReadOnlyMemory<char> v = default;
            while (cursor.MoveNext()) { get(ref v); list.Add(v.ToString()); }
            return list;
        }
        var both = await Task.WhenAll(Task.Run(Read), Task.Run(Read));
        Assert.Equal(3, both[0].Count);
        Assert.Equal(both[0], both[1]);
        Assert.Equal("0", both[0][0]);

        // The set of cursors the view hands out covers every row once.
        var cursors = view.GetRowCursorSet([view.Schema["Answer"]], 2);
        long rows = 0;
        foreach (var c in cursors) using (c) while (c.MoveNext()) rows++;
        Assert.Equal(3, rows);
    }

    [Fact]
    public void PredictionEngine_answers_each_call()
    {
        var data = _ml.Data.LoadFromEnumerable(new List<VqaInput>());
        using var t = _ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", fx.Model, ModelFixture.Options()).Fit(data);
        using var engine = _ml.Model.CreatePredictionEngine<VqaInput, VqaOutput>(t);
        var a = engine.Predict(new VqaInput { ImagePath = "images/0002.png", Question = "How many blue objects are there?" });
        var b = engine.Predict(new VqaInput { ImagePath = "images/nope.png", Question = "How many blue objects are there?" });
        Assert.Equal("0", a.Answer);
        Assert.Equal("", b.Answer);
        Assert.Contains("nope.png", b.Error);
    }
}
