// A generic-host app: the IChatClient is registered from appsettings.json ("AutoPrune" section) and used from DI.
//   dotnet run --project samples/HostedChat [-- Question:Image=PATH Question:Text="..." AutoPrune:Method=...]
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

var builder = Host.CreateApplicationBuilder(args);
var contentRoot = builder.Environment.ContentRootPath;

// The one registration line; UseLogging shows where middleware goes.
builder.Services.AddAutoPruneChatClient(builder.Configuration.GetSection("AutoPrune"),
        o => o.ModelDirectory = Path.GetFullPath(o.ModelDirectory!, contentRoot))
    .UseLogging();

using var host = builder.Build();
var chat = host.Services.GetRequiredService<IChatClient>();

var image = Path.GetFullPath(builder.Configuration["Question:Image"] ?? throw new InvalidOperationException("Set Question:Image."), contentRoot);
var question = builder.Configuration["Question:Text"] ?? "What is in the picture?";

var response = await chat.GetResponseAsync(
    [new ChatMessage(ChatRole.User, [new DataContent(await File.ReadAllBytesAsync(image), "image/png"), new TextContent(question)])]);

Console.WriteLine($"image:    {image}");
Console.WriteLine($"question: {question}");
Console.WriteLine($"answer:   {response.Text.Trim()}");
Console.WriteLine($"model:    {response.ModelId}, {response.Usage?.InputTokenCount} prompt tokens, {response.Usage?.OutputTokenCount} generated, finish {response.FinishReason}");
