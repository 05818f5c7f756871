using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace AutoPrune.Cli;

/// <summary><c>ask</c>: answer a question about an image.</summary>
public static class AskCommand
{
    public static Command Create()
    {
        var image = new Option<FileInfo[]>("--image", "-i") { Description = "Image file (" + CommonOptions.ImageFormats + "). Repeat for several images (as many as the model's context holds); leave out for a question without an image.", AllowMultipleArgumentsPerToken = false };
        var question = new Option<string>("--question", "-q") { Description = "The question.", Required = true };
        var model = CommonOptions.Model();
        var device = CommonOptions.Device();
        var method = CommonOptions.Method();
        var budget = CommonOptions.Budget();
        var accounting = CommonOptions.Accounting();
        var maxTokens = new Option<int>("--max-tokens") { Description = "Largest number of tokens to generate.", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy (default); above 0 samples.", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass.", DefaultValueFactory = _ => 1f };
        var seed = new Option<int?>("--seed") { Description = "Sampling seed." };
        var pad = new Option<bool>("--pad-to-square") { Description = "LLaVA-1.5's pad-to-square preprocessing." };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of text." };
        var stream = new Option<bool>("--stream") { Description = "Print tokens as they are generated." };
        var cudaGraphs = CommonOptions.CudaGraphs();
        var options = CommonOptions.OptionsFile();

        var cmd = new Command("ask", "Answer a question about one or more images, or without one.")
        {
            image, question, model, device, method, budget, accounting, maxTokens, temperature, topP, seed, pad, json, stream, cudaGraphs, options,
        };
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            var images = parse.GetValue(image) ?? [];
            foreach (var f in images)
                if (!f.Exists) throw new ArgumentException($"Image file '{f.FullName}' does not exist.");
            bool asJson = parse.GetValue(json);
            using var vlm = await CommonOptions.LoadAsync(parse.GetValue(model)!,
                new ModelOptions { Device = parse.GetValue(device)!, PadToSquare = parse.GetValue(pad), CudaGraphs = parse.GetValue(cudaGraphs) }, quiet: asJson);
            var request = CommonOptions.WithPruning(VisionRequest.Create(parse.GetValue(question)!, images.Select(f => ImageInput.FromFile(f.FullName)).ToArray()) with
            {
                Generation = new GenerationOptions
                {
                    MaxNewTokens = parse.GetValue(maxTokens),
                    Temperature = parse.GetValue(temperature),
                    TopP = parse.GetValue(topP),
                    Seed = parse.GetValue(seed),
                },
            }, parse, options, method, budget, accounting);
            VisionAnswer? answer = null;
            bool streaming = parse.GetValue(stream) && !asJson;
            await foreach (var chunk in vlm.StreamAsync(request, ct))
            {
                if (streaming && chunk.Text.Length > 0) Console.Write(chunk.Text);
                answer = chunk.Answer ?? answer;
            }
            if (asJson)
                Console.WriteLine(JsonSerializer.Serialize(AskJson.From(answer!), AskJson.Options));
            else if (streaming)
                Console.WriteLine();
            else
                Console.WriteLine(answer!.Text.Trim());
            if (!asJson) Console.Error.WriteLine(CommonOptions.Summary(answer!));
            return 0;
        }));
        return cmd;
    }
}

/// <summary>The <c>ask --json</c> document.</summary>
internal sealed record AskJson(
    string Answer, string Method, double Budget, string BudgetAccounting, string FinishReason, int PromptTokens, int VisualTokens, int GeneratedTokens,
    double AvgVisualTokensPerLayer, double AvgVisualTokensPublished, int[] VisualTokensPerLayer, double FlopsRatio, double PrefillFlops,
    IReadOnlyDictionary<string, double> Signals, IReadOnlyList<string> Notes,
    double PreprocessMs, double VisionMs, double PrefillMs, double DecodeMs, double TotalMs,
    IReadOnlyList<AskJson.Logit> TopLogits, string Device,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] AutoPrune.Diagnostics.RequestDeviceCounters? Counters)
{
    public sealed record Logit(int Id, [property: JsonPropertyName("logit")] float Value);

    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = false,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static AskJson From(VisionAnswer a) => new(
        a.Text.Trim(), Pruning.PruningMethods.Name(a.Report.Method), a.Report.BudgetAsked, a.Report.Accounting.ToString().ToLowerInvariant(),
        a.FinishReason.ToString().ToLowerInvariant(), a.PromptTokens, a.VisualTokens, a.TokenIds.Count,
        Math.Round(a.Report.AvgVisualTokensProcessed, 3), Math.Round(a.Report.AvgVisualTokensPublished, 3), a.Report.VisualTokensPerLayer,
        Math.Round(a.Report.FlopsRatio, 5), a.Report.PrefillFlops, a.Report.Signals, a.Report.Notes,
        Round(a.Timings.PreprocessMs), Round(a.Timings.VisionMs), Round(a.Timings.PrefillMs), Round(a.Timings.DecodeMs), Round(a.Timings.TotalMs),
        a.TopLogits.Select(t => new Logit(t.Id, t.Logit)).ToList(), a.Device, a.DeviceCounters);

    private static double Round(double ms) => Math.Round(ms, 2);
}
