namespace AutoPrune.AspNetCore;

/// <summary>
/// Settings of the OpenAI-compatible endpoint, bound from the <c>"AutoPrune:Server"</c> configuration section
/// (appsettings.json, environment variables such as <c>AutoPrune__Server__QueueLimit</c>, or command-line options such as
/// <c>--AutoPrune:Server:QueueLimit=8</c>). The model itself is configured by the <c>"AutoPrune"</c> section
/// (<c>ModelDirectory</c>, <c>Device</c>, <c>Method</c>, <c>Budget</c>, <c>MaxOutputTokens</c>, ...).
/// </summary>
public sealed class AutoPruneServerOptions
{
    /// <summary>The configuration section the server's settings are read from.</summary>
    public const string SectionName = "AutoPrune:Server";

    /// <summary>API keys accepted as <c>Authorization: Bearer KEY</c>. With neither keys nor <see cref="ApiKeyFile"/>, requests need no key, and the server only accepts loopback clients (see <see cref="AllowUnauthenticatedRemoteAccess"/>).</summary>
    public List<string> ApiKeys { get; set; } = [];

    /// <summary>A file of API keys, one per line (blank lines and lines starting with '#' are skipped); read at start.</summary>
    public string? ApiKeyFile { get; set; }

    /// <summary>
    /// Serve clients on other machines although no API key is configured. Off by default: without a key the server refuses
    /// to start on a non-loopback address, and answers 403 to any client that is not on the loopback interface.
    /// </summary>
    public bool AllowUnauthenticatedRemoteAccess { get; set; }

    /// <summary>Requests that run on the model at once (the queue's permits); null uses the model's <c>MaxConcurrentRequests</c>.</summary>
    public int? MaxConcurrentRequests { get; set; }

    /// <summary>Requests that may wait for the model beyond those running; one more is answered 429 with <c>Retry-After</c>. 0 means none wait.</summary>
    public int QueueLimit { get; set; } = 16;

    /// <summary>The <c>Retry-After</c> header's seconds on a 429.</summary>
    public int RetryAfterSeconds { get; set; } = 1;

    /// <summary>Longest time one chat completion may take, queueing included; past it the request fails (504, or an error event when streaming). Null: no limit.</summary>
    public double? RequestTimeoutSeconds { get; set; } = 300;

    /// <summary>On shutdown, how long in-flight requests may take to finish before they are cancelled (the host's shutdown timeout).</summary>
    public double ShutdownTimeoutSeconds { get; set; } = 30;

    /// <summary>Largest request body, in bytes (413 beyond it); at most <see cref="MaxRequestBodyLimit"/>.</summary>
    public long MaxRequestBodyBytes { get; set; } = 32 * 1024 * 1024;

    /// <summary>The largest <see cref="MaxRequestBodyBytes"/> accepted: 2 GiB - 1 (a body is held in memory, and one JSON string of it must fit a .NET string).</summary>
    public const long MaxRequestBodyLimit = int.MaxValue;

    /// <summary>
    /// The bytes of request bodies the server holds at once, all requests together: a body is admitted (before it is read)
    /// only if its Content-Length, or a chunked body as it arrives, fits what is left, and keeps its share until its
    /// request ends; one that does not fit is answered 429 with <c>Retry-After</c>. Null (the default): 4 ×
    /// <see cref="MaxRequestBodyBytes"/> (128 MiB). At least <see cref="MaxRequestBodyBytes"/>.
    /// </summary>
    public long? MaxConcurrentBodyBytes { get; set; }

    /// <summary>Longest time the whole request body may take to arrive (408 past it, and the connection closes); null: only Kestrel's minimum data rate.</summary>
    public double? RequestBodyTimeoutSeconds { get; set; } = 60;

    /// <summary>Largest image, in bytes after base64 decoding or download (400 beyond it).</summary>
    public long MaxImageBytes { get; set; } = 16 * 1024 * 1024;

    /// <summary>Most images in one request (400 beyond it).</summary>
    public int MaxImagesPerRequest { get; set; } = 4;

    /// <summary>Largest number of messages in one request (400 beyond it).</summary>
    public int MaxMessages { get; set; } = 256;

    /// <summary>Remote <c>http(s)</c> image URLs; off unless hosts are listed.</summary>
    public RemoteImageOptions RemoteImages { get; set; } = new();

    /// <summary>Run one short request when the model is loaded, before <c>/ready</c> reports ready (so the first client does not pay for compilation and caches).</summary>
    public bool Warmup { get; set; } = true;

    /// <summary>The Prometheus scraping path; null or empty maps no metrics endpoint.</summary>
    public string? MetricsPath { get; set; } = "/metrics";

    /// <summary>The timeout as a <see cref="TimeSpan"/>, or null.</summary>
    internal TimeSpan? RequestTimeout => RequestTimeoutSeconds is double s and > 0 ? TimeSpan.FromSeconds(s) : null;

    /// <summary>The body timeout as a <see cref="TimeSpan"/>, or null.</summary>
    internal TimeSpan? RequestBodyTimeout => RequestBodyTimeoutSeconds is double s and > 0 ? TimeSpan.FromSeconds(s) : null;

    /// <summary><see cref="MaxConcurrentBodyBytes"/>, or its default.</summary>
    internal long ConcurrentBodyBytes => MaxConcurrentBodyBytes ?? 4 * MaxRequestBodyBytes;

