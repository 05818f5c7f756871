using AutoPrune.Compute;
using System.Diagnostics;
using System.Text;
using AutoPrune.Diagnostics;
using AutoPrune.Models;
using AutoPrune.Pruning;

namespace AutoPrune.Generation;

/// <summary>
/// One request through a loaded model, in its three stages: the family's <see cref="ModelRuntime.Encode"/>
/// (preprocessing, vision tower, projector, a selection before the LLM), <see cref="Prefill"/> (the prompt through the
/// decoder with the request's pruning session between layers) and <see cref="Decode"/> (the generation loop), the same for
/// every family. Stateless between requests; thread-safe.
/// </summary>
internal sealed class InferencePipeline(ModelRuntime model)
{
    /// <summary>The decoder state after the prompt, with the logits at its last position and what pruning did.</summary>
    internal sealed record PrefilledPrompt(IGeneration Generation, float[] Logits, PruningReport Report, double PrefillMs);

    /// <summary>Decode steps run and what the last one asked of the device (for the per-token counters).</summary>
    internal sealed class DecodeCounting(DeviceCounterSet counters)
    {
        public int Steps { get; private set; }
        public DeviceCounters? LastStep { get; private set; }
        private DeviceCounters? _start;
        public void Begin() => _start = counters.Snapshot();
        public void End() { LastStep = counters.Snapshot() - _start!; Steps++; }
    }

    public void Run(PreparedRequest p, RequestTelemetry telemetry, Action<AnswerChunk> emit, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        // GPU backends: everything this request makes the device do, by stage (exact even with concurrent requests).
        var counters = model.Counters is null ? null : new DeviceCounterSet();
        using var counting = counters is null ? null : DeviceCounterSet.BeginRequest(counters);
        var encoded = model.Encode(p, telemetry, ct);
        var afterVision = counters?.Snapshot();
        var prefilled = Prefill(p, encoded, telemetry, ct);
        var afterPrefill = counters?.Snapshot();
        using var generation = prefilled.Generation;
        var steps = counters is null ? null : new DecodeCounting(counters);
        var answer = Decode(p, prefilled, telemetry, emit, ct, steps);
        RequestDeviceCounters? device = null;
        if (counters is not null)
        {
            device = new RequestDeviceCounters(afterVision!, afterPrefill! - afterVision!, counters.Snapshot() - afterPrefill!, steps!.Steps, steps.LastStep);
            DeviceCounterMetrics.Record("vision", device.Vision);
            DeviceCounterMetrics.Record("prefill", device.Prefill);
            DeviceCounterMetrics.Record("decode", device.Decode);
        }
        emit(new AnswerChunk("", null, answer with
        {
            VisualTokens = p.ImageTokens.Sum(),
            Timings = answer.Timings with { PreprocessMs = encoded.PreprocessMs, VisionMs = encoded.VisionMs, TotalMs = total.Elapsed.TotalMilliseconds },
            DeviceCounters = device,
        }));
    }

    /// <summary>
    /// Builds the prompt's embeddings and runs them through every decoder layer, pruning between layers; releases the
    /// images' vision features at the end, whatever happens.
    /// </summary>
    public PrefilledPrompt Prefill(PreparedRequest p, EncodedImages encoded, RequestTelemetry telemetry, CancellationToken ct)
    {
        try { return PrefillCore(p, encoded, telemetry, ct); }
        finally { encoded.Release(); }
    }

