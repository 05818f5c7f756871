using System.CommandLine;
using AutoPrune.AspNetCore;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Options;

namespace AutoPrune.Cli;

/// <summary>
/// <c>serve</c>: the OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, /health, /ready, /metrics).
/// Its own options map onto configuration keys; every other setting comes from configuration: appsettings.json in the
/// current folder, environment variables (<c>AutoPrune__Server__QueueLimit=8</c>) or further command-line tokens
/// (<c>--AutoPrune:Server:QueueLimit=8</c>), which are passed through to ASP.NET Core.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model folder (Hugging Face LLaVA layout); configuration key AutoPrune:ModelDirectory. Default: the configured one, else samples/models/shapes-llava-tiny." };
        var urls = new Option<string?>("--urls") { Description = $"Addresses to listen on, ';'-separated (configuration key urls). Default: {AutoPruneServer.DefaultUrl}. Without an API key only loopback addresses are allowed." };
        var keyFile = new Option<FileInfo?>("--api-key-file") { Description = "File of API keys, one per line (AutoPrune:Server:ApiKeyFile); clients send 'Authorization: Bearer KEY'." };
        var device = new Option<string?>("--device") { Description = "auto, cpu, cuda[:N] or ilgpu-cpu (AutoPrune:Device)." };
        var method = new Option<string?>("--method") { Description = "Default pruning method of requests that name none (AutoPrune:Method): " + string.Join(", ", Pruning.PruningMethods.Names) + $". Default: {CommonOptions.DefaultMethodName}, as on every surface." };
        var budget = new Option<double?>("--budget", "-b") { Description = $"Default visual-token budget (AutoPrune:Budget): a count or a fraction. Default: {Pruning.PruningOptions.DefaultBudget:0}." };
        var options = new Option<FileInfo?>("--options") { Description = "Default pruning options file (AutoPrune:PruningOptionsFile), as 'recommend' writes it." };
        var cmd = new Command("serve", "Serve the model over an OpenAI-compatible HTTP API (chat completions with images, streaming, pruning per request). " +
            "Other settings come from appsettings.json, environment variables or --Section:Key=value options (see the README's \"Server\" section).")
        {
            model, urls, keyFile, device, method, budget, options,
        };
        cmd.TreatUnmatchedTokensAsErrors = false;
        cmd.SetAction((parse, ct) => CommonOptions.Guard(async () =>
        {
            var settings = new Dictionary<string, string?>();
            void Set(string key, string? value) { if (value is not null) settings[key] = value; }
            Set("AutoPrune:ModelDirectory", parse.GetValue(model));
            Set("urls", parse.GetValue(urls));
            Set("AutoPrune:Server:ApiKeyFile", parse.GetValue(keyFile)?.FullName);
            Set("AutoPrune:Device", parse.GetValue(device));
            Set("AutoPrune:Method", parse.GetValue(method));
            Set("AutoPrune:Budget", parse.GetValue(budget)?.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Set("AutoPrune:PruningOptionsFile", parse.GetValue(options)?.FullName);
            var passThrough = parse.UnmatchedTokens.ToArray();
            var builder = AutoPruneServer.CreateBuilder(passThrough, settings);
            if (string.IsNullOrWhiteSpace(builder.Configuration["AutoPrune:ModelDirectory"]))
                builder.Configuration["AutoPrune:ModelDirectory"] = CommonOptions.DefaultModelDirectory();
            await using var app = AutoPruneServer.Build(builder);
            try
            {
                // The host stops on SIGINT/SIGTERM (or ct), finishing in-flight requests within AutoPrune:Server:ShutdownTimeoutSeconds.
                using var stop = ct.Register(() => app.Lifetime.StopApplication());
                await app.RunAsync();
            }
            catch (OptionsValidationException e)
            {
                throw new ArgumentException(string.Join(" ", e.Failures));
            }
            return 0;
        }));
        return cmd;
    }
}
