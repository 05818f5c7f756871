using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Pruning;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using Microsoft.Net.Http.Headers;

namespace AutoPrune.AspNetCore;

/// <summary><c>POST /v1/chat/completions</c>: read, check, queue (bounded), run on the model, answer as JSON or server-sent events.</summary>
internal static class ChatCompletionsEndpoint
{
    private static readonly JsonSerializerOptions ReportJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    public static async Task HandleAsync(HttpContext context, ModelHost host, ILoggerFactory loggers)
    {
        var log = loggers.CreateLogger("AutoPrune.AspNetCore.ChatCompletions");
        var started = Stopwatch.StartNew();
        string id = $"chatcmpl-{Guid.NewGuid():N}";
        using var scope = log.BeginScope(new Dictionary<string, object> { ["CompletionId"] = id, ["TraceIdentifier"] = context.TraceIdentifier });
        var aborted = context.RequestAborted;
        double queueMs = 0;
        bool stream = false;
        try
        {
            if (host.Keys.Check(context, host.Options.AllowUnauthenticatedRemoteAccess) is { } denied) throw denied;
            if (host.IsStopping)
                throw new OpenAIException(StatusCodes.Status503ServiceUnavailable, "The server is shutting down; retry on another replica.", code: "shutting_down");
            if (!host.IsReady)
            {
                context.Response.Headers.RetryAfter = host.Options.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
                throw new OpenAIException(StatusCodes.Status503ServiceUnavailable,
                    host.Failure is { } f ? $"The model could not be loaded: {f}" : "The model is still loading; retry shortly (GET /ready says when it is ready).", code: "model_not_ready");
            }
            CheckContentType(context.Request);
            // Admission by bytes, before the body is read: its share of MaxConcurrentBodyBytes is held until the request ends.
            using var reservation = new BodyReservation(host.Bodies);
            var body = await RequestBody.ReadAsync(context, host, reservation).ConfigureAwait(false);
            var reader = new ChatCompletionReader(host.Options, host.Images, host.ModelId, host.MaxOutputTokens);
            var parsed = await reader.ReadAsync(ChatCompletionBinder.Read(body.Span), body, aborted).ConfigureAwait(false); // (images are decoded from the body's buffer)
            body = default; // the parsed request holds what is needed (text, image bytes); let the raw body go
            stream = parsed.Stream;
            if (parsed.IgnoredFields.Count > 0)
                log.LogDebug("Ignored request fields: {Fields}", string.Join(", ", parsed.IgnoredFields));

            using var timeout = host.Options.RequestTimeout is TimeSpan t ? new CancellationTokenSource(t) : new CancellationTokenSource();
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(aborted, timeout.Token, host.HardStop);
            var token = linked.Token;
            var model = host.Client.Model;
            IAsyncEnumerable<AnswerChunk> run;
            try
            {
                // The translator (shared with the IChatClient) and the model's own checks (prompt length, pruning method and
                // budget on this model): a bad request is refused here, before it takes a place in the queue.
                var request = host.Client.CreateRequest(parsed.Messages, parsed.Options);
                run = model.StreamAsync(request, token);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException)
            {
                throw Translate(e);
            }
            var waited = Stopwatch.StartNew();
            using var lease = await AcquireAsync(host, token, timeout.Token).ConfigureAwait(false);
            queueMs = waited.Elapsed.TotalMilliseconds;
            if (!lease.IsAcquired)
            {
                host.Rejected();
                context.Response.Headers.RetryAfter = host.Options.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
                throw new OpenAIException(StatusCodes.Status429TooManyRequests,
                    $"The server is busy: {host.Permits} request(s) are running and the queue of {host.Options.QueueLimit} is full. Retry after {host.Options.RetryAfterSeconds} s.",
                    code: "rate_limit_exceeded");
            }

            var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var chunks = run.GetAsyncEnumerator(token);
            try
            {
                VisionAnswer? answer = null;
                bool more;
                try { more = await chunks.MoveNextAsync().ConfigureAwait(false); }
                catch (Exception e) when (e is not OperationCanceledException || !aborted.IsCancellationRequested)
                {
                    throw Translate(e, timeout.Token, host);
                }
                if (!parsed.Stream)
                {
                    var text = new StringBuilder();
                    try
                    {
                        while (more)
                        {
                            answer = chunks.Current.Answer ?? answer;
                            more = await chunks.MoveNextAsync().ConfigureAwait(false);
                        }
                    }
                    catch (Exception e) when (e is not OperationCanceledException || !aborted.IsCancellationRequested)
                    {
                        throw Translate(e, timeout.Token, host);
                    }
                    var response = new ChatCompletionResponse(id, "chat.completion", created, host.ModelId,
                        [new ChoiceDto(0, new ResponseMessageDto("assistant", answer!.Text), null, FinishReason(answer), null)],
                        Usage(answer), null, Extension(answer));
                    await context.Response.WriteAsJsonAsync(response, OpenAIJson.Writer.ChatCompletionResponse, cancellationToken: aborted).ConfigureAwait(false);
                }
                else
                {
                    answer = await StreamAsync(context, chunks, more, id, created, host, parsed.IncludeUsage, timeout.Token, log).ConfigureAwait(false);
                }
                if (answer is not null)
                {
                    log.LogInformation("Chat completion {Id}: 200 in {ElapsedMs:F0} ms (queued {QueueMs:F0} ms), stream {Stream}; {PromptTokens} prompt + {CompletionTokens} completion tokens, {FinishReason}; " +
                        "{Method} kept {VisualTokensKept:F1} of {VisualTokens} visual tokens, {FlopsRatio:P1} of the prefill FLOPs",
                        id, started.Elapsed.TotalMilliseconds, queueMs, parsed.Stream, answer.PromptTokens, answer.TokenIds.Count, FinishReason(answer),
                        PruningMethods.Name(answer.Report.Method), answer.Report.AvgVisualTokensProcessed, answer.VisualTokens, answer.Report.FlopsRatio);
                }
            }
            finally
            {
                await chunks.DisposeAsync().ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            log.LogInformation("Chat completion {Id}: cancelled by the client after {ElapsedMs:F0} ms (queued {QueueMs:F0} ms), stream {Stream}", id, started.Elapsed.TotalMilliseconds, queueMs, stream);
        }
        catch (OpenAIException e)
        {
            var level = e.Status >= 500 ? LogLevel.Warning : LogLevel.Information;
            log.Log(level, "Chat completion {Id}: {Status} {Code} in {ElapsedMs:F0} ms: {Message}", id, e.Status, e.Code, started.Elapsed.TotalMilliseconds, e.Message);
            await WriteErrorAsync(context, e).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            log.LogError(e, "Chat completion {Id}: failed after {ElapsedMs:F0} ms", id, started.Elapsed.TotalMilliseconds);
            await WriteErrorAsync(context, new OpenAIException(StatusCodes.Status500InternalServerError, "The server failed to answer this request.", code: "server_error")).ConfigureAwait(false);
        }
    }

    /// <summary>A permit from the bounded queue; a full queue gives a lease that is not acquired (answered 429).</summary>
    private static async ValueTask<System.Threading.RateLimiting.RateLimitLease> AcquireAsync(ModelHost host, CancellationToken token, CancellationToken timeout)
    {
        try
        {
            return await host.Queue.AcquireAsync(1, token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            throw TimedOut(host);
        }
        catch (OperationCanceledException) when (host.HardStop.IsCancellationRequested)
        {
            throw ShuttingDown();
        }
    }

    /// <summary>Streams the answer as server-sent events in OpenAI's chunk format, ending with <c>[DONE]</c>.</summary>
    private static async Task<VisionAnswer?> StreamAsync(HttpContext context, IAsyncEnumerator<AnswerChunk> chunks, bool more, string id, long created,
        ModelHost host, bool includeUsage, CancellationToken timeout, ILogger log)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        var aborted = context.RequestAborted;
        await WriteEventAsync(response, Chunk(id, created, host.ModelId, new ResponseMessageDto("assistant", ""), null, null, null), aborted).ConfigureAwait(false);
        VisionAnswer? answer = null;
        try
        {
            while (more)
            {
                var chunk = chunks.Current;
                if (chunk.Answer is { } a)
                {
                    answer = a;
                    await WriteEventAsync(response, Chunk(id, created, host.ModelId, new ResponseMessageDto(null, null), FinishReason(a), null, Extension(a)), aborted).ConfigureAwait(false);
                    if (includeUsage)
                        await WriteEventAsync(response, new ChatCompletionResponse(id, "chat.completion.chunk", created, host.ModelId, [], Usage(a), null, null), aborted).ConfigureAwait(false);
                }
                else if (chunk.Text.Length > 0)
                {
                    await WriteEventAsync(response, Chunk(id, created, host.ModelId, new ResponseMessageDto(null, chunk.Text), null, null, null), aborted).ConfigureAwait(false);
                }
                more = await chunks.MoveNextAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException || !aborted.IsCancellationRequested)
        {
            // The status line is gone: the error becomes the stream's last event (as OpenAI does), and there is no [DONE].
            var error = Translate(e, timeout, host);
            log.LogWarning("Chat completion {Id}: the stream ended with {Status} {Code}: {Message}", id, error.Status, error.Code, error.Message);
            await WriteEventAsync(response, error.Body, aborted).ConfigureAwait(false);
            return null;
        }
        await response.Body.WriteAsync(Done, aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
        return answer;
    }

    private static ChatCompletionResponse Chunk(string id, long created, string model, ResponseMessageDto delta, string? finish, UsageDto? usage, AutoPruneResultDto? extension) =>
        new(id, "chat.completion.chunk", created, model, [new ChoiceDto(0, null, delta, finish, null)], usage, null, extension);

    private static async Task WriteEventAsync<T>(HttpResponse response, T value, CancellationToken ct)
    {
        var info = (System.Text.Json.Serialization.Metadata.JsonTypeInfo<T>)OpenAIJson.Writer.GetTypeInfo(typeof(T))!;
        var buffer = new ArrayBufferWriter<byte>(512);
        buffer.Write(DataPrefix);
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })) JsonSerializer.Serialize(writer, value, info);
        buffer.Write(EventEnd);
        await response.Body.WriteAsync(buffer.WrittenMemory, ct).ConfigureAwait(false);
        await response.Body.FlushAsync(ct).ConfigureAwait(false);
    }

