using SkiaSharp;

namespace AutoPrune.Pruning;

/// <summary>Draws which image patches the model still looked at, one panel per decoder layer.</summary>
public static class PruningVisualizer
{
    /// <summary>
    /// Renders a PNG: the image (centre-cropped to a square, as CLIP sees it) once per chosen layer, with the
    /// patches that layer processed shown and the pruned ones darkened. For a LLaVA-NeXT image (the report carries
    /// <see cref="PruningReport.Patches"/>) the whole original image is drawn twice per layer, the base view's kept
    /// patches over one and the tiles' over the other, each where it lies in the original image.
    /// </summary>
    /// <param name="encodedImage">The image file's bytes.</param>
    /// <param name="report">The answer's pruning report.</param>
    /// <param name="gridSize">Patches per side (e.g. 24 for 336 px / 14 px patches); a LLaVA-NeXT report's patch map is used instead.</param>
    /// <param name="layers">Layers to draw; null picks up to six spread over the depth, always the first and last.</param>
    /// <param name="panelSize">Side of each panel in pixels.</param>
    public static byte[] RenderPng(ReadOnlySpan<byte> encodedImage, PruningReport report, int gridSize, IReadOnlyList<int>? layers = null, int panelSize = 240)
    {
        ArgumentNullException.ThrowIfNull(report);
        int L = report.VisualTokensPerLayer.Length;
        if (report.KeptIndicesPerLayer.Count != L)
            throw new ArgumentException($"The report has kept indices for {report.KeptIndicesPerLayer.Count} of its {L} layers.", nameof(report));
        layers ??= DefaultLayers(L);
        foreach (int l in layers)
            if (l < 0 || l >= L) throw new ArgumentOutOfRangeException(nameof(layers), $"Layer {l} is outside 0..{L - 1}.");
        if (gridSize < 1 || panelSize < gridSize) throw new ArgumentOutOfRangeException(nameof(gridSize));
        if (report.Patches is { } map) return RenderAnyRes(encodedImage, report, map, layers, panelSize);

        using var source = SKBitmap.Decode(encodedImage.ToArray())
            ?? throw new Loading.Images.ImageDecodeException("The image could not be decoded for the explanation.");
        int side = Math.Min(source.Width, source.Height);
        var crop = new SKRectI((source.Width - side) / 2, (source.Height - side) / 2, (source.Width - side) / 2 + side, (source.Height - side) / 2 + side);

        const int title = 26, pad = 8;
        int cols = Math.Min(layers.Count, 3), rows = (layers.Count + cols - 1) / cols;
        int width = cols * panelSize + (cols + 1) * pad, height = rows * (panelSize + title) + (rows + 1) * pad + title;
        using var surface = SKSurface.Create(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var font = new SKFont(SKTypeface.Default, 15);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var shade = new SKPaint { Color = new SKColor(0, 0, 0, 190) };
        using var edge = new SKPaint { Color = new SKColor(255, 200, 0), Style = SKPaintStyle.Stroke, StrokeWidth = 1 };
        using var image = SKImage.FromBitmap(source);
        canvas.DrawText($"{report.Method}: {report.AvgVisualTokensProcessed:F1} visual tokens per layer, {report.FlopsRatio:P1} of prefill FLOPs",
            pad, title - 8, font, text);

        float cell = (float)panelSize / gridSize;
        for (int i = 0; i < layers.Count; i++)
        {
            int l = layers[i];
            float x = pad + (i % cols) * (panelSize + pad), y = title + pad + (i / cols) * (panelSize + title + pad);
            int patches = report.KeptIndicesPerLayer[l].Length, merged = report.VisualTokensPerLayer[l] - patches;
            canvas.DrawText(merged > 0 ? $"layer {l}: {patches} patches + {merged} merged" : $"layer {l}: {patches} patches", x, y + title - 8, font, text);
            var dst = new SKRect(x, y + title, x + panelSize, y + title + panelSize);
            using (var smooth = new SKPaint { FilterQuality = SKFilterQuality.High })
                canvas.DrawImage(image, new SKRect(crop.Left, crop.Top, crop.Right, crop.Bottom), dst, smooth);
            var kept = new bool[gridSize * gridSize];
            foreach (int v in report.KeptIndicesPerLayer[l]) if ((uint)v < (uint)kept.Length) kept[v] = true;
            for (int v = 0; v < kept.Length; v++)
            {
                var r = SKRect.Create(dst.Left + (v % gridSize) * cell, dst.Top + (v / gridSize) * cell, cell, cell);
                if (!kept[v]) canvas.DrawRect(r, shade);
                else if (report.VisualTokensPerLayer[l] < kept.Length) canvas.DrawRect(r, edge);
            }
        }
        using var snapshot = surface.Snapshot();
        using var png = snapshot.Encode(SKEncodedImageFormat.Png, 100);
        return png.ToArray();
    }

    /// <summary>
    /// A LLaVA-NeXT image: per layer, the original image twice, uncropped, with the base view's patches over the first and
    /// the tiles' patches over the second, each where it lies in the original image; the patches the layer did not
    /// process are darkened.
    /// </summary>
    private static byte[] RenderAnyRes(ReadOnlySpan<byte> encodedImage, PruningReport report, ImagePatchMap map, IReadOnlyList<int> layers, int panelSize)
    {
        using var source = SKBitmap.Decode(encodedImage.ToArray())
            ?? throw new Loading.Images.ImageDecodeException("The image could not be decoded for the explanation.");
        if (source.Width != map.ImageWidth || source.Height != map.ImageHeight)
            throw new ArgumentException($"The report's patches are of a {map.ImageWidth}x{map.ImageHeight} image, not of this {source.Width}x{source.Height} one.", nameof(encodedImage));
        float scale = (float)panelSize / Math.Max(map.ImageWidth, map.ImageHeight);
        float pw = map.ImageWidth * scale, ph = map.ImageHeight * scale;
        const int title = 26, pad = 8;
        int width = (int)Math.Ceiling(2 * pw + 3 * pad), height = (int)Math.Ceiling(layers.Count * (ph + title + pad) + pad + title);
        using var surface = SKSurface.Create(new SKImageInfo(Math.Max(width, 420), height, SKColorType.Rgba8888, SKAlphaType.Premul));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var font = new SKFont(SKTypeface.Default, 13);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var shade = new SKPaint { Color = new SKColor(0, 0, 0, 190) };
        using var edge = new SKPaint { Color = new SKColor(255, 200, 0), Style = SKPaintStyle.Stroke, StrokeWidth = 1 };
        using var image = SKImage.FromBitmap(source);
        using var smooth = new SKPaint { FilterQuality = SKFilterQuality.High };
        canvas.DrawText($"{report.Method}: {report.AvgVisualTokensProcessed:F1} of {map.Areas.Count} visual tokens per layer, {report.FlopsRatio:P1} of prefill FLOPs",
            pad, title - 8, font, text);
        for (int i = 0; i < layers.Count; i++)
        {
            int l = layers[i];
            float y = title + pad + i * (ph + title + pad);
            var kept = new bool[map.Areas.Count];
            foreach (int v in report.KeptIndicesPerLayer[l]) if ((uint)v < (uint)kept.Length) kept[v] = true;
            int baseKept = 0, tileKept = 0, basePatches = 0;
            for (int v = 0; v < kept.Length; v++)
            {
                if (map.Areas[v].View == 0) { basePatches++; if (kept[v]) baseKept++; }
                else if (kept[v]) tileKept++;
            }
            int merged = report.VisualTokensPerLayer[l] - baseKept - tileKept;
            canvas.DrawText($"layer {l}: base view {baseKept}/{basePatches}, tiles {tileKept}/{kept.Length - basePatches}" + (merged > 0 ? $", {merged} merged" : ""),
                pad, y + title - 8, font, text);
            for (int panel = 0; panel < 2; panel++)
            {
                float x = pad + panel * (pw + pad);
                var dst = new SKRect(x, y + title, x + pw, y + title + ph);
                canvas.DrawImage(image, new SKRect(0, 0, source.Width, source.Height), dst, smooth);
                for (int v = 0; v < kept.Length; v++)
                {
                    var a = map.Areas[v];
                    if ((a.View == 0) != (panel == 0)) continue;
                    var r = new SKRect(dst.Left + a.Left * scale, dst.Top + a.Top * scale, dst.Left + a.Right * scale, dst.Top + a.Bottom * scale);
                    if (!kept[v]) canvas.DrawRect(r, shade);
                    else if (report.VisualTokensPerLayer[l] < kept.Length) canvas.DrawRect(r, edge);
                }
            }
        }
        using var snapshot = surface.Snapshot();
        using var png = snapshot.Encode(SKEncodedImageFormat.Png, 100);
        return png.ToArray();
    }

    private static int[] DefaultLayers(int L)
    {
        int n = Math.Min(6, L);
        return Enumerable.Range(0, n).Select(i => n == 1 ? 0 : (int)Math.Round(i * (L - 1.0) / (n - 1))).Distinct().ToArray();
    }
}
