using System.CommandLine;
using AutoPrune.Pruning;

namespace AutoPrune.Cli;

/// <summary><c>explain</c>: a picture of the patches each layer still looked at.</summary>
public static class ExplainCommand
{
    public static Command Create()
    {
        var image = new Option<FileInfo>("--image", "-i") { Description = "Image file.", Required = true };
        var question = new Option<string>("--question", "-q") { Description = "The question.", Required = true };
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var method = CommonOptions.Method();
        var budget = CommonOptions.Budget();
        var accounting = CommonOptions.Accounting();
        var layers = new Option<string?>("--layers") { Description = "Comma-separated decoder layers to draw (default: up to six spread over the depth)." };
        var output = new Option<FileInfo>("--out", "-o") { Description = "PNG to write.", DefaultValueFactory = _ => new FileInfo("explain.png") };
        var options = CommonOptions.OptionsFile();
        var cmd = new Command("explain", "Answer, then draw the image with the patches each chosen layer still processed (LLaVA-NeXT: over the original image, base view and tiles).")
        {
            image, question, model, device, method, budget, accounting, layers, output, options,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            var img = parse.GetValue(image)!;
            if (!img.Exists) throw new ArgumentException($"Image file '{img.FullName}' does not exist.");
            var outFile = CommonOptions.OutputFile(parse.GetValue(output)!, "--out");
            using var vlm = await CommonOptions.LoadAsync(parse.GetValue(model)!, new ModelOptions { Device = parse.GetValue(device)! }, quiet: false);
            var request = VisionRequest.Create(parse.GetValue(question)!, ImageInput.FromFile(img.FullName)) with
            {
                Pruning = CommonOptions.Pruning(parse, options, method, budget, accounting),
            };
            var answer = await vlm.AskAsync(request, ct);
            int[]? chosen = parse.GetValue(layers) is { Length: > 0 } s
                ? s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(x =>
                    int.TryParse(x, out int l) ? l : throw new ArgumentException($"--layers: '{x}' is not a layer number.")).ToArray()
                : null;
            // The same file the model just read, with the same limits (a regular file of at most FileLimits.ImageBytes).
            var bytes = AutoPrune.Loading.InputFile.ReadAllBytes(img.FullName, new InputFileLimits().ImageBytes, "Image file", "ModelOptions.FileLimits.ImageBytes");
            var png = PruningVisualizer.RenderPng(bytes, answer.Report, vlm.Info.GridSize, chosen);
            await File.WriteAllBytesAsync(outFile.FullName, png, ct);
            Console.WriteLine(answer.Text.Trim());
            Console.Error.WriteLine(CommonOptions.Summary(answer));
            Console.Error.WriteLine($"wrote {outFile.FullName}");
            return 0;
        }));
        return cmd;
    }
}
