using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace AutoPrune.Diagnostics;

/// <summary>
/// The names under which the runtime reports traces and metrics, for OpenTelemetry
/// (<c>.AddSource(AutoPruneTelemetry.SourceName)</c>, <c>.AddMeter(AutoPruneTelemetry.MeterName)</c>).
/// Attribute names follow the OpenTelemetry GenAI semantic conventions where one exists (<c>gen_ai.*</c>);
/// durations are in seconds, as those conventions ask.
/// </summary>
public static class AutoPruneTelemetry
{
    /// <summary>The <see cref="System.Diagnostics.ActivitySource"/> name: one span per request with child spans per stage.</summary>
    public const string SourceName = "AutoPrune";

    /// <summary>The <see cref="System.Diagnostics.Metrics.Meter"/> name.</summary>
    public const string MeterName = "AutoPrune";

    /// <summary>The per-request span's operation (<c>gen_ai.operation.name</c>); the span is named "chat {model}".</summary>
    public const string OperationName = "chat";

    /// <summary>The <c>gen_ai.provider.name</c> of every span and measurement.</summary>
    public const string ProviderName = "autoprune";

    /// <summary>Names of the child spans of a request, in the order they run.</summary>
    public static class Spans
    {
        /// <summary>Decoding and resizing one image (absent when the vision cache answers).</summary>
        public const string Preprocess = "autoprune.preprocess";
        /// <summary>The vision tower and projector on one image.</summary>
        public const string Vision = "autoprune.vision";
        /// <summary>The prompt through every decoder layer, pruning included.</summary>
        public const string Prefill = "autoprune.prefill";
        /// <summary>Generating the answer token by token.</summary>
        public const string Decode = "autoprune.decode";
    }

    /// <summary>Attribute (tag) names on spans and measurements.</summary>
    public static class Tags
    {
        public const string OperationName = "gen_ai.operation.name";
        public const string ProviderName = "gen_ai.provider.name";
        public const string RequestModel = "gen_ai.request.model";
        public const string ResponseModel = "gen_ai.response.model";
        public const string RequestMaxTokens = "gen_ai.request.max_tokens";
        public const string RequestTemperature = "gen_ai.request.temperature";
        public const string RequestTopP = "gen_ai.request.top_p";
        public const string RequestSeed = "gen_ai.request.seed";
        public const string ResponseFinishReasons = "gen_ai.response.finish_reasons";
        public const string InputTokens = "gen_ai.usage.input_tokens";
        public const string OutputTokens = "gen_ai.usage.output_tokens";
        public const string ErrorType = "error.type";
        /// <summary>The pruning method that ran ("none", "fastv", ...).</summary>
        public const string PruningMethod = "autoprune.pruning.method";
        /// <summary>The visual-token budget asked for (tokens).</summary>
        public const string PruningBudget = "autoprune.pruning.budget";
        /// <summary>Visual tokens in the prompt before pruning.</summary>
        public const string VisualTokens = "autoprune.visual_tokens";
        /// <summary>Average visual tokens each decoder layer processed (what pruning kept).</summary>
        public const string VisualTokensKept = "autoprune.visual_tokens.kept";
        /// <summary>Prefill FLOPs relative to the unpruned model.</summary>
        public const string FlopsRatio = "autoprune.flops_ratio";
        /// <summary>The device the model runs on ("cpu", "cuda:0 ...").</summary>
        public const string Device = "autoprune.device";
        /// <summary>Images in the request.</summary>
        public const string Images = "autoprune.images";
        /// <summary>On a vision span: the image's index in the request.</summary>
        public const string ImageIndex = "autoprune.image.index";
        /// <summary>On a vision span: true when the vision cache answered.</summary>
        public const string VisionCached = "autoprune.vision.cached";
        /// <summary>On the device counters: the request's stage ("vision", "prefill", "decode").</summary>
        public const string Stage = "autoprune.stage";
    }

