using System.Net.Http.Headers;
using Microsoft.Extensions.AI;

namespace AutoPrune.AspNetCore;

/// <summary>
/// Turns an <c>image_url</c> into image bytes: <c>data:</c> URLs always (base64, an image media type, at most
/// <see cref="AutoPruneServerOptions.MaxImageBytes"/>), <c>http(s)</c> URLs only on an allowed host, without redirects,
/// within the size and time limits. Every other scheme (file:, ftp:, ...) is refused, so a client can never make the
/// server read its own files.
/// </summary>
internal sealed class ImageSource(AutoPruneServerOptions options, IHttpClientFactory? http)
{
    /// <summary>The named <see cref="HttpClient"/> used for remote images (no redirects, no cookies).</summary>
    public const string HttpClientName = "AutoPrune.RemoteImages";

    public async Task<DataContent> ReadAsync(string url, string param, CancellationToken ct)
    {
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase)) return FromDataUrl(url, param);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw OpenAIException.BadRequest($"'{param}' must be a data: URL (data:image/png;base64,...) or an http(s) URL; got '{Shorten(url)}'.", param, "invalid_image_url");
        return await DownloadAsync(uri, param, ct).ConfigureAwait(false);
    }

    private DataContent FromDataUrl(string url, string param)
    {
        int comma = url.IndexOf(',');
        if (comma < 0) throw OpenAIException.BadRequest($"'{param}' is not a valid data: URL (no ',' before the data).", param, "invalid_image_url");
        var header = url.AsSpan(5, comma - 5);
        bool base64 = header.EndsWith(";base64", StringComparison.OrdinalIgnoreCase);
        var mediaType = (base64 ? header[..^7] : header).ToString().Split(';')[0].Trim().ToLowerInvariant();
        if (!mediaType.StartsWith("image/", StringComparison.Ordinal) || mediaType.Length == 6)
            throw OpenAIException.BadRequest($"'{param}' has content type '{(mediaType.Length == 0 ? "(none)" : mediaType)}', an unsupported content type; send an image (image/png, image/jpeg, image/webp, ...).", param, "unsupported_content_type");
        if (!base64) throw OpenAIException.BadRequest($"'{param}' must be base64-encoded (data:{mediaType};base64,...).", param, "invalid_base64");
        var data = url.AsSpan(comma + 1);
        long maxChars = (options.MaxImageBytes + 2) / 3 * 4 + 4;
        if (data.Length > maxChars)
            throw OpenAIException.BadRequest($"The image in '{param}' is about {data.Length / 4L * 3:N0} bytes; this server's limit is {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
        var bytes = new byte[data.Length / 4 * 3 + 3];
        if (!Convert.TryFromBase64Chars(data, bytes, out int written) || written == 0)
            throw OpenAIException.BadRequest($"The image data in '{param}' is not valid base64.", param, "invalid_base64");
        if (written > options.MaxImageBytes)
            throw OpenAIException.BadRequest($"The image in '{param}' is {written:N0} bytes; this server's limit is {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
        return new DataContent(bytes.AsMemory(0, written), mediaType) { Name = param };
    }

    private async Task<DataContent> DownloadAsync(Uri uri, string param, CancellationToken ct)
    {
        var allowed = options.RemoteImages.AllowedHosts;
        if (allowed.Count == 0)
            throw OpenAIException.BadRequest($"'{param}' is a remote URL, and this server downloads no images (configure '{AutoPruneServerOptions.SectionName}:RemoteImages:AllowedHosts' to allow hosts); send the image as a data: URL.", param, "remote_images_disabled");
        if (!allowed.Any(h => string.Equals(h.Trim(), uri.IdnHost, StringComparison.OrdinalIgnoreCase)))
            throw OpenAIException.BadRequest($"'{param}': the host '{uri.IdnHost}' is not in this server's allow-list of image hosts.", param, "image_host_not_allowed");
        if (http is null) throw new InvalidOperationException("No IHttpClientFactory is registered (AddAutoPruneServer registers one).");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(options.RemoteImages.TimeoutSeconds));
        var client = http.CreateClient(HttpClientName);
        try
        {
            using var response = await client.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                throw OpenAIException.BadRequest($"Downloading the image in '{param}' failed: {(int)response.StatusCode} {response.ReasonPhrase} (redirects are not followed).", param, "image_download_failed");
            var mediaType = response.Content.Headers.ContentType?.MediaType?.ToLowerInvariant() ?? "";
            if (!mediaType.StartsWith("image/", StringComparison.Ordinal))
                throw OpenAIException.BadRequest($"The URL in '{param}' returned content type '{(mediaType.Length == 0 ? "(none)" : mediaType)}', an unsupported content type; it must be an image.", param, "unsupported_content_type");
            if (response.Content.Headers.ContentLength is long length && length > options.MaxImageBytes)
                throw OpenAIException.BadRequest($"The image at '{param}' is {length:N0} bytes; this server's limit is {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
            using var body = await response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = await body.ReadAsync(chunk, timeout.Token).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > options.MaxImageBytes)
                    throw OpenAIException.BadRequest($"The image at '{param}' is larger than this server's limit of {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
                buffer.Write(chunk, 0, read);
            }
            return new DataContent(buffer.ToArray(), mediaType) { Name = param };
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw OpenAIException.BadRequest($"Downloading the image in '{param}' took longer than {options.RemoteImages.TimeoutSeconds:0.###} s.", param, "image_download_timeout");
        }
        catch (HttpRequestException e)
        {
            throw OpenAIException.BadRequest($"Downloading the image in '{param}' failed: {e.Message}", param, "image_download_failed");
        }
    }

    private static string Shorten(string s) => s.Length <= 64 ? s : s[..64] + "...";

    internal static void ConfigureHandler(SocketsHttpHandler handler)
    {
        handler.AllowAutoRedirect = false;
        handler.UseCookies = false;
        handler.AutomaticDecompression = System.Net.DecompressionMethods.None;
    }

    internal static void ConfigureClient(HttpClient client)
    {
        client.Timeout = Timeout.InfiniteTimeSpan; // each download has its own limit
        client.DefaultRequestHeaders.Accept.Add(new MediaTypeWithQualityHeaderValue("image/*"));
    }
}
