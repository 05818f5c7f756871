using System.Diagnostics;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;

namespace AutoPrune.Benchmarks;

/// <summary>
/// <c>qwen-seam [--preset qwen2.5-vl-7b|qwen2.5-vl-3b] [--layers L] [--width W] [--height H] [--text N] [--decode T]
/// [--repeats R] [--threads X] [--no-tower]</c>: the Qwen2.5-VL stages on the CPU backend (<see cref="Qwen2VLModel"/>, written over
/// the backend ops) against the standalone CPU forward (<see cref="Qwen2VLVisionTower"/> and <see cref="Qwen2Decoder"/>)
/// in the same run, on the same generated fp16 weights (one copy, shared): the vision tower's blocks (patch embedding
/// included), the PatchMerger with the reverse window order, a prefill of the prompt (an image's merged tokens between
/// N text tokens; L decoder layers and the LM head, the image encoded beforehand) and greedy decode steps (ms per token).
/// The released vision tower is built whole; the decoder with L of its layers (default 2), so its per-layer times scale
/// to the full depth. Each stage alternates the two forwards R times after a warm-up and prints the medians.
/// </summary>
internal static class QwenSeam
{
    public static int Run(string[] args)
    {
        string preset = Qwen2VLPresets.Qwen25VL7BName;
        int layers = 2, width = Qwen2VLPresets.TypicalImageSize, height = Qwen2VLPresets.TypicalImageSize, text = 40, decode = 8, repeats = 3;
        int threads = Environment.ProcessorCount;
        bool timeTower = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--layers": layers = int.Parse(args[++i]); break;
                case "--width": width = int.Parse(args[++i]); break;
                case "--height": height = int.Parse(args[++i]); break;
                case "--text": text = int.Parse(args[++i]); break;
                case "--decode": decode = int.Parse(args[++i]); break;
                case "--repeats": repeats = int.Parse(args[++i]); break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--no-tower": timeTower = false; break; // the other stages only (the tower still runs once for the merger's input)
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        Gemm.MaxThreads = threads;
        int releasedLayers = Qwen2VLPresets.ByName(preset).Text.NumHiddenLayers;
        var config = Qwen2VLPresets.ByName(preset, layers);
        var source = new SharedWeights(new Qwen2VLRandomTensorSource(config, seed: 1));
        var sw = Stopwatch.StartNew();
        using var seam = new Qwen2VLModel(new CpuBackend(), source, config);
        var tower = new Qwen2VLVisionTower(source, config.Vision);
        var decoder = new Qwen2Decoder(source, config.Text);
        Console.WriteLine($"Qwen2.5-VL {preset} with {layers} of its {releasedLayers} decoder layers, generated fp16 weights shared by both forwards " +
            $"({source.Bytes / 1e9:F2} GB, {sw.Elapsed.TotalSeconds:F1} s); threads {threads} of {Environment.ProcessorCount}; GEMM ISA {Gemm.DetectedIsa}");

        var image = Qwen2VLPresets.SyntheticImage(config, width, height);
        var geometry = Qwen2VLVisionGeometry.Create([image.Grid], config.Vision.SpatialMergeSize, config.Vision.WindowMergedTokens);
        int patches = image.Patches, merged = image.MergedTokens;
        Console.WriteLine($"image {width}x{height} -> {image.ResizedWidth}x{image.ResizedHeight}: {patches} patches, {merged} merged tokens, {geometry.Windows} windows");

        // The standalone tower's stages: patch embed, window reorder, rotary tables and blocks; then the merger and the reverse order.
        float[] StandaloneBlocks()
        {
            var embedded = tower.PatchEmbed(image.PixelValues, patches);
            var order = geometry.PatchOrder();
            int h = config.Vision.HiddenSize;
            var x = new float[patches * h];
            for (int i = 0; i < patches; i++) embedded.AsSpan(order[i] * h, h).CopyTo(x.AsSpan(i * h, h));
            var (cos, sin) = tower.RotaryTables(geometry, order);
            for (int b = 0; b < tower.Depth; b++)
                tower.Block(b, x, patches, cos, sin, config.Vision.IsFullAttention(b) ? geometry.CuSeqlens : geometry.CuWindowSeqlens);
            return x;
        }
        float[] StandaloneMerge(float[] x)
        {
            var m = tower.Merger(x, patches);
            int d = config.Vision.OutHiddenSize;
            var result = new float[merged * d];
            for (int t = 0; t < merged; t++) m.AsSpan(geometry.ReverseIndex[t] * d, d).CopyTo(result.AsSpan(t * d, d));
            return result;
        }
        var blocksOut = StandaloneBlocks();
        var visualRows = StandaloneMerge(blocksOut);
        var (towerA, towerB) = !timeTower ? (double.NaN, double.NaN) : Compare("vision tower: patch embed + 32 blocks", repeats,
            () => StandaloneBlocks(),
            () => { using var run = seam.Vision.Start([image]); run.Blocks(CancellationToken.None); });
        double mergerA, mergerB;
        using (var run = seam.Vision.Start([image]))
        {
            run.Blocks(CancellationToken.None); // the merger reads the blocks' output, which repeated merges leave as it is
            (mergerA, mergerB) = Compare("vision: PatchMerger + reverse order", repeats,
                () => StandaloneMerge(blocksOut),
                () => { using var t = run.Merge(); });
        }

        // The prompt: text, <|vision_start|>, the image's pads, <|vision_end|>, text.
        int[] ids = [.. Enumerable.Range(0, text / 2).Select(i => 1000 + i), config.VisionStartTokenId, .. Enumerable.Repeat(config.ImageTokenId, merged),
            config.VisionEndTokenId, .. Enumerable.Range(0, text - text / 2).Select(i => 2000 + i)];
        var (positions, ropeDelta) = Qwen2VLRopeIndex.Compute(ids, [image.Grid], Qwen2VLRopeIndex.TokenIds.Of(config), config.Vision.SpatialMergeSize);
        int n = ids.Length, hidden = config.Text.HiddenSize;
        using var tokens = seam.EncodeImages([image]);
        Qwen2KvCache StandalonePrefill(out float[] logits)
        {
            var x = decoder.Embed(ids);
            for (int i = 0, r = 0; i < n; i++)
                if (ids[i] == config.ImageTokenId) visualRows.AsSpan(r++ * hidden, hidden).CopyTo(x.AsSpan(i * hidden, hidden));
            var cache = new Qwen2KvCache(decoder.Layers, config.Text.KvDim, n + decode + 1);
            decoder.Forward(x, n, positions, cache);
            logits = decoder.Logits(x, n - 1);
            return cache;
        }
        var (prefillA, prefillB) = Compare($"decoder prefill of {n} tokens ({layers} layers + LM head)", repeats,
            () => StandalonePrefill(out _),
            () =>
            {
                var state = seam.BuildSequence(ids, tokens);
                using var gen = seam.StartGeneration(1);
                gen.Prefill(state, null, CancellationToken.None);
            });
        var (decodeA, decodeB) = Compare($"decode: {decode} greedy tokens ({layers} layers + LM head), ms per token", repeats,
            () =>
            {
                var cache = StandalonePrefill(out var logits);
                int id = CpuOps.ArgMax(logits);
                var t = Stopwatch.StartNew();
                for (int s = 0; s < decode; s++)
                {
                    var x = decoder.Embed([id]);
                    decoder.Forward(x, 1, PositionIds.Sequential(1, 3, Qwen2VLRopeIndex.DecodePosition(n + s, ropeDelta)), cache);
                    id = CpuOps.ArgMax(decoder.Logits(x, 0));
                }
                return t.Elapsed.TotalMilliseconds / decode;
            },
            () =>
            {
                var state = seam.BuildSequence(ids, tokens);
                using var gen = seam.StartGeneration(decode);
                int id = CpuOps.ArgMax(gen.Prefill(state, null, CancellationToken.None));
                var t = Stopwatch.StartNew();
                for (int s = 0; s < decode; s++) id = gen.StepGreedy(id);
                return t.Elapsed.TotalMilliseconds / decode;
            });
        Console.WriteLine();
        Console.WriteLine($"{"stage (medians, ms)",-58} {"standalone",12} {"backend",12} {"ratio",7}");
        void Row(string name, double a, double b) => Console.WriteLine($"{name,-58} {a,12:F1} {b,12:F1} {b / a,7:F3}");
        Row("vision tower (32 blocks)", towerA, towerB);
        Row("PatchMerger", mergerA, mergerB);
        Row($"prefill, {n} tokens, {layers} layers + head", prefillA, prefillB);
        Row($"decode ms/token, {layers} layers + head", decodeA, decodeB);
        return 0;
    }

