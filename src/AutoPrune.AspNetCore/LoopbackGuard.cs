using System.Net;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace AutoPrune.AspNetCore;

/// <summary>
/// With no API key configured, the server must listen on loopback addresses only (unless
/// <see cref="AutoPruneServerOptions.AllowUnauthenticatedRemoteAccess"/>): once the server has bound its addresses, any
/// other address stops the start with an error naming it. (Requests from non-loopback clients are also refused with 403
/// by the endpoint itself, so nothing is served to them even before this check runs.)
/// </summary>
internal sealed class LoopbackGuard(IServiceProvider services, ModelHost host, ILogger<LoopbackGuard> log) : IHostedLifecycleService
{
    public Task StartedAsync(CancellationToken cancellationToken)
    {
        if (host.Keys.Required || host.Options.AllowUnauthenticatedRemoteAccess) return Task.CompletedTask;
        var addresses = services.GetService<IServer>()?.Features.Get<IServerAddressesFeature>()?.Addresses;
        if (addresses is null) return Task.CompletedTask; // an in-process test server: no sockets
        var open = addresses.Where(a => !IsLoopback(a)).ToList();
        if (open.Count == 0) return Task.CompletedTask;
        var message = $"No API key is configured, so the server may listen on loopback addresses only, but it listens on {string.Join(", ", open)}. " +
            "Configure a key (--api-key-file FILE, or AutoPrune:Server:ApiKeys), listen on 127.0.0.1/localhost, " +
            "or set AutoPrune:Server:AllowUnauthenticatedRemoteAccess=true to serve everyone without a key.";
        log.LogCritical("{Message}", message);
        throw new InvalidOperationException(message);
    }

    internal static bool IsLoopback(string address)
    {
        if (address.Contains("://unix:", StringComparison.OrdinalIgnoreCase)) return true; // a Unix socket: local by nature
        if (!Uri.TryCreate(address.Replace("://*", "://0.0.0.0", StringComparison.Ordinal).Replace("://+", "://0.0.0.0", StringComparison.Ordinal), UriKind.Absolute, out var uri))
            return false;
        if (uri.Host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return true;
        return IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip);
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
