// A Semantic Kernel chat about an image, answered by the local model and streamed token by token.
//   dotnet run --project samples/SemanticKernelChat [-- IMAGE [QUESTION...]] [--model DIR] [--method NAME] [--budget N]
using AutoPrune.Extensions.AI;
using AutoPrune.Pruning;
using AutoPrune.SemanticKernel;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

var root = FindRepoRoot();
string model = Path.Combine(root, "samples", "models", "shapes-llava-tiny");
string image = Path.Combine(root, "tests", "data", "shapes-vqa-dev", "images", "0002.png");
string question = "How many blue objects are there?";
string? method = null;   // null: the default, autoprune at 128 visual tokens (PruningOptions.Default), as on every surface
double? budget = null;
var positional = new List<string>();
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--model": model = args[++i]; break;
        case "--method": method = args[++i]; break;
        case "--budget": budget = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        default: positional.Add(args[i]); break;
    }
}
if (positional.Count > 0) image = positional[0];
if (positional.Count > 1) question = string.Join(' ', positional.Skip(1));

// With the Microsoft.SemanticKernel package this is Kernel.CreateBuilder().AddAutoPruneChatCompletion(model).Build();
// with the abstractions alone the kernel comes from a service collection.
var services = new ServiceCollection();
services.AddKernel().AddAutoPruneChatCompletion(model);
await using var provider = services.BuildServiceProvider();
var kernel = provider.GetRequiredService<Kernel>();
var chat = kernel.GetRequiredService<IChatCompletionService>();

var history = new ChatHistory("You answer questions about pictures of shapes.");
history.AddUserMessage([new ImageContent(await File.ReadAllBytesAsync(image), "image/png"), new TextContent(question)]);

var settings = new AutoPrunePromptExecutionSettings
{
    MaxTokens = 32,
    PruningMethod = method is null ? null : PruningMethods.Parse(method, "--method"),
    Budget = budget,
};

Console.WriteLine($"image:    {image}");
Console.WriteLine($"question: {question}");
Console.Write("answer:   ");
PruningReport? report = null;
await foreach (var chunk in chat.GetStreamingChatMessageContentsAsync(history, settings, kernel))
{
    Console.Write(chunk.Content);
    if (chunk.InnerContent is Microsoft.Extensions.AI.ChatResponseUpdate update) report = update.GetPruningReport() ?? report;
}
Console.WriteLine();
if (report is not null)
    Console.WriteLine($"pruning:  {PruningMethods.Name(report.Method)}, {report.AvgVisualTokensProcessed:F0} visual tokens per layer on average, {report.FlopsRatio:P0} of the unpruned prefill FLOPs");

static string FindRepoRoot()
{
    foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "AutoPrune.sln"))) return d.FullName;
    throw new InvalidOperationException("Run from inside the AutoPrune.NET repository (AutoPrune.sln not found), or pass --model and an image path.");
}