    /// <summary>Runs the two forwards alternately (one warm-up each, then <paramref name="repeats"/> pairs); prints and returns the medians in ms.</summary>
    private static (double Standalone, double Backend) Compare(string name, int repeats, Action standalone, Action backend)
        => Compare(name, repeats, () => Time(standalone), () => Time(backend));

    private static (double Standalone, double Backend) Compare(string name, int repeats, Func<double> standalone, Func<double> backend)
    {
        standalone();
        backend();
        var a = new double[Math.Max(1, repeats)];
        var b = new double[a.Length];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = standalone();
            b[i] = backend();
        }
        Array.Sort(a);
        Array.Sort(b);
        double ma = a[a.Length / 2], mb = b[b.Length / 2];
        Console.WriteLine($"{name,-66} standalone {ma,9:F1} ms, backend {mb,9:F1} ms (medians of {a.Length}: {string.Join(" ", a.Select(x => x.ToString("F0")))} | {string.Join(" ", b.Select(x => x.ToString("F0")))})");
        return (ma, mb);
    }

    private static double Time(Action run)
    {
        var sw = Stopwatch.StartNew();
        run();
        return sw.Elapsed.TotalMilliseconds;
    }

    private static double Time(Func<double> run) => run();

    /// <summary>Generates each tensor once and hands the same copy to both forwards.</summary>
    private sealed class SharedWeights(ITensorSource inner) : ITensorSource
    {
        private readonly Dictionary<string, WeightData> _weights = new(StringComparer.Ordinal);

        public long Bytes { get { lock (_weights) return _weights.Values.Sum(w => w.Bytes); } }

        public bool Contains(string name) => inner.Contains(name);
        public float[] ReadFloat32(string name, params long[] expectedShape) => inner.ReadFloat32(name, expectedShape);
        public Half[] ReadFloat16(string name, params long[] expectedShape) => inner.ReadFloat16(name, expectedShape);

        public WeightData ReadWeight(string name, params long[] expectedShape)
        {
            lock (_weights)
            {
                if (!_weights.TryGetValue(name, out var w)) _weights[name] = w = inner.ReadWeight(name, expectedShape);
                return w;
            }
        }

        public IReadOnlyList<string> UnusedTensors() => [];
    }
}