    private static string FinishReason(VisionAnswer a) => a.FinishReason == AnswerFinishReason.Length ? "length" : "stop";

    private static UsageDto Usage(VisionAnswer a) => new(a.PromptTokens, a.TokenIds.Count, a.PromptTokens + a.TokenIds.Count);

    /// <summary>The response's <c>"autoprune"</c> field: the pruning report (without the kept indices), visual tokens and device.</summary>
    internal static AutoPruneResultDto Extension(VisionAnswer a)
    {
        var r = a.Report;
        var report = new Dictionary<string, object?>
        {
            ["method"] = PruningMethods.Name(r.Method),
            ["budget_asked"] = r.BudgetAsked,
            ["accounting"] = r.Accounting.ToString().ToLowerInvariant(),
            ["avg_visual_tokens_processed"] = r.AvgVisualTokensProcessed,
            ["avg_visual_tokens_published"] = r.AvgVisualTokensPublished,
            ["visual_tokens_per_layer"] = r.VisualTokensPerLayer,
            ["prefill_flops"] = r.PrefillFlops,
            ["unpruned_prefill_flops"] = r.UnprunedPrefillFlops,
            ["flops_ratio"] = r.FlopsRatio,
            ["signals"] = r.Signals,
            ["notes"] = r.Notes,
        };
        return new AutoPruneResultDto(JsonSerializer.SerializeToElement(report, ReportJson), a.VisualTokens, a.Device);
    }

