using AutoPrune;
using AutoPrune.MLNet;
using AutoPrune.Pruning;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace ReadmeSnippets;

internal static class MLNet
{
    public static void Run()
    {
        var ml = new MLContext();
        IDataView data = ml.Data.LoadFromEnumerable(new[]
        {
            new { ImagePath = "images/0002.png", Question = "How many blue objects are there?" },
            new { ImagePath = "images/0006.png", Question = "What shape is the green object?" },
        });

        var options = new VisualQuestionOptions
        {
            Generation = new GenerationOptions { MaxNewTokens = 16 },
            Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 },
            ImageFolder = "tests/data/shapes-vqa-dev",               // relative image paths are resolved against it
        };

        // The image column may be a text column of file paths ...
        var pipeline = ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", "samples/models/shapes-llava-tiny", options);
        // ... or an MLImage column:
        // var pipeline = ml.Transforms.LoadImages("Image", "tests/data/shapes-vqa-dev", "ImagePath")
        //     .Append(ml.Transforms.AnswerVisualQuestion("Answer", "Image", "Question", modelDir, options));

        using var model = pipeline.Fit(data);                       // checks the columns and the model folder; nothing is trained
        IDataView answers = model.Transform(data);                  // lazy: rows are answered as a cursor reads them
        foreach (var answer in answers.GetColumn<string>("Answer")) Console.WriteLine(answer);
    }
}
