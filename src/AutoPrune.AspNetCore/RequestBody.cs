using System.Buffers;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace AutoPrune.AspNetCore;

/// <summary>
/// The bytes of request bodies the server holds at once (<see cref="AutoPruneServerOptions.MaxConcurrentBodyBytes"/>):
/// a body is admitted only if its declared length (or, for a chunked body, each part as it arrives) fits what is left,
/// before it is read or parsed, and its share is held until the request ends (the parsed request lives that long).
/// </summary>
internal sealed class BodyBudget(long limit)
{
    private long _used;
    private long _peak;

    /// <summary>The budget in bytes.</summary>
    public long Limit { get; } = limit;

    /// <summary>Bytes reserved now.</summary>
    public long InUse => Interlocked.Read(ref _used);

    /// <summary>The most bytes reserved at once since start.</summary>
    public long Peak => Interlocked.Read(ref _peak);

    /// <summary>Reserves <paramref name="bytes"/> if they fit; false (and nothing reserved) otherwise.</summary>
    public bool TryReserve(long bytes)
    {
        if (bytes <= 0) return true;
        while (true)
        {
            long used = Interlocked.Read(ref _used);
            if (used + bytes > Limit) return false;
            if (Interlocked.CompareExchange(ref _used, used + bytes, used) != used) continue;
            long peak;
            while ((peak = Interlocked.Read(ref _peak)) < used + bytes && Interlocked.CompareExchange(ref _peak, used + bytes, peak) != peak) { }
            return true;
        }
    }

    public void Release(long bytes)
    {
        if (bytes > 0) Interlocked.Add(ref _used, -bytes);
    }
}

/// <summary>One request's share of the <see cref="BodyBudget"/>, given back when disposed.</summary>
internal sealed class BodyReservation(BodyBudget budget) : IDisposable
{
    public long Bytes { get; private set; }

    public bool TryAdd(long bytes)
    {
        if (!budget.TryReserve(bytes)) return false;
        Bytes += bytes;
        return true;
    }

    /// <summary>Gives back part of what this request reserved (a buffer it has outgrown).</summary>
    public void Release(long bytes)
    {
        bytes = Math.Min(bytes, Bytes);
        budget.Release(bytes);
        Bytes -= bytes;
    }

    public void Dispose()
    {
        budget.Release(Bytes);
        Bytes = 0;
    }
}

/// <summary>
/// Reads a request body into memory as it arrives, in parts (never sized from a length the client claims before the
/// bytes are there), within the body limit, the concurrent-body budget and the body timeout. Framing errors Kestrel
/// finds (a body shorter than its Content-Length, a bad chunk) are 400s, a body that stalls or trickles past the
/// timeout is a 408, a body over the limit a 413, and a body that does not fit the budget a 429: never a 500.
/// </summary>
internal static class RequestBody
{
    /// <returns>The body, in one array of its own (System.Text.Json reads a contiguous body without copying it; a body in parts it would copy whole into a pooled array), which the caller may change.</returns>
    public static async Task<Memory<byte>> ReadAsync(HttpContext context, ModelHost host, BodyReservation reservation)
    {
        var options = host.Options;
        long limit = options.MaxRequestBodyBytes;
        var request = context.Request;
        long? declared = request.ContentLength;
        if (declared > limit) throw TooLarge(context, limit);
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature) feature.MaxRequestBodySize = limit;
        // A declared length is reserved before a byte is read; its array is allocated uninitialized, so pages the client
        // never sends are never touched. A chunked body grows, each growth reserved before it is allocated.
        if (declared is long length && !reservation.TryAdd(length)) throw Busy(context, host);
        var body = new BodyBuffer(declared);

