// What a .NET developer writes against the AutoPrune packages: the engine, IChatClient with DI, Semantic Kernel and ML.NET,
// on one shared model. Usage: PackageConsumer MODEL_DIR IMAGE. Prints one line per check; exits 1 on the first failure.
using AutoPrune;
using AutoPrune.Extensions.AI;
using AutoPrune.MLNet;
using AutoPrune.Pruning;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

string modelDir = args[0], image = args[1];
const string Question = "How many blue objects are there?";

var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
{
    ["AutoPrune:ModelDirectory"] = modelDir,
    ["AutoPrune:Device"] = "cpu",
    ["AutoPrune:Method"] = "autoprune",
    ["AutoPrune:MaxOutputTokens"] = "8",
});
builder.Services.AddAutoPruneChatClient(builder.Configuration.GetSection("AutoPrune"));
builder.Services.AddKernel().AddAutoPruneChatCompletion(builder.Configuration.GetSection("AutoPrune"));
using var host = builder.Build();
await host.StartAsync();

var chat = host.Services.GetRequiredService<IChatClient>();
var bytes = await File.ReadAllBytesAsync(image);
var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, [new DataContent(bytes, "image/png"), new Microsoft.Extensions.AI.TextContent(Question)])]);
Check("IChatClient answer", response.Text.Trim() == "0", response.Text);
Check("IChatClient report", response.GetPruningReport()?.Method == PruningMethod.AutoPrune, response.GetPruningReport()?.Method.ToString());

var textOnly = await chat.GetResponseAsync("What shape has three sides?");
Check("text-only question", textOnly.GetPruningReport()?.Method == PruningMethod.None && textOnly.Text.Length > 0, textOnly.Text);

var kernel = host.Services.GetRequiredService<Kernel>();
var history = new ChatHistory();
history.AddUserMessage([new ImageContent(bytes, "image/png"), new Microsoft.SemanticKernel.TextContent(Question)]);
var skAnswer = await kernel.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(history);
Check("Semantic Kernel answer", skAnswer.Content == response.Text, skAnswer.Content);
var prompt = await kernel.InvokePromptAsync("What shape has three sides?");
Check("InvokePromptAsync", prompt.ToString() == textOnly.Text, prompt.ToString());

var model = host.Services.GetRequiredService<VisionLanguageModel>();
Check("one shared model", ReferenceEquals(model, chat.GetService<VisionLanguageModel>()), model.Info.Directory);
var ml = new MLContext(seed: 1);
var rows = ml.Data.LoadFromEnumerable(new[] { new Row { ImagePath = image, Question = Question } });
using var stage = ml.Transforms.AnswerVisualQuestion("Answer", "ImagePath", "Question", model,
    new VisualQuestionOptions { Generation = new GenerationOptions { MaxNewTokens = 8 }, Pruning = new PruningOptions { Method = PruningMethod.AutoPrune } }).Fit(rows);
var mlAnswer = stage.Transform(rows).GetColumn<string>("Answer").Single();
Check("ML.NET stage", mlAnswer == response.Text, mlAnswer);

await host.StopAsync();

// The OpenAI-compatible endpoint in a hosted app, on a loopback port.
var web = Microsoft.AspNetCore.Builder.WebApplication.CreateBuilder();
web.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
{
    ["AutoPrune:ModelDirectory"] = modelDir,
    ["AutoPrune:Device"] = "cpu",
    ["AutoPrune:MaxOutputTokens"] = "8",
    ["urls"] = "http://127.0.0.1:0",
});
web.Services.AddAutoPruneChatClient(web.Configuration.GetSection("AutoPrune"));
web.Services.AddAutoPruneServer();
await using var app = web.Build();
app.MapAutoPruneOpenAI();
app.MapAutoPruneOperations();
await app.StartAsync();
using var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()) };
while (!(await http.GetAsync("/ready")).IsSuccessStatusCode) await Task.Delay(100);
var body = $$$"""{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,{{{Convert.ToBase64String(bytes)}}}"}},{"type":"text","text":"{{{Question}}}"}]}]}""";
var served = await http.PostAsync("/v1/chat/completions", new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
var servedText = System.Text.Json.JsonDocument.Parse(await served.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString();
Check("OpenAI-compatible endpoint", servedText == response.Text, servedText);
await app.StopAsync();
Console.WriteLine("package consumer: all checks passed");
return 0;

static void Check(string what, bool ok, string? detail)
{
    Console.WriteLine($"{(ok ? "ok  " : "FAIL")} {what}: {detail}");
    if (!ok) Environment.Exit(1);
}

internal sealed class Row
{
    public string ImagePath { get; set; } = "";
    public string Question { get; set; } = "";
}
