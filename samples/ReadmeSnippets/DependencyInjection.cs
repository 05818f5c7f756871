using AutoPrune;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.SemanticKernel;

namespace ReadmeSnippets;

internal static class DependencyInjection
{
    public static async Task RunAsync(string[] args)
    {
        var builder = Host.CreateApplicationBuilder(args);

        // IChatClient (namespace Microsoft.Extensions.DependencyInjection); returns the ChatClientBuilder for middleware
        builder.Services.AddAutoPruneChatClient(builder.Configuration.GetSection("AutoPrune"))
            .UseLogging()
            .UseOpenTelemetry();
        // or: AddAutoPruneChatClient("models/llava-1.5-7b-hf", o => o.Budget = 0.25)
        // or: AddAutoPruneChatClient()  -- reads the container's IConfiguration "AutoPrune" section
        // or: AddKeyedAutoPruneChatClient("vision", dir)

        // Semantic Kernel (namespace Microsoft.SemanticKernel), optional serviceId; same configuration, same model
        builder.Services.AddKernel().AddAutoPruneChatCompletion(builder.Configuration.GetSection("AutoPrune"), serviceId: "vision");

        using var host = builder.Build();
        await host.StartAsync();   // validates the settings: model folder, method, budget on that model, device

        var chat = host.Services.GetRequiredService<IChatClient>();
        var model = host.Services.GetRequiredService<VisionLanguageModel>();   // the one model, e.g. for an ML.NET stage
        Console.WriteLine((await chat.GetResponseAsync("What shape has three sides?")).Text);
        Console.WriteLine(model.Info.Device);
        await host.StopAsync();
    }
}
