using System.Diagnostics;
using AutoPrune.Compute;
using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;

namespace AutoPrune.Benchmarks;

/// <summary>
/// <c>qwen-quick [--width W] [--height H] [--tokens N] [--repeats R] [--threads T]</c>: the Qwen2.5-VL CPU forward at the
/// released models' sizes with generated fp16 weights. The vision tower is Qwen2.5-VL-3B's and -7B's (they share it:
/// depth 32, hidden 1280, 16 heads, MLP 3420, windows of 112 px, full attention in blocks 7, 15, 23, 31); the image is
/// W x H pixels after smart_resize (default 448 x 448: 1,024 patches, 256 merged tokens). The decoder is timed per layer at
/// the 7B's shape (hidden 3584, 28 heads / 4 KV heads, MLP 18944) for a prefill of N tokens and a decode step, and scaled
/// to its 28 layers. Prints the median of R runs (after one warm-up) of each stage.
/// </summary>
internal static class QwenQuick
{
    public static int Run(string[] args)
    {
        int width = 448, height = 448, tokens = 300, repeats = 3, threads = Environment.ProcessorCount;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--width": width = int.Parse(args[++i]); break;
                case "--height": height = int.Parse(args[++i]); break;
                case "--tokens": tokens = int.Parse(args[++i]); break;
                case "--repeats": repeats = int.Parse(args[++i]); break;
                case "--threads": threads = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        Gemm.MaxThreads = threads;
        var config = Qwen2VLConfig.Parse("""
            {"model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 2,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 1024, "rms_norm_eps": 1e-6,
             "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
             "image_token_id": 1000, "video_token_id": 1001, "vision_start_token_id": 1002, "vision_end_token_id": 1003,
             "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "in_chans": 3,
               "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}}
            """, "qwen-quick");
        var (rh, rw) = Qwen2VLImageProcessor.SmartResize(height, width, 28, 3136, 12845056);
        var source = new RandomTensorSource(seed: 1);
        var sw = Stopwatch.StartNew();
        var vision = new Qwen2VLVisionTower(source, config.Vision);
        var decoder = new Qwen2Decoder(source, config.Text);
        Console.WriteLine($"Qwen2.5-VL CPU forward, generated fp16 weights ({sw.Elapsed.TotalSeconds:F1} s to generate); threads {threads} of {Environment.ProcessorCount}; GEMM ISA {Gemm.DetectedIsa}");

        int gh = rh / 14, gw = rw / 14, patches = gh * gw;
        var geometry = Qwen2VLVisionGeometry.Create([(1, gh, gw)], 2, 4);
        var pixels = new float[patches * 1176];
        var rnd = new Random(2);
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rnd.NextDouble() * 4 - 2);
        Console.WriteLine($"image {width}x{height} -> {rw}x{rh}: {patches} patches, {patches / 4} merged tokens, {geometry.Windows} windows");

        var embedded = vision.PatchEmbed(pixels, patches);
        var order = geometry.PatchOrder();
        var (cos, sin) = vision.RotaryTables(geometry, order);
        var x = new float[embedded.Length];
        Report("vision: patch embed", repeats, () => vision.PatchEmbed(pixels, patches));
        double windowed = Report("vision: one windowed block", repeats, () => vision.Block(0, x, patches, cos, sin, geometry.CuWindowSeqlens));
        double full = Report("vision: one full-attention block", repeats, () => vision.Block(7, x, patches, cos, sin, geometry.CuSeqlens));
        Report("vision: received attention (last full block)", repeats, () =>
        {
            var q = new float[patches * 1280];
            SegmentAttention.Received(q, q, 16, 80, geometry.CuSeqlens, new float[patches]);
        });
        double merger = Report("vision: merger", repeats, () => vision.Merger(x, patches));
        Console.WriteLine($"vision tower estimate (28 windowed + 4 full blocks + merger): {28 * windowed + 4 * full + merger:F1} ms");
        Report("vision tower, whole (measured)", 1, () => vision.Run(pixels, geometry));

        var positions = PositionIds.Sequential(tokens, 3);
        var hiddenRows = decoder.Embed(new int[tokens]);
        var (tc, ts) = decoder.RotaryTables(positions);
        double prefill = Report($"decoder (7B shape): one layer, prefill of {tokens} tokens", repeats, () =>
        {
            var cache = new Qwen2KvCache(2, config.Text.KvDim, tokens + 1);
            decoder.Layer(0, (float[])hiddenRows.Clone(), tokens, tc, ts, cache);
        });
        var step = new Qwen2KvCache(2, config.Text.KvDim, tokens + 1) { Length = tokens };
        var one = decoder.Embed([0]);
        var (oc, os) = decoder.RotaryTables(PositionIds.Sequential(1, 3, tokens));
        double decode = Report($"decoder (7B shape): one layer, a decode step after {tokens} tokens", repeats, () => decoder.Layer(0, (float[])one.Clone(), 1, oc, os, step));
        Console.WriteLine($"28 layers (7B): prefill {28 * prefill:F0} ms, decode step {28 * decode:F1} ms (LM head and embeddings not included)");
        return 0;
    }

    private static double Report(string name, int repeats, Action run)
    {
        run();
        var times = new double[Math.Max(1, repeats)];
        for (int i = 0; i < times.Length; i++)
        {
            var sw = Stopwatch.StartNew();
            run();
            times[i] = sw.Elapsed.TotalMilliseconds;
        }
        Array.Sort(times);
        double median = times[times.Length / 2];
        Console.WriteLine($"{name,-62} {median,10:F1} ms (median of {times.Length})");
        return median;
    }
}
