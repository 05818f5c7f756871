using System.Net;
using System.Security.Cryptography;
using System.Text;
using AutoPrune.Loading;
using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;

namespace AutoPrune.AspNetCore;

/// <summary>
/// The configured API keys, kept as SHA-256 hashes and compared in constant time (every key is compared, whatever
/// matches), so neither a key's content nor its length leaks through timing.
/// </summary>
internal sealed class ApiKeys
{
    private readonly byte[][] _hashes;

    private ApiKeys(IEnumerable<string> keys) => _hashes = keys.Select(Hash).ToArray();

    public bool Required => _hashes.Length > 0;

    public int Count => _hashes.Length;

    /// <summary>The largest API key file read.</summary>
    public const int MaxKeyFileBytes = 1024 * 1024;

    /// <summary>Keys from configuration and from the key file (one per line; blank lines and '#' comments skipped).</summary>
    public static ApiKeys Load(AutoPruneServerOptions options)
    {
        var keys = options.ApiKeys.Where(k => !string.IsNullOrWhiteSpace(k)).Select(k => k.Trim()).ToList();
        if (!string.IsNullOrWhiteSpace(options.ApiKeyFile)) keys.AddRange(ReadKeyFile(options.ApiKeyFile));
        return new ApiKeys(keys);
    }

    /// <summary>
    /// The keys in a key file, read as every other input file is (<see cref="InputFile"/>): a regular file only (a FIFO,
    /// a device such as /dev/zero, a socket or a directory is refused by name, without blocking), at most 1 MiB,
    /// enforced while reading, and UTF-8 text.
    /// </summary>
    /// <exception cref="InvalidOperationException">The file cannot be used; the message names it and says why.</exception>
    public static List<string> ReadKeyFile(string file)
    {
        var path = Path.GetFullPath(file);
        string text;
        try
        {
            text = InputFile.ReadAllText(path, MaxKeyFileBytes, "The API key file", $"{AutoPruneServerOptions.SectionName}:{nameof(AutoPruneServerOptions.ApiKeyFile)}");
        }
        catch (InputFileException e)
        {
            throw new InvalidOperationException(e.Message, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"The API key file '{path}' cannot be read: {e.Message}", e);
        }
        if (text.Contains('\uFFFD') || text.Contains('\0'))
            throw new InvalidOperationException($"The API key file '{path}' is not UTF-8 text (one key per line).");
        var keys = text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        if (keys.Count == 0) throw new InvalidOperationException($"The API key file '{path}' holds no key.");
        return keys;
    }

    /// <summary>Whether <paramref name="presented"/> is one of the keys (constant time in the keys' contents).</summary>
    public bool Matches(string presented)
    {
        var hash = Hash(presented);
        bool match = false;
        foreach (var h in _hashes) match |= CryptographicOperations.FixedTimeEquals(h, hash);
        return match;
    }

    private static byte[] Hash(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    /// <summary>
    /// The request's access: null when allowed; else the error to answer (401 for a missing or wrong key, 403 for a
    /// remote client of a server without keys that was not opened to remote clients).
    /// </summary>
    public OpenAIException? Check(HttpContext context, bool allowRemoteWithoutKey)
    {
        if (!Required)
        {
            var remote = context.Connection.RemoteIpAddress;
            // No address: an in-process test server or a Unix socket, never a remote client.
            if (remote is null || IPAddress.IsLoopback(remote) || allowRemoteWithoutKey) return null;
            return new OpenAIException(StatusCodes.Status403Forbidden,
                "This server has no API key configured, so it serves loopback clients only; configure a key (AutoPrune:Server:ApiKeys or --api-key-file).",
                code: "remote_access_disabled");
        }
        string? header = context.Request.Headers[HeaderNames.Authorization];
        if (string.IsNullOrEmpty(header))
            return new OpenAIException(StatusCodes.Status401Unauthorized,
                "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer YOUR_KEY'.", code: "missing_api_key");
        const string Bearer = "Bearer ";
        if (!header.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase) || !Matches(header[Bearer.Length..].Trim()))
            return new OpenAIException(StatusCodes.Status401Unauthorized, "Incorrect API key provided.", code: "invalid_api_key");
        return null;
    }
}
