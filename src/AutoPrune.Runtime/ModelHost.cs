using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AutoPrune.Diagnostics;
using AutoPrune.Generation;
using AutoPrune.Models;
using Microsoft.Extensions.Logging;

namespace AutoPrune;

/// <summary>
/// Runs prepared requests on a loaded model, any number of callers at once: at most
/// <see cref="ModelOptions.MaxConcurrentRequests"/> compute at a time (each on a compute thread), streaming their chunks,
/// with the caller's cancellation, the request timeout and the model's disposal ending them promptly.
/// </summary>
internal sealed class ModelHost
{
    private readonly ModelRuntime _model;
    private readonly InferencePipeline _pipeline;
    private readonly ModelOptions _options;
    private readonly ILogger _log;
    private readonly SemaphoreSlim _gate;
    private readonly string _modelName;
    private long _requests;
    private int _disposed;
    /// <summary>Cancelled by <see cref="Dispose"/>: ends queued and running requests so the model can be released.</summary>
    private readonly CancellationTokenSource _shutdown = new();

    public ModelHost(ModelRuntime model, ModelOptions options, ILogger log)
    {
        _model = model;
        _pipeline = new InferencePipeline(model);
        _options = options;
        _log = log;
        _gate = new SemaphoreSlim(Math.Max(1, options.MaxConcurrentRequests));
        _modelName = Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Info.Directory));
    }

    /// <summary>Queues a prepared request for a compute slot and runs it on a worker thread, streaming its chunks.</summary>
    public async IAsyncEnumerable<AnswerChunk> RunAsync(PreparedRequest prepared, [EnumeratorCancellation] CancellationToken ct)
    {
        using var telemetry = new RequestTelemetry(_modelName, _model.Device, prepared);
        long id = Interlocked.Increment(ref _requests);
        _log.LogDebug("Request {Id}: {Images} image(s), {PromptTokens} prompt tokens, method {Method}, at most {MaxNew} new tokens",
            id, prepared.Request.Images.Count, prepared.Ids.Length, Pruning.PruningMethods.Name(prepared.Pruning.Method), prepared.MaxNew);
        // The timeout fires from a dedicated thread, not a pool timer, so a host that blocks the pool cannot delay it.
        using var timeout = _options.RequestTimeout is null ? null : new CancellationTokenSource();
        using var deadline = timeout is null ? null : Compute.DeadlineThread.Shared.CancelAfter(timeout, _options.RequestTimeout!.Value);
        // Cancelled by the caller, the timeout, or a reader that stops early (so no compute slot is held for nobody).
        using var stop = timeout is null ? CancellationTokenSource.CreateLinkedTokenSource(ct, _shutdown.Token) : CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token, _shutdown.Token);
        var token = stop.Token;
        var channel = Channel.CreateUnbounded<AnswerChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var producer = Task.Run(async () =>
        {
            try
            {
                await _gate.WaitAsync(token).ConfigureAwait(false);
                // The slot is released on the compute thread as soon as the work stops, not in a continuation that would first
                // wait for a thread-pool thread (seconds when the host keeps the pool busy).
                await ComputeThread.Run(() =>
                {
                    try { _pipeline.Run(prepared, telemetry, c => channel.Writer.TryWrite(c), token); }
                    finally { _gate.Release(); }
                }).ConfigureAwait(false);
                channel.Writer.TryComplete();
            }
            catch (OperationCanceledException) when (timeout?.IsCancellationRequested == true && !ct.IsCancellationRequested)
            {
                channel.Writer.TryComplete(TimedOut());
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException && _shutdown.IsCancellationRequested && !ct.IsCancellationRequested)
            {
                channel.Writer.TryComplete(Disposed());
            }
            catch (Exception e) { channel.Writer.TryComplete(e); }
        }, CancellationToken.None);
        // The caller's cancellation, the timeout and a dispose end the enumeration at once, checked before every chunk;
        // the compute thread stops at its next layer or token and then frees its slot.
        void ThrowIfStopped()
        {
            if (ct.IsCancellationRequested) throw new OperationCanceledException("The request was cancelled.", null, ct);
            if (timeout?.IsCancellationRequested == true) throw TimedOut();
            if (_shutdown.IsCancellationRequested) throw Disposed();
        }
        // Records a failure (or a cancellation) once, with a debug line, and lets it go on to the reader.
        void Fail(Exception e)
        {
            bool cancelled = e is OperationCanceledException or TimeoutException || (e is ObjectDisposedException && _shutdown.IsCancellationRequested);
            telemetry.Failed(e, cancelled);
            if (cancelled) _log.LogDebug("Request {Id} was cancelled ({Error})", id, e.GetType().Name);
            else _log.LogDebug(e, "Request {Id} failed", id);
        }
        bool completed = false, failed = false;
        try
        {
            while (true)
            {
                bool more;
                try
                {
                    ThrowIfStopped();
                    try { more = await channel.Reader.WaitToReadAsync(token).ConfigureAwait(false); }
                    catch (OperationCanceledException) when (token.IsCancellationRequested) { ThrowIfStopped(); throw; }
                }
                catch (Exception e)
                {
                    failed = true;
                    Fail(e);
                    throw;
                }
                if (!more) break;
                while (channel.Reader.TryRead(out var chunk))
                {
                    try { ThrowIfStopped(); }
                    catch (Exception e)
                    {
                        failed = true;
                        Fail(e);
                        throw;
                    }
                    if (chunk.Answer is { } answer)
                    {
                        telemetry.Completed(answer);
                        _log.LogDebug("Request {Id}: {Tokens} tokens ({Finish}); {Method} kept {Kept:F1} of {Visual} visual tokens per layer, {Flops:P1} of the prefill FLOPs; " +
                            "vision {VisionMs:F0} ms, prefill {PrefillMs:F0} ms, decode {DecodeMs:F0} ms",
                            id, answer.TokenIds.Count, answer.FinishReason, Pruning.PruningMethods.Name(answer.Report.Method), answer.Report.AvgVisualTokensProcessed,
                            answer.VisualTokens, answer.Report.FlopsRatio, answer.Timings.VisionMs, answer.Timings.PrefillMs, answer.Timings.DecodeMs);
                    }
                    yield return chunk;
                }
            }
            completed = true;
        }
        finally
        {
            if (!producer.IsCompleted) stop.Cancel();
            if (!completed && !failed)
                telemetry.Failed(new OperationCanceledException("The reader stopped before the answer was complete."), cancelled: true);
        }
        await producer.ConfigureAwait(false); // it never throws: its outcome went through the channel
    }

    private TimeoutException TimedOut() => new($"The request did not finish within the {_options.RequestTimeout!.Value.TotalSeconds:0.###} s request timeout.");

    private ObjectDisposedException Disposed() => new(nameof(VisionLanguageModel), "The model was disposed while this request was queued or running.");

    /// <summary>True once <see cref="Dispose"/> has begun.</summary>
    public bool IsDisposed => _disposed != 0;

    /// <summary>
    /// Rejects new requests and ends queued and running ones with an <see cref="ObjectDisposedException"/> (running
    /// ones stop at the next layer or token), waits for them (up to 30 s), then releases the model (on a GPU, its
    /// device memory). A request still running after the wait keeps the model alive rather than having it freed under it.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _shutdown.Cancel();
        int slots = Math.Max(1, _options.MaxConcurrentRequests), held = 0;
        var deadline = Stopwatch.StartNew();
        while (held < slots && _gate.Wait(TimeSpan.FromSeconds(Math.Max(0, 30 - deadline.Elapsed.TotalSeconds)))) held++;
        if (held == slots)
        {
            _model.ClearCaches(); // the cached images' device buffers go back before the device does
            _model.Dispose();
        }
        else _log.LogWarning("Disposed while {Count} request(s) were still computing; the model's memory is not released early.", slots - held);
        _gate.Dispose();
        _shutdown.Dispose();
    }
}