        // The timeout cancels the pending read (CancelPendingRead), which leaves Kestrel's body reader in a state it can
        // finish from; cancelling the read's token would not.
        var reader = request.BodyReader;
        using var timeout = new CancellationTokenSource();
        using var onTimeout = timeout.Token.Register(() => reader.CancelPendingRead());
        if (options.RequestBodyTimeout is TimeSpan t) timeout.CancelAfter(t);
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(context.RequestAborted).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (result.IsCanceled && timeout.IsCancellationRequested)
                {
                    reader.AdvanceTo(buffer.Start);
                    throw TimedOut(context, options);
                }
                try
                {
                    if (body.Length + buffer.Length > limit) throw TooLarge(context, limit);
                    if (body.Length + buffer.Length > declared) throw Malformed(context, "More bytes arrived than the Content-Length declares");
                    if (!body.TryAppend(buffer, limit, declared is null ? reservation : null)) throw Busy(context, host);
                }
                finally
                {
                    reader.AdvanceTo(buffer.End); // always: the reader must not be left mid-read
                }
                if (result.IsCompleted) break;
            }
        }
        catch (BadHttpRequestException e)
        {
            throw e.StatusCode switch
            {
                StatusCodes.Status413PayloadTooLarge => TooLarge(context, limit),
                StatusCodes.Status408RequestTimeout => TimedOut(context, options),
                _ => Malformed(context, e.Message),
            };
        }
        catch (IOException e) when (!context.RequestAborted.IsCancellationRequested)
        {
            throw Malformed(context, e.Message); // Kestrel's framing errors that are not BadHttpRequestException (a chunk size that overflows)
        }
        catch (IOException e)
        {
            throw new OperationCanceledException("The client closed the connection while sending the body.", e, context.RequestAborted);
        }
        return body.Written;
    }

    private static OpenAIException TooLarge(HttpContext context, long limit)
    {
        CloseAfterResponse(context); // the rest of a body this large is not worth draining
        return new(StatusCodes.Status413PayloadTooLarge, $"The request body is larger than this server's limit of {limit:N0} bytes.", code: "request_too_large");
    }

    private static OpenAIException Busy(HttpContext context, ModelHost host)
    {
        host.Rejected();
        context.Response.Headers.RetryAfter = host.Options.RetryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new OpenAIException(StatusCodes.Status429TooManyRequests,
            $"The server is busy: the request bodies it holds leave no room for this one within its limit of {host.Bodies.Limit:N0} bytes at once ({AutoPruneServerOptions.SectionName}:MaxConcurrentBodyBytes). Retry after {host.Options.RetryAfterSeconds} s.",
            code: "rate_limit_exceeded");
    }

    private static OpenAIException TimedOut(HttpContext context, AutoPruneServerOptions options)
    {
        CloseAfterResponse(context);
        string limit = options.RequestBodyTimeoutSeconds is double s ? $"this server's limit of {s:0.###} s" : "the server's minimum data rate";
        return new OpenAIException(StatusCodes.Status408RequestTimeout, $"The request body did not arrive within {limit}.", code: "request_timeout", type: "invalid_request_error");
    }

    private static OpenAIException Malformed(HttpContext context, string why)
    {
        CloseAfterResponse(context);
        return OpenAIException.BadRequest($"The request body is malformed: {why.TrimEnd('.')} (a body shorter than its Content-Length, or a bad chunk).", code: "invalid_request_body");
    }

    /// <summary>The rest of a broken or stalled body cannot be trusted to end: the connection closes after the answer.</summary>
    private static void CloseAfterResponse(HttpContext context)
    {
        if (!context.Response.HasStarted) context.Response.Headers.Connection = "close";
    }

    /// <summary>The body's bytes: one array of the declared length, or (chunked) one that doubles as data arrives.</summary>
    private sealed class BodyBuffer(long? declared)
    {
        private byte[] _array = declared is long d ? GC.AllocateUninitializedArray<byte>((int)d) : [];
        private long _reservedCapacity;

        public long Length { get; private set; }

        public Memory<byte> Written => _array.AsMemory(0, (int)Length);

        /// <param name="reservation">For a chunked body, where each new capacity is reserved (the old one is given back once copied); null when the declared length was reserved.</param>
        /// <returns>False when a growth could not be reserved.</returns>
        public bool TryAppend(ReadOnlySequence<byte> data, long limit, BodyReservation? reservation)
        {
            long needed = Length + data.Length;
            if (needed > _array.Length)
            {
                if (reservation is null) return false; // past the declared length: the caller refuses that before
                long capacity = Math.Min(limit, Math.Max(needed, Math.Max(16 * 1024, 2L * _array.Length)));
                if (!reservation.TryAdd(capacity)) return false;
                var grown = GC.AllocateUninitializedArray<byte>((int)capacity);
                _array.AsSpan(0, (int)Length).CopyTo(grown);
                _array = grown;
                reservation.Release(_reservedCapacity);
                _reservedCapacity = capacity;
            }
            data.CopyTo(_array.AsSpan((int)Length));
            Length = needed;
            return true;
        }
    }
}
