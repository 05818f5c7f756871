using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace ReadmeSnippets;

internal static class Server
{
    public static async Task RunAsync(string[] args)
    {
        var builder = WebApplication.CreateBuilder(args);
        builder.Services.AddAutoPruneChatClient(builder.Configuration.GetSection("AutoPrune"));  // the model, as for IChatClient
        builder.Services.AddAutoPruneServer();                                                   // "AutoPrune:Server" settings

        var app = builder.Build();
        app.MapAutoPruneOpenAI();      // POST /v1/chat/completions, GET /v1/models (API key when configured)
        app.MapAutoPruneOperations();  // /health, /ready, /metrics
        await app.RunAsync();
    }
}
