using AutoPrune;
using AutoPrune.Pruning;

namespace ReadmeSnippets;

internal static class Library
{
    public static async Task RunAsync()
    {
        using var model = VisionLanguageModel.Load("samples/models/shapes-llava-tiny",
            new ModelOptions { Device = "auto", MaxConcurrentRequests = 2 });

        var request = VisionRequest.Create("How many blue objects are there?", ImageInput.FromFile("tests/data/shapes-vqa-dev/images/0002.png")) with
        {
            Generation = new GenerationOptions { MaxNewTokens = 32 },
            Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 },
        };
        VisionAnswer a = await model.AskAsync(request);
        Console.WriteLine($"{a.Text} — {a.Report.AvgVisualTokensProcessed:F0} visual tokens/layer, {a.Report.FlopsRatio:P0} FLOPs");

        await foreach (var chunk in model.StreamAsync(request))   // token by token; the last chunk carries the answer
            Console.Write(chunk.Text);

        // No image: a text question (the report says method none, 0 visual tokens).
        VisionAnswer text = await model.AskAsync(VisionRequest.Create("What shape has three sides?"));
        Console.WriteLine(text.Text);

        byte[] png = PruningVisualizer.RenderPng(File.ReadAllBytes("tests/data/shapes-vqa-dev/images/0002.png"), a.Report, model.Info.GridSize);
        File.WriteAllBytes("explain.png", png);
    }
}
