using System.Buffers;
using System.Buffers.Text;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using SkiaSharp;

namespace AutoPrune.AspNetCore;

/// <summary>
/// Turns an <c>image_url</c> into image bytes: <c>data:</c> URLs always (base64, an image media type, at most
/// <see cref="AutoPruneServerOptions.MaxImageBytes"/>), <c>http(s)</c> URLs only on an allowed host and port, without
/// redirects, within the size and time limits. Every other scheme (file:, ftp:, ...) is refused, so a client can never
/// make the server read its own files. The image's header is checked here, before the request queues: bytes that are
/// not an image SkiaSharp can open, or an image of more than the model's <c>MaxImagePixels</c>, are a 400 naming the field.
/// </summary>
/// <param name="maxPixels">The model's <c>ModelOptions.MaxImagePixels</c>.</param>
internal sealed class ImageSource(AutoPruneServerOptions options, IHttpClientFactory? http, long maxPixels)
{
    /// <summary>The named <see cref="HttpClient"/> used for remote images (no redirects, no cookies).</summary>
    public const string HttpClientName = "AutoPrune.RemoteImages";

    /// <summary>
    /// Reads the image of an <c>image_url</c> given as its JSON string token in the body (quotes included): a data: URL
    /// is decoded from the body's UTF-8 bytes, with no UTF-16 copy of a string that can be tens of megabytes.
    /// </summary>
    /// <param name="token">The string token, in the request body's own buffer: an escaped data: URL is unescaped in place (the body is not used again).</param>
    public async Task<DataContent> ReadAsync(Memory<byte> token, bool escaped, string param, CancellationToken ct)
    {
        var quoted = token.Span;
        var raw = quoted[1..^1];
        if (raw.Length >= 5 && Ascii.EqualsIgnoreCase(raw[..5], "data:"u8))
            // Serializers that escape '+' or '/' (\u002B, \/, as System.Text.Json does by default): unescaped where they
            // lie (an escape is longer than what it stands for), never copied to a string.
            return Checked(FromDataUrl(token[1..(1 + (escaped ? UnescapeInPlace(raw) : raw.Length))], param), param);
        var reader = new Utf8JsonReader(quoted);
        reader.Read();
        return await ReadAsync(reader.GetString()!, param, ct).ConfigureAwait(false);
    }

