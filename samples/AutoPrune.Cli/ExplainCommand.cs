using System.CommandLine;
using AutoPrune.Pruning;
using SkiaSharp;

namespace AutoPrune.Cli;

/// <summary><c>explain</c>: a picture of the patches each layer still looked at.</summary>
public static class ExplainCommand
{
    public static Command Create()
    {
        var image = new Option<FileInfo>("--image", "-i") { Description = "Image file (" + CommonOptions.ImageFormats + ").", Required = true };
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
            var panels = PruningVisualizer.RenderPng(bytes, answer.Report, vlm.Info.GridSize, chosen);
            var png = ExplainPicture.Compose(panels, parse.GetValue(question)!, answer);
            await File.WriteAllBytesAsync(outFile.FullName, png, ct);
            Console.WriteLine(answer.Text.Trim());
            Console.Error.WriteLine(CommonOptions.Summary(answer));
            Console.Error.WriteLine($"wrote {outFile.FullName}");
            return 0;
        }));
        return cmd;
    }
}

/// <summary>
/// The picture <c>explain</c> writes: the question and the answer above the visualizer's panels, and a legend below
/// them saying what the shading means.
/// </summary>
public static class ExplainPicture
{
    /// <summary>The lines above the panels: the question, the answer, and what ran.</summary>
    public static IReadOnlyList<string> Header(string question, VisionAnswer answer) =>
    [
        $"Q: {question.Trim()}",
        $"A: {answer.Text.Trim()}",
        $"{PruningMethods.Name(answer.Report.Method)}, budget {answer.Report.BudgetAsked:0.##} ({answer.Report.Accounting.ToString().ToLowerInvariant()}): " +
            $"{answer.Report.AvgVisualTokensProcessed:F1} of {answer.VisualTokens} visual tokens per layer, {answer.Report.FlopsRatio:P1} of the unpruned prefill FLOPs",
    ];

    /// <summary>The legend below the panels, one entry per mark the panels use.</summary>
    public static IReadOnlyList<(string Mark, string Meaning)> Legend { get; } =
    [
        ("clear", "a patch this decoder layer still processed (the image shows through)"),
        ("darkened", "a patch pruned before this layer (never seen again by it or later layers)"),
        ("yellow outline", "a kept patch, drawn when the layer processed fewer than all patches"),
        ("+ N merged", "tokens merged from pruned ones (recycling), counted in the panel's title, not drawn"),
    ];

    /// <summary>The panels PNG with the header above and the legend below; lines longer than the picture wrap.</summary>
    public static byte[] Compose(byte[] panelsPng, string question, VisionAnswer answer)
    {
        using var panels = SKBitmap.Decode(panelsPng) ?? throw new InvalidOperationException("The explanation panels could not be decoded.");
        const int pad = 8, line = 20, swatch = 14;
        int width = Math.Max(panels.Width, 560);
        using var font = new SKFont(SKTypeface.Default, 15);
        var header = Header(question, answer).SelectMany(l => Wrap(l, font, width - 2 * pad)).ToList();
        var legend = Legend.Select(e => (e.Mark, Lines: Wrap($"{e.Mark}: {e.Meaning}", font, width - 3 * pad - swatch))).ToList();
        int headerHeight = pad + header.Count * line, legendHeight = pad + line + legend.Sum(e => e.Lines.Count) * line + pad;
        using var surface = SKSurface.Create(new SKImageInfo(width, headerHeight + panels.Height + legendHeight, SKColorType.Rgba8888, SKAlphaType.Premul));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var shade = new SKPaint { Color = new SKColor(0, 0, 0, 190) };
        using var clear = new SKPaint { Color = SKColors.White };
        using var edge = new SKPaint { Color = new SKColor(255, 200, 0), Style = SKPaintStyle.Stroke, StrokeWidth = 2 };
        using var frame = new SKPaint { Color = SKColors.Gray, Style = SKPaintStyle.Stroke, StrokeWidth = 1 };
        float y = pad;
        foreach (var l in header) { y += line; canvas.DrawText(l, pad, y - 5, font, text); }
        canvas.DrawBitmap(panels, 0, headerHeight);
        y = headerHeight + panels.Height + pad + line;
        canvas.DrawText("Legend", pad, y - 5, font, text);
        foreach (var (mark, lines) in legend)
        {
            var box = SKRect.Create(pad, y + 3, swatch, swatch);
            switch (mark)
            {
                case "clear": canvas.DrawRect(box, clear); canvas.DrawRect(box, frame); break;
                case "darkened": canvas.DrawRect(box, shade); break;
                case "yellow outline": canvas.DrawRect(box, clear); canvas.DrawRect(box, edge); break;
            }
            foreach (var l in lines) { y += line; canvas.DrawText(l, 2 * pad + swatch, y - 5, font, text); }
        }
        using var snapshot = surface.Snapshot();
        using var png = snapshot.Encode(SKEncodedImageFormat.Png, 100);
        return png.ToArray();
    }

    /// <summary>Words of <paramref name="s"/> in lines no wider than <paramref name="width"/> pixels (a longer word stands alone).</summary>
    public static List<string> Wrap(string s, SKFont font, float width)
    {
        var lines = new List<string>();
        var current = "";
        foreach (var word in s.Split(' '))
        {
            var next = current.Length == 0 ? word : current + " " + word;
            if (current.Length > 0 && font.MeasureText(next) > width) { lines.Add(current); current = word; }
            else current = next;
        }
        lines.Add(current);
        return lines;
    }
}