    /// <summary>One message per setting that cannot work (empty when all are fine).</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        void Check(bool ok, string name, object? value, string rule)
        {
            if (!ok) problems.Add($"'{SectionName}:{name}' {rule} (got {value}).");
        }
        Check(MaxConcurrentRequests is null or >= 1, nameof(MaxConcurrentRequests), MaxConcurrentRequests, "must be at least 1");
        Check(QueueLimit >= 0, nameof(QueueLimit), QueueLimit, "must be 0 or more");
        Check(RetryAfterSeconds >= 1, nameof(RetryAfterSeconds), RetryAfterSeconds, "must be at least 1");
        Check(RequestTimeoutSeconds is null or > 0, nameof(RequestTimeoutSeconds), RequestTimeoutSeconds, "must be positive, or empty for no limit");
        Check(ShutdownTimeoutSeconds >= 0, nameof(ShutdownTimeoutSeconds), ShutdownTimeoutSeconds, "must be 0 or more");
        Check(MaxRequestBodyBytes is >= 1024 and <= MaxRequestBodyLimit, nameof(MaxRequestBodyBytes), MaxRequestBodyBytes, $"must be between 1,024 and {MaxRequestBodyLimit:N0} (2 GiB - 1)");
        Check(MaxConcurrentBodyBytes is null || MaxConcurrentBodyBytes >= MaxRequestBodyBytes, nameof(MaxConcurrentBodyBytes), MaxConcurrentBodyBytes,
            $"must be at least MaxRequestBodyBytes ({MaxRequestBodyBytes:N0}), or empty for 4 x MaxRequestBodyBytes");
        Check(RequestBodyTimeoutSeconds is null or > 0, nameof(RequestBodyTimeoutSeconds), RequestBodyTimeoutSeconds, "must be positive, or empty for no limit");
        Check(MaxImageBytes >= 1, nameof(MaxImageBytes), MaxImageBytes, "must be at least 1");
        Check(MaxImagesPerRequest >= 0, nameof(MaxImagesPerRequest), MaxImagesPerRequest, "must be 0 or more");
        Check(MaxMessages >= 1, nameof(MaxMessages), MaxMessages, "must be at least 1");
        Check(RemoteImages.TimeoutSeconds > 0, $"{nameof(RemoteImages)}:{nameof(RemoteImageOptions.TimeoutSeconds)}", RemoteImages.TimeoutSeconds, "must be positive");
        foreach (var host in RemoteImages.AllowedHosts)
            Check(RemoteImageOptions.Parse(host) is not null,
                $"{nameof(RemoteImages)}:{nameof(RemoteImageOptions.AllowedHosts)}", $"'{host}'", "must list host names or IP addresses, each with an optional ':port' (1-65535)");
        if (!string.IsNullOrWhiteSpace(ApiKeyFile))
        {
            // Read as the server will read it: a FIFO or a device is refused here, at validation, not a hang or an unbounded read at start.
            try { AspNetCore.ApiKeys.ReadKeyFile(ApiKeyFile); }
            catch (InvalidOperationException e) { problems.Add($"'{SectionName}:{nameof(ApiKeyFile)}': {e.Message}"); }
        }
        foreach (var key in ApiKeys)
            if (string.IsNullOrWhiteSpace(key)) problems.Add($"'{SectionName}:{nameof(ApiKeys)}' holds an empty key.");
        return problems;
    }
}

/// <summary>Which remote images the server may download, and how much of them.</summary>
public sealed class RemoteImageOptions
{
    /// <summary>
    /// Hosts whose <c>http</c>/<c>https</c> image URLs are fetched, each <c>host</c> (exact, case-insensitive; the scheme's
    /// default port only: 80 for http, 443 for https) or <c>host:port</c> (that port only; <c>[::1]:8080</c> for IPv6).
    /// Empty (the default) refuses every remote URL.
    /// </summary>
    public List<string> AllowedHosts { get; set; } = [];

    /// <summary>Longest time one download may take.</summary>
    public double TimeoutSeconds { get; set; } = 10;

    /// <summary>An allow-list entry as host and port (null: the scheme's default port); null when it cannot be read.</summary>
    internal static (string Host, int? Port)? Parse(string? entry)
    {
        if (string.IsNullOrWhiteSpace(entry)) return null;
        var e = entry.Trim();
        string host;
        int? port = null;
        string? portText = null;
        if (e.StartsWith('['))
        {
            int close = e.IndexOf(']');
            if (close < 0) return null;
            host = e[1..close];
            var rest = e[(close + 1)..];
            if (rest.Length > 0)
            {
                if (rest[0] != ':') return null;
                portText = rest[1..];
            }
        }
        else if (e.IndexOf(':') is int colon and >= 0 && e.IndexOf(':', colon + 1) < 0)
        {
            host = e[..colon];
            portText = e[(colon + 1)..];
        }
        else host = e; // a name, an IPv4 address, or a bare IPv6 address (the default port)
        if (portText is not null)
        {
            if (!int.TryParse(portText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535) return null;
            port = p;
        }
        if (host.Length == 0 || Uri.CheckHostName(host) == UriHostNameType.Unknown) return null;
        return (host, port);
    }

    /// <summary>Whether <paramref name="entry"/> allows <paramref name="uri"/>: the same host, and the entry's port or, without one, the scheme's default port.</summary>
    internal static bool Allows(string entry, Uri uri, bool ignorePort = false)
    {
        if (Parse(entry) is not var (host, port)) return false;
        string target = uri.IdnHost.Trim('[', ']');
        bool sameHost = System.Net.IPAddress.TryParse(host, out var a) && System.Net.IPAddress.TryParse(target, out var b)
            ? a.Equals(b)
            : string.Equals(host.TrimEnd('.'), target.TrimEnd('.'), StringComparison.OrdinalIgnoreCase);
        if (!sameHost) return false;
        if (ignorePort) return true;
        return port is int p ? uri.Port == p : uri.IsDefaultPort;
    }
}