    private PrefilledPrompt PrefillCore(PreparedRequest p, EncodedImages encoded, RequestTelemetry telemetry, CancellationToken ct)
    {
        using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Prefill);
        var sw = Stopwatch.StartNew();
        var state = model.BuildSequence(p, encoded);
        var generation = model.StartGeneration(p.MaxNew);
        try
        {
            var session = p.Session;
            var logits = generation.Prefill(state, session.NeedsDecoderHook ? session : null, ct);
            NonFiniteLogitsException.ThrowIfAny(logits, "the last prompt position");
            p.OnPrefillLogits?.Invoke((float[])logits.Clone());
            p.OnPrefillState?.Invoke(state, generation.CachedTokensPerLayer());
            var report = session.Finish(state, encoded.TextTokens);
            span?.SetTag(AutoPruneTelemetry.Tags.VisualTokensKept, report.AvgVisualTokensProcessed);
            span?.SetTag(AutoPruneTelemetry.Tags.FlopsRatio, report.FlopsRatio);
            return new PrefilledPrompt(generation, logits, report, sw.Elapsed.TotalMilliseconds);
        }
        catch
        {
            generation.Dispose();
            throw;
        }
    }

    private Constraints.TokenVocabulary? _vocabulary;

    /// <summary>The tokenizer's vocabulary as bytes, for structured output (built on the first request that asks for it).</summary>
    internal Constraints.TokenVocabulary Vocabulary => LazyInitializer.EnsureInitialized(ref _vocabulary,
        () => new Constraints.TokenVocabulary(model.Tokenizer.TokenBytes(), model.Tokenizer.EndIds, model.Tokenizer.DropsLeadingSpace, model.Info.VocabSize));

    /// <summary>
    /// Generates the answer token by token, emitting each piece of text as it is decoded. With a JSON response format each
    /// step's logits are masked to the tokens that keep the answer a valid prefix (on a GPU this downloads the logits of
    /// every step instead of the greedy id alone).
    /// </summary>
    public VisionAnswer Decode(PreparedRequest p, PrefilledPrompt prefilled, RequestTelemetry telemetry, Action<AnswerChunk> emit, CancellationToken ct,
        DecodeCounting? counting = null)
    {
        using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Decode);
        var sw = Stopwatch.StartNew();
        var g = p.Request.Generation;
        var logits = prefilled.Logits;
        var sampler = new Sampler(g);
        var decoder = model.Tokenizer.CreateStreamingDecoder();
        var tokens = new List<int>();
        var text = new StringBuilder();
        var finish = AnswerFinishReason.Length;
        var stops = g.StopSequences?.Where(s => !string.IsNullOrEmpty(s)).ToArray() ?? [];
        int? greedyNext = null;
        var constraint = g.ResponseFormat?.Grammar is { } grammar ? new Constraints.ConstrainedDecoding(grammar, Vocabulary) : null;
        for (int step = 0; step < p.MaxNew; step++)
        {
            ct.ThrowIfCancellationRequested();
            int next = constraint is null ? greedyNext ?? sampler.Next(logits) : sampler.Next(logits, constraint.NextMask(p.MaxNew - step));
            telemetry.FirstToken();
            if (model.Tokenizer.IsEnd(next)) { finish = AnswerFinishReason.Stop; break; }
            constraint?.Accept(next);
            tokens.Add(next);
            string piece = decoder.Push(next);
            text.Append(piece);
            string? stop = stops.FirstOrDefault(s => text.ToString().EndsWith(s, StringComparison.Ordinal));
            if (stop is not null)
            {
                int keepLen = text.Length - stop.Length;
                int alreadyEmitted = text.Length - piece.Length;
                if (keepLen > alreadyEmitted) emit(new AnswerChunk(text.ToString(alreadyEmitted, keepLen - alreadyEmitted), next, null));
                text.Length = keepLen;
                finish = AnswerFinishReason.StopSequence;
                break;
            }
            if (piece.Length > 0) emit(new AnswerChunk(piece, next, null));
            if (step + 1 < p.MaxNew)
            {
                // Greedy decoding asks the backend for the next id only (a GPU then returns 4 bytes, not the logits).
                counting?.Begin();
                if (sampler.IsGreedy && constraint is null) greedyNext = prefilled.Generation.StepGreedy(next);
                else NonFiniteLogitsException.ThrowIfAny(logits = prefilled.Generation.Step(next), $"decoding step {step + 1}");
                counting?.End();
            }
        }
        span?.SetTag(AutoPruneTelemetry.Tags.OutputTokens, tokens.Count);
        return new VisionAnswer
        {
            Text = text.ToString(),
            TokenIds = tokens,
            FinishReason = finish,
            PromptTokens = p.Ids.Length,
            VisualTokens = 0,
            TopLogits = Sampler.TopK(prefilled.Logits, 5),
            Timings = new AnswerTimings(0, 0, prefilled.PrefillMs, sw.Elapsed.TotalMilliseconds, 0),
            Device = model.Device,
            Report = prefilled.Report,
        };
    }
}
