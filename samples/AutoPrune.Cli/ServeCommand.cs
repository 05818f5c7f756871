using System.CommandLine;
using AutoPrune.AspNetCore;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
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
            try
            {
                // Building maps the endpoints, which resolves the model's settings: their validation fails here or at start.
                await using var app = AutoPruneServer.Build(builder);
                // The host stops on SIGINT/SIGTERM (or ct), finishing in-flight requests within AutoPrune:Server:ShutdownTimeoutSeconds.
                using var stop = ct.Register(() => app.Lifetime.StopApplication());
                await app.StartAsync(ct);
                // One write, so that log lines from other threads cannot land inside the block.
                var banner = new System.Text.StringBuilder("autoprune serve: an OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, /health, /ready, /metrics)").AppendLine();
                foreach (var line in AutoPruneServer.Describe(app)) banner.Append("  ").AppendLine(line);
                Console.Out.Write(banner.ToString());
                Console.Out.Flush();
                await app.WaitForShutdownAsync();
            }
            catch (Exception e) when (ValidationFailures(e) is { Count: > 0 } failures)
            {
                throw new ArgumentException(string.Join(" ", failures));
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// The settings problems in a start-up failure (one OptionsValidationException, or several from each validated
    /// registration), each once, without .NET's " (Parameter 'x')" tails; empty for any other failure.
    /// </summary>
    internal static IReadOnlyList<string> ValidationFailures(Exception e)
    {
        var all = e is AggregateException a ? a.Flatten().InnerExceptions : [e];
        if (all.Count == 0 || !all.All(x => x is OptionsValidationException)) return [];
        return all.Cast<OptionsValidationException>().SelectMany(x => x.Failures).Select(Clean).Distinct(StringComparer.Ordinal).ToList();
    }

    private static string Clean(string failure)
    {
        int tail = failure.IndexOf(" (Parameter '", StringComparison.Ordinal);
        string clean = tail < 0 ? failure : failure[..tail];
        return clean.EndsWith('.') ? clean : clean + ".";
    }
}