    /// <summary>What a refusal of the translator or the model means for the client.</summary>
    private static OpenAIException Translate(Exception e, CancellationToken timeout = default, ModelHost? host = null) => e switch
    {
        OpenAIException o => o,
        InfeasibleBudgetException b => OpenAIException.BadRequest(Clean(b.Message), "autoprune.budget", "infeasible_budget"),
        ArgumentException a when a.Message.Contains("pruning method", StringComparison.OrdinalIgnoreCase) => OpenAIException.BadRequest(Clean(a.Message), "autoprune.method", "unknown_method"),
        ArgumentException a => OpenAIException.BadRequest(Clean(a.Message), ParamOf(a), "invalid_request"),
        NotSupportedException n => OpenAIException.BadRequest(Clean(n.Message), null, "unsupported_parameter"),
        TimeoutException when host is not null => TimedOut(host),
        OperationCanceledException when timeout.IsCancellationRequested && host is not null => TimedOut(host),
        OperationCanceledException or ObjectDisposedException when host?.HardStop.IsCancellationRequested == true || host?.IsStopping == true => ShuttingDown(),
        _ => new OpenAIException(StatusCodes.Status500InternalServerError, "The server failed to answer this request.", code: "server_error", inner: e),
    };

    /// <summary>
    /// The field a refusal of the model is about: the response format's minimum length is a matter of max_tokens; the
    /// other request-level refusals (prompt length, the final user message) are about the messages.
    /// </summary>
    private static string? ParamOf(ArgumentException a) =>
        a.ParamName is not ("request" or "messages") ? null
        : a.Message.StartsWith("The response format (", StringComparison.Ordinal) ? "max_tokens"
        : "messages";

    private static OpenAIException TimedOut(ModelHost host) =>
        new(StatusCodes.Status504GatewayTimeout, $"The request did not finish within this server's timeout of {host.Options.RequestTimeoutSeconds:0.###} s.", code: "timeout");

    private static OpenAIException ShuttingDown() =>
        new(StatusCodes.Status503ServiceUnavailable, "The server is shutting down; the request was cancelled.", code: "shutting_down");

    /// <summary>An exception message without .NET's " (Parameter 'x')" suffix.</summary>
    private static string Clean(string message) => message.Split(" (Parameter '", 2)[0];

    private static void CheckContentType(HttpRequest request)
    {
        var type = request.ContentType;
        if (string.IsNullOrEmpty(type)) return;
        if (MediaTypeHeaderValue.TryParse(type, out var parsed) &&
            (parsed.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase) || parsed.Suffix.Equals("json", StringComparison.OrdinalIgnoreCase)))
            return;
        throw new OpenAIException(StatusCodes.Status415UnsupportedMediaType, $"The request's Content-Type is '{type}'; send 'application/json'.", code: "unsupported_media_type");
    }

    private static async Task WriteErrorAsync(HttpContext context, OpenAIException error)
    {
        if (context.Response.HasStarted || context.RequestAborted.IsCancellationRequested) return;
        try
        {
            if (error.Status == StatusCodes.Status401Unauthorized) context.Response.Headers.WWWAuthenticate = "Bearer";
            await OpenAIErrors.WriteAsync(context, error).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ConnectionResetException)
        {
            // the client left
        }
    }
}
