using System.Text.Json;
using System.Text.Json.Nodes;
using AutoPrune.Loading.Gguf;
using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Benchmarks;

/// <summary>
/// <c>gguf-export --model DIR --out DIR [--types f16,q8_0,q4_k_m] [--prompts references.json]</c>: writes the checkpoint as
/// llama.cpp GGUF files (text model per type + mmproj) with <see cref="LlavaGgufExporter"/>, then runs each written file
/// through this runtime (<see cref="GgufLlavaSource"/> + the CPU engine) on the text prompts of a gguf-tiny
/// <c>references.json</c> and writes <c>ours.json</c>: per type, each prompt's ids (from the file's own vocabulary),
/// last-position logits, 4 greedy tokens and the top-2 logit margin at each. <c>scripts/llamacpp-check.sh</c> compares llama.cpp's outputs on the same
/// files with these.
/// </summary>
internal static class GgufCheck
{
    public static int Run(string[] args)
    {
        string? model = null, outDir = null, prompts = null;
        var types = new List<string> { "f16", "q8_0", "q4_k_m" };
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--out": outDir = args[++i]; break;
                case "--types": types = args[++i].Split(',').ToList(); break;
                case "--prompts": prompts = args[++i]; break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        if (model is null || outDir is null) { Console.Error.WriteLine("usage: gguf-export --model DIR --out DIR [--types f16,q8_0,q4_k_m] [--prompts references.json]"); return 2; }
        var texts = new List<string>();
        if (prompts is not null)
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(prompts));
            foreach (var t in doc.RootElement.GetProperty("variants").GetProperty("f16").GetProperty("text").EnumerateArray())
                texts.Add(t.GetProperty("text").GetString()!);
        }
        var result = new JsonObject();
        foreach (var type in types)
        {
            if (!QuantMix.TryParse(type, out var ftype)) { Console.Error.WriteLine($"unknown type {type}"); return 2; }
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var files = LlavaGgufExporter.Export(model, outDir, ftype);
            Console.WriteLine($"{type}: wrote {files.TextPath} ({new FileInfo(files.TextPath).Length:N0} bytes) and {files.MmprojPath} in {sw.ElapsedMilliseconds} ms; " +
                              string.Join(", ", files.TextTypes.Values.GroupBy(t => t).Select(g => $"{g.Count()} {g.Key}")));
            using var source = GgufLlavaSource.Open(files.TextPath, files.MmprojPath);
            var llava = new LlavaModel(source, source.Config);
            var sp = source.Vocabulary.CreateTokenizer();
            var rows = new JsonArray();
            foreach (var text in texts)
            {
                var ids = source.Vocabulary.Encode(sp, text);
                using var gen = llava.StartGeneration(8);
                var logits = gen.Prefill(llava.BuildSequence(ids, []), null, CancellationToken.None);
                var greedy = new List<int>();
                var margins = new List<double>();
                var step = logits;
                for (int s = 0; s < 4; s++)
                {
                    int best = 0;
                    for (int i = 1; i < step.Length; i++) if (step[i] > step[best]) best = i;
                    greedy.Add(best);
                    margins.Add(step[best] - step.Where((_, i) => i != best).Max());
                    if (s < 3) step = gen.Step(best);
                }
                rows.Add(new JsonObject
                {
                    ["text"] = text,
                    ["ids"] = new JsonArray(ids.Select(x => (JsonNode)x).ToArray()),
                    ["logits"] = new JsonArray(logits.Select(x => (JsonNode)x).ToArray()),
                    ["greedy"] = new JsonArray(greedy.Select(x => (JsonNode)x).ToArray()),
                    ["margins"] = new JsonArray(margins.Select(x => (JsonNode)x).ToArray()),
                });
            }
            result[type] = new JsonObject { ["file"] = files.TextPath, ["mmproj"] = files.MmprojPath, ["text"] = rows };
        }
        File.WriteAllText(Path.Combine(outDir, "ours.json"), result.ToJsonString());
        Console.WriteLine($"wrote {Path.Combine(outDir, "ours.json")}");
        return 0;
    }
}