    /// <summary>Instrument names of the <see cref="MeterName"/> meter.</summary>
    public static class Instruments
    {
        /// <summary>Histogram (s): from the request's arrival (queueing included) to its first generated token.</summary>
        public const string TimeToFirstToken = "gen_ai.server.time_to_first_token";
        /// <summary>Histogram (s): decode time per generated token after the first.</summary>
        public const string TimePerOutputToken = "gen_ai.server.time_per_output_token";
        /// <summary>Histogram (s): prefill time (the prompt through every decoder layer, pruning included).</summary>
        public const string PrefillDuration = "autoprune.prefill.duration";
        /// <summary>Histogram ({token}): average visual tokens each decoder layer processed, per request.</summary>
        public const string VisualTokensPerLayer = "autoprune.visual_tokens.per_layer";
        /// <summary>Histogram (1): prefill FLOPs relative to the unpruned model, per request.</summary>
        public const string FlopsRatio = "autoprune.flops_ratio";
        /// <summary>Counter ({request}): requests started.</summary>
        public const string Requests = "autoprune.requests";
        /// <summary>Counter ({request}): requests that failed (tagged with <c>error.type</c>).</summary>
        public const string Errors = "autoprune.errors";
        /// <summary>Counter ({request}): requests cancelled by the caller, a reader that stopped early, or a timeout.</summary>
        public const string Cancellations = "autoprune.cancellations";
        /// <summary>Counter ({sync}), GPU backends, by <c>autoprune.stage</c>: times the host waited for the device.</summary>
        public const string DeviceHostSyncs = "autoprune.device.host_syncs";
        /// <summary>Counter ({launch}): kernel launches (device copies and CUDA graph launches included).</summary>
        public const string DeviceLaunches = "autoprune.device.launches";
        /// <summary>Counter ({call}): cuBLAS calls.</summary>
        public const string DeviceBlasCalls = "autoprune.device.blas_calls";
        /// <summary>Counter (By): bytes copied from the host to the device.</summary>
        public const string DeviceH2DBytes = "autoprune.device.h2d_bytes";
        /// <summary>Counter (By): bytes copied from the device to the host.</summary>
        public const string DeviceD2HBytes = "autoprune.device.d2h_bytes";
        /// <summary>Counter ({copy}): copies from the host to the device.</summary>
        public const string DeviceH2DCopies = "autoprune.device.h2d_copies";
        /// <summary>Counter ({copy}): copies from the device to the host.</summary>
        public const string DeviceD2HCopies = "autoprune.device.d2h_copies";
        /// <summary>Counter ({allocation}): device allocations (pool hits are not allocations).</summary>
        public const string DeviceAllocations = "autoprune.device.allocations";
    }

    internal static readonly ActivitySource Source = new(SourceName, typeof(AutoPruneTelemetry).Assembly.GetName().Version?.ToString());
    internal static readonly Meter Meter = new(MeterName, typeof(AutoPruneTelemetry).Assembly.GetName().Version?.ToString());

    internal static readonly Histogram<double> TimeToFirstToken = Meter.CreateHistogram<double>(Instruments.TimeToFirstToken, "s",
        "Time from a request's arrival to its first generated token.");
    internal static readonly Histogram<double> TimePerOutputToken = Meter.CreateHistogram<double>(Instruments.TimePerOutputToken, "s",
        "Decode time per generated token after the first.");
    internal static readonly Histogram<double> PrefillDuration = Meter.CreateHistogram<double>(Instruments.PrefillDuration, "s",
        "Prefill time, pruning included.");
    internal static readonly Histogram<double> VisualTokensPerLayer = Meter.CreateHistogram<double>(Instruments.VisualTokensPerLayer, "{token}",
        "Average visual tokens each decoder layer processed.");
    internal static readonly Histogram<double> FlopsRatio = Meter.CreateHistogram<double>(Instruments.FlopsRatio, "1",
        "Prefill FLOPs relative to the unpruned model.");
    internal static readonly Counter<long> Requests = Meter.CreateCounter<long>(Instruments.Requests, "{request}", "Requests started.");
    internal static readonly Counter<long> Errors = Meter.CreateCounter<long>(Instruments.Errors, "{request}", "Requests that failed.");
    internal static readonly Counter<long> Cancellations = Meter.CreateCounter<long>(Instruments.Cancellations, "{request}", "Requests cancelled.");
}
