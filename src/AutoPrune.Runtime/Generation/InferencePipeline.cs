using AutoPrune.Compute;
using System.Diagnostics;
using System.Text;
using AutoPrune.Diagnostics;
using AutoPrune.Loading.Images;
using AutoPrune.Loading.Text;
using AutoPrune.Models.Llava;
using AutoPrune.Pruning;

namespace AutoPrune.Generation;

/// <summary>
/// One request through a loaded model, in its three stages: <see cref="EncodeImages"/> (preprocessing, vision tower,
/// projector, LLaVA-NeXT's tile assembly and VisionZip's selection), <see cref="Prefill"/> (the prompt through the
/// decoder with the pruning session between layers) and <see cref="Decode"/> (the generation loop). Stateless between
/// requests except for the vision cache; thread-safe.
/// </summary>
/// <param name="anyRes">LLaVA-NeXT's image path; null for LLaVA-1.5.</param>
internal sealed class InferencePipeline(ILlavaBackend model, LlavaTokenizer tokenizer, ImagePreprocessor images, AnyResPipeline? anyRes,
    ModelShape shape, LruCache<string, EncodedImage> visionCache, bool padToSquare)
{
    /// <summary>
    /// The projected visual tokens of each image (on a GPU they stay on the device; <see cref="Prefill"/> builds the prompt
    /// from them and releases them) and the prompt ids they go into.
    /// </summary>
    internal sealed record EncodedImages(int[] Ids, List<ImageRows> Projected, List<int[]>? VisualIndices, PruningSession Session, double PreprocessMs, double VisionMs)
    {
        /// <summary>What a policy chose before the LLM (VisionZip, DivPrune, AutoPrune's selection before layer 0), if anything.</summary>
        public PreLlmRows? Selected { get; init; }

        /// <summary>
        /// The images' vision features, held until the prefill ends (a policy may read them there: AutoPrune's [CLS] term
        /// at layer 0), then released; with no vision cache that frees them.
        /// </summary>
        public IReadOnlyList<EncodedImage> Held { get; init; } = [];
    }

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
        var encoded = EncodeImages(p, telemetry, ct);
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

    /// <summary>Preprocessing, vision tower and projector for each image (VisionZip selects its tokens here; LLaVA-NeXT assembles its views).</summary>
    public EncodedImages EncodeImages(PreparedRequest p, RequestTelemetry telemetry, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        int imageToken = model.Config.ImageTokenIndex;
        int prefix = Math.Max(0, Array.IndexOf(p.Ids, imageToken));
        // A pruning method sees the first image's run (for LLaVA-NeXT its size decides how long, and its views); None counts them all.
        var sessionShape = p.PruningShape ?? (p.ImageTokens.Length > 0 ? shape with { VisualTokens = p.ImageTokens[0] } : shape);
        var patches = p.ImagePatches ?? p.ImageTokens;
        var session = new PruningSession(sessionShape, p.Pruning, prefix, patches.Sum(), p.PruningNotes) { Newlines = p.ImageTokens.Sum() - patches.Sum() };
        var ids = p.Ids;
        var projected = new List<ImageRows>(p.Request.Images.Count);
        var held = new List<EncodedImage>(p.Request.Images.Count);
        List<int[]>? visualIndices = anyRes is null ? null : [];
        PreLlmRows? selected = null;
        double preprocessMs = 0;
        try
        {
            for (int i = 0; i < p.Request.Images.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                var image = p.Request.Images[i];
                // The cache is keyed by the image's content (SHA-256 of its bytes, read once and within the file limit), so a
                // file rewritten in place is never answered from it.
                var clock = Stopwatch.StartNew();
                ReadOnlyMemory<byte> bytes = image.Path is not null ? ImagePreprocessor.ReadFile(image.Path, images.MaxFileBytes) : image.Bytes;
                string key = $"{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes.Span))}|{padToSquare}";
                // A hit takes a reference to the (GPU's device) features before the cache could drop them.
                EncodedImage? encoded = visionCache.TryGet(key, out var cached) ? cached : null;
                bool hit = encoded is not null;
                if (!hit) preprocessMs += clock.Elapsed.TotalMilliseconds; // reading and hashing count as preprocessing on a miss; a hit reports 0
                float[]? pixels = hit || anyRes is not null ? null : Preprocess(image, bytes.Span, i, telemetry, ref preprocessMs);
                using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Vision);
                span?.SetTag(AutoPruneTelemetry.Tags.ImageIndex, i);
                span?.SetTag(AutoPruneTelemetry.Tags.VisionCached, hit);
                if (encoded is null)
                {
                    // LLaVA-NeXT preprocesses its views inside the vision span (the tiles are cut as they are encoded).
                    encoded = anyRes is not null
                        ? anyRes.Encode(model, bytes.Span, image.Path, ref preprocessMs, ct)
                        : new EncodedImage([model.VisionForward(pixels, ct)], null);
                    encoded.Retain(); // the cache's own reference
                    if (!visionCache.Add(key, encoded)) encoded.Release();
                }
                held.Add(encoded);
                if (anyRes is not null)
                {
                    var (imageRows, map) = anyRes.Assemble(model, encoded);
                    if (map.Sequence.Count != p.ImageTokens[i])
                        throw new ImageDecodeException($"The image {image.Name} is {map.Layout.ImageWidth}x{map.Layout.ImageHeight} ({map.Sequence.Count} tokens) now, not what its header said when the request was queued ({p.ImageTokens[i]} tokens); it changed in between.");
                    session.SetAnyRes(map);
                    // Policies that choose before the LLM keep some of the patches (and every image_newline row) of the one image.
                    if (p.Request.Images.Count == 1 && SelectBeforeLlm(model, session, map, imageRows) is { } kept)
                    {
                        selected = kept;
                        projected.Add(kept.Rows);
                        visualIndices = [kept.VisualIndex!];
                        ids = ShortenImageRun(ids, imageToken, kept.Rows.Rows);
                        continue;
                    }
                    // Visual indices stay unique across images: each image's patches follow the earlier images' patches.
                    int offset = visualIndices!.Sum(v => v.Count(x => x >= 0));
                    visualIndices!.Add(map.Sequence.Select(x => x >= 0 ? x + offset : x).ToArray());
                    projected.Add(ImageRows.OnHost(imageRows, model.Hidden));
                    continue;
                }
                var vision = encoded.Views[0];
                session.SetVision(vision);
                // Policies that choose before the LLM (VisionZip, DivPrune, AutoPrune's selection before layer 0) hand back the rows that enter it.
                if (SelectBeforeLlm(model, session, vision) is { } chosen)
                {
                    selected = chosen;
                    projected.Add(chosen.Rows);
                    if (chosen.VisualIndex is not null) visualIndices = [chosen.VisualIndex];
                    ids = ShortenImageRun(ids, imageToken, chosen.Rows.Rows);
                }
                else
                    projected.Add(model.ProjectImage(vision));
            }
        }
        catch
        {
            foreach (var rows in projected) rows.Dispose();
            foreach (var e in held) e.Release();
            throw;
        }
        return new EncodedImages(ids, projected, visualIndices, session, preprocessMs, sw.Elapsed.TotalMilliseconds - preprocessMs) { Selected = selected, Held = held };
    }

    /// <summary>
    /// The rows a policy that chooses before the LLM lets in, projected (on a GPU, VisionZip's stay on the device and
    /// only the device knows their patches), or null when the policy does not choose there.
    /// </summary>
    internal static PreLlmRows? SelectBeforeLlm(ILlavaBackend model, PruningSession session, VisionFeatures vision)
    {
        var policy = session.Policy;
        // Where the vision features are on a GPU the selection runs there (the device-pruner registry): nothing but the
        // chosen rows' count comes back before the prefill.
        if (Pruning.Device.DevicePruners.SelectBeforeLlm(policy, vision, model) is { } onDevice) return onDevice;
        if (policy.SelectBeforeLlm(vision, (features, rows) => model.Project(features, rows)) is not { } chosen) return null;
        return new PreLlmRows(ImageRows.OnHost(chosen.Projected, model.Hidden), chosen.VisualIndex, chosen.OriginalPositions);
    }

    /// <summary>
    /// What of a LLaVA-NeXT image a policy that chooses before the LLM lets in (its patches' rows and every image_newline
    /// row, then merged rows), on the host, or null when the policy does not choose there.
    /// </summary>
    internal static PreLlmRows? SelectBeforeLlm(ILlavaBackend model, PruningSession session, AnyResTokenMap map, float[] tokens)
    {
        var image = new AnyResImage(map, tokens, model.Hidden, session.ViewShares);
        if (session.Policy.SelectBeforeLlm(image, (features, rows) => model.Project(features, rows)) is not { } chosen) return null;
        return new PreLlmRows(ImageRows.OnHost(chosen.Projected, model.Hidden), chosen.VisualIndex, chosen.OriginalPositions)
        {
            RunPlaces = chosen.RunPlaces, FullRun = chosen.FullRun,
        };
    }

    /// <summary>Decodes and resizes a LLaVA-1.5 image (its own span, timed into <paramref name="preprocessMs"/>).</summary>
    private float[] Preprocess(ImageInput image, ReadOnlySpan<byte> bytes, int index, RequestTelemetry telemetry, ref double preprocessMs)
    {
        using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Preprocess);
        span?.SetTag(AutoPruneTelemetry.Tags.ImageIndex, index);
        var clock = Stopwatch.StartNew();
        var pixels = images.Preprocess(bytes, padToSquare, image.Path);
        preprocessMs += clock.Elapsed.TotalMilliseconds;
        return pixels;
    }

    /// <summary>
    /// Builds the prompt's embeddings and runs them through every decoder layer, pruning between layers; releases the
    /// images' vision features at the end, whatever happens.
    /// </summary>
    public PrefilledPrompt Prefill(PreparedRequest p, EncodedImages encoded, RequestTelemetry telemetry, CancellationToken ct)
    {
        try { return PrefillCore(p, encoded, telemetry, ct); }
        finally { foreach (var e in encoded.Held) e.Release(); }
    }

    private PrefilledPrompt PrefillCore(PreparedRequest p, EncodedImages encoded, RequestTelemetry telemetry, CancellationToken ct)
    {
        using var span = telemetry.Stage(AutoPruneTelemetry.Spans.Prefill);
        var sw = Stopwatch.StartNew();
        var ids = encoded.Ids;
        int visualInPrompt = ids.Count(t => t == model.Config.ImageTokenIndex);
        int prefix = Math.Max(0, Array.IndexOf(ids, model.Config.ImageTokenIndex));
        var positions = encoded.Selected?.Positions(ids.Length, prefix, model.TokensPerImage, shape.GridSize * shape.GridSize);
        SequenceState state;
        try { state = model.BuildSequence(ids, encoded.Projected, encoded.VisualIndices, positions); }
        finally { foreach (var rows in encoded.Projected) rows.Dispose(); }
        var generation = model.StartGeneration(p.MaxNew);
        try
        {
            var session = encoded.Session;
            var logits = generation.Prefill(state, session.NeedsDecoderHook ? session : null, ct);
            NonFiniteLogitsException.ThrowIfAny(logits, "the last prompt position");
            p.OnPrefillLogits?.Invoke((float[])logits.Clone());
            p.OnPrefillState?.Invoke(state, generation.CachedTokensPerLayer());
            var report = session.Finish(state, ids.Length - prefix - visualInPrompt);
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
        () => new Constraints.TokenVocabulary(tokenizer.TokenBytes(), [tokenizer.EosId], dropsLeadingSpace: true, model.Config.TextConfig.VocabSize));

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
        var decoder = tokenizer.CreateStreamingDecoder();
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
            if (next == tokenizer.EosId) { finish = AnswerFinishReason.Stop; break; }
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

    /// <summary>Replaces the (single) run of image tokens with <paramref name="count"/> of them.</summary>
    internal static int[] ShortenImageRun(int[] ids, int imageToken, int count)
    {
        int first = Array.IndexOf(ids, imageToken), last = Array.LastIndexOf(ids, imageToken);
        return [.. ids.AsSpan(0, first), .. Enumerable.Repeat(imageToken, count), .. ids.AsSpan(last + 1)];
    }
}