    public async Task<DataContent> ReadAsync(string url, string param, CancellationToken ct)
    {
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase)) return Checked(FromDataUrl(Encoding.UTF8.GetBytes(url).AsMemory(), param), param);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw OpenAIException.BadRequest($"'{param}' must be a data: URL (data:image/png;base64,...) or an http(s) URL; got '{Shorten(url)}'.", param, "invalid_image_url");
        return Checked(await DownloadAsync(uri, param, ct).ConfigureAwait(false), param);
    }

    /// <summary>Unescapes a JSON string's bytes (already checked: valid escapes, no lone surrogate) where they lie; returns the new length.</summary>
    internal static int UnescapeInPlace(Span<byte> s)
    {
        int r = s.IndexOf((byte)'\\');
        if (r < 0) return s.Length;
        int w = r;
        while (r < s.Length)
        {
            byte b = s[r];
            if (b != (byte)'\\') { s[w++] = b; r++; continue; }
            byte e = s[r + 1];
            if (e != (byte)'u')
            {
                s[w++] = e switch { (byte)'b' => 8, (byte)'f' => 12, (byte)'n' => 10, (byte)'r' => 13, (byte)'t' => 9, _ => e }; // \" \\ \/ stand for themselves
                r += 2;
                continue;
            }
            int unit = Hex(s.Slice(r + 2, 4));
            r += 6;
            int code = unit;
            if (unit is >= 0xD800 and <= 0xDBFF)
            {
                code = 0x10000 + ((unit - 0xD800) << 10) + (Hex(s.Slice(r + 2, 4)) - 0xDC00);
                r += 6;
            }
            w += new Rune(code).EncodeToUtf8(s[w..]);
        }
        return w;

        static int Hex(ReadOnlySpan<byte> h) => int.Parse(h, System.Globalization.NumberStyles.AllowHexSpecifier, System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>A data: URL's image, base64-decoded where it lies (the decoded bytes are shorter), so the image costs no memory beyond the body's.</summary>
    private DataContent FromDataUrl(Memory<byte> urlMemory, string param)
    {
        var url = urlMemory.Span;
        int comma = url.IndexOf((byte)',');
        if (comma < 0) throw OpenAIException.BadRequest($"'{param}' is not a valid data: URL (no ',' before the data).", param, "invalid_image_url");
        var header = url[5..comma];
        bool base64 = header.Length >= 7 && Ascii.EqualsIgnoreCase(header[^7..], ";base64"u8);
        var typeBytes = base64 ? header[..^7] : header;
        int semicolon = typeBytes.IndexOf((byte)';');
        var mediaType = Encoding.UTF8.GetString(semicolon < 0 ? typeBytes : typeBytes[..semicolon]).Trim().ToLowerInvariant();
        if (!mediaType.StartsWith("image/", StringComparison.Ordinal) || mediaType.Length == 6)
            throw OpenAIException.BadRequest($"'{param}' has content type '{(mediaType.Length == 0 ? "(none)" : Shorten(mediaType))}', an unsupported content type; send an image (image/png, image/jpeg, image/webp, ...).", param, "unsupported_content_type");
        if (!base64) throw OpenAIException.BadRequest($"'{param}' must be base64-encoded (data:{Shorten(mediaType)};base64,...).", param, "invalid_base64");
        var data = urlMemory[(comma + 1)..];
        long maxChars = (options.MaxImageBytes + 2) / 3 * 4 + 4;
        if (data.Length > maxChars)
            throw OpenAIException.BadRequest($"The image in '{param}' is about {data.Length / 4L * 3:N0} bytes; this server's limit is {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
        // Whitespace inside the data (line-wrapped base64) is dropped first, in place too.
        var span = data.Span;
        int length = span.IndexOfAny(" \t\r\n"u8) < 0 ? span.Length : Compact(span);
        if (Base64.DecodeFromUtf8InPlace(span[..length], out int written) != OperationStatus.Done || written == 0)
            throw OpenAIException.BadRequest($"The image data in '{param}' is not valid base64.", param, "invalid_base64");
        if (written > options.MaxImageBytes)
            throw OpenAIException.BadRequest($"The image in '{param}' is {written:N0} bytes; this server's limit is {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
        return new DataContent(data[..written], mediaType) { Name = param };

        static int Compact(Span<byte> s)
        {
            int w = 0;
            foreach (byte b in s)
                if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) s[w++] = b;
            return w;
        }
    }

    /// <summary>
    /// The image's header, read without decoding a pixel: the bytes must be an image SkiaSharp opens, of a non-zero size,
    /// with at most <c>maxPixels</c> pixels. What only decoding finds (a truncated body) is refused after the queue.
    /// </summary>
    private unsafe DataContent Checked(DataContent image, string param)
    {
        var bytes = image.Data;
        int width, height;
        string format;
        using (var pin = bytes.Pin())
        using (var data = SKData.Create((IntPtr)pin.Pointer, bytes.Length))
        using (var codec = SKCodec.Create(data))
        {
            if (codec is null)
                throw OpenAIException.BadRequest($"The image in '{param}' ({bytes.Length:N0} bytes) is not in a format this server decodes (PNG, JPEG, WebP, GIF, BMP, ICO, WBMP), or its header is corrupt.", param, "invalid_image");
            (width, height, format) = (codec.Info.Width, codec.Info.Height, codec.EncodedFormat.ToString());
        }
        if (width <= 0 || height <= 0)
            throw OpenAIException.BadRequest($"The {format} image in '{param}' has a zero size ({width}x{height}).", param, "invalid_image");
        if ((long)width * height > maxPixels)
            throw OpenAIException.BadRequest($"The {format} image in '{param}' is {width}x{height} = {(long)width * height:N0} pixels; the model's limit is {maxPixels:N0} pixels (AutoPrune:ModelOptions:MaxImagePixels).", param, "image_too_large");
        return image;
    }

    private async Task<DataContent> DownloadAsync(Uri uri, string param, CancellationToken ct)
    {
        var allowed = options.RemoteImages.AllowedHosts;
        if (allowed.Count == 0)
            throw OpenAIException.BadRequest($"'{param}' is a remote URL, and this server downloads no images (configure '{AutoPruneServerOptions.SectionName}:RemoteImages:AllowedHosts' to allow hosts); send the image as a data: URL.", param, "remote_images_disabled");
        string host = uri.IdnHost;
        if (!allowed.Any(entry => RemoteImageOptions.Allows(entry, uri)))
        {
            bool hostListed = allowed.Any(entry => RemoteImageOptions.Allows(entry, uri, ignorePort: true));
            throw OpenAIException.BadRequest(hostListed
                ? $"'{param}': port {uri.Port} of host '{host}' is not in this server's allow-list of image hosts (an entry without a port allows {uri.Scheme}'s default port {(uri.Scheme == Uri.UriSchemeHttps ? 443 : 80)} only; list '{host}:{uri.Port}' to allow it)."
                : $"'{param}': the host '{host}' is not in this server's allow-list of image hosts.", param, "image_host_not_allowed");
        }
        if (http is null) throw new InvalidOperationException("No IHttpClientFactory is registered (AddAutoPruneServer registers one).");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(options.RemoteImages.TimeoutSeconds));
        var client = http.CreateClient(HttpClientName);
        // Whatever went wrong, the message names the host and the rule, never what the fetch found there (a status line,
        // a socket error, a content type): an allowed host must not become a probe of what else answers on it.
        OpenAIException Failed() => OpenAIException.BadRequest(
            $"The image in '{param}' could not be downloaded from '{host}': this server takes an image only from a 2xx answer within {options.RemoteImages.TimeoutSeconds:0.###} s, without following redirects.",
            param, "image_download_failed");
        try
        {
            using var response = await client.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode) throw Failed();
            var mediaType = response.Content.Headers.ContentType?.MediaType?.ToLowerInvariant() ?? "";
            if (!mediaType.StartsWith("image/", StringComparison.Ordinal))
                throw OpenAIException.BadRequest($"The URL in '{param}' (host '{host}') did not answer with an image: this server takes only an image/* content type.", param, "unsupported_content_type");
            OpenAIException TooLarge() => OpenAIException.BadRequest($"The image at '{param}' (host '{host}') is larger than this server's limit of {options.MaxImageBytes:N0} bytes per image.", param, "image_too_large");
            if (response.Content.Headers.ContentLength is long length && length > options.MaxImageBytes) throw TooLarge();
            using var body = await response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = await body.ReadAsync(chunk, timeout.Token).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > options.MaxImageBytes) throw TooLarge();
                buffer.Write(chunk, 0, read);
            }
            return new DataContent(buffer.ToArray(), mediaType) { Name = param };
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw Failed();
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            throw Failed();
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
