using System.Diagnostics;
using AutoPrune.Generation;
using AutoPrune.Pruning;

namespace AutoPrune.Diagnostics;

/// <summary>One request's span and measurements (see <see cref="AutoPruneTelemetry"/> for the names).</summary>
internal sealed class RequestTelemetry : IDisposable
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly TagList _tags;
    private readonly string _model;
    private bool _firstToken, _ended;

    public RequestTelemetry(string model, string device, PreparedRequest p)
    {
        _model = model;
        _tags = new TagList
        {
            { AutoPruneTelemetry.Tags.OperationName, AutoPruneTelemetry.OperationName },
            { AutoPruneTelemetry.Tags.ProviderName, AutoPruneTelemetry.ProviderName },
            { AutoPruneTelemetry.Tags.RequestModel, model },
            { AutoPruneTelemetry.Tags.PruningMethod, PruningMethods.Name(p.Pruning.Method) },
            { AutoPruneTelemetry.Tags.Device, device },
        };
        AutoPruneTelemetry.Requests.Add(1, _tags);
        Activity = AutoPruneTelemetry.Source.StartActivity($"{AutoPruneTelemetry.OperationName} {model}", ActivityKind.Internal);
        if (Activity is { IsAllDataRequested: true } a)
        {
            foreach (var tag in _tags) a.SetTag(tag.Key, tag.Value);
            var g = p.Request.Generation;
            a.SetTag(AutoPruneTelemetry.Tags.RequestMaxTokens, p.MaxNew);
            a.SetTag(AutoPruneTelemetry.Tags.RequestTemperature, (double)g.Temperature);
            a.SetTag(AutoPruneTelemetry.Tags.RequestTopP, (double)g.TopP);
            if (g.Seed is int seed) a.SetTag(AutoPruneTelemetry.Tags.RequestSeed, seed);
            a.SetTag(AutoPruneTelemetry.Tags.Images, p.Request.Images.Count);
            a.SetTag(AutoPruneTelemetry.Tags.InputTokens, p.Ids.Length);
            if (p.Pruning.Method != PruningMethod.None) a.SetTag(AutoPruneTelemetry.Tags.PruningBudget, p.Pruning.Budget);
        }
    }

    /// <summary>The request's span; null when nobody listens.</summary>
    public Activity? Activity { get; }

    /// <summary>The parent of the stage spans.</summary>
    public ActivityContext Context => Activity?.Context ?? default;

    /// <summary>Starts a stage span under the request's.</summary>
    public Activity? Stage(string name) => AutoPruneTelemetry.Source.StartActivity(name, ActivityKind.Internal, Context);

    /// <summary>Records time to first token (once).</summary>
    public void FirstToken()
    {
        if (_firstToken) return;
        _firstToken = true;
        AutoPruneTelemetry.TimeToFirstToken.Record(_clock.Elapsed.TotalSeconds, _tags);
    }

    public void Completed(VisionAnswer answer)
    {
        _ended = true;
        var r = answer.Report;
        AutoPruneTelemetry.PrefillDuration.Record(answer.Timings.PrefillMs / 1000, _tags);
        if (answer.TokenIds.Count > 1)
            AutoPruneTelemetry.TimePerOutputToken.Record(answer.Timings.DecodeMs / 1000 / answer.TokenIds.Count, _tags);
        AutoPruneTelemetry.VisualTokensPerLayer.Record(r.AvgVisualTokensProcessed, _tags);
        AutoPruneTelemetry.FlopsRatio.Record(r.FlopsRatio, _tags);
        if (Activity is not { IsAllDataRequested: true } a) return;
        a.SetTag(AutoPruneTelemetry.Tags.ResponseModel, _model);
        a.SetTag(AutoPruneTelemetry.Tags.PruningMethod, PruningMethods.Name(r.Method)); // None when a default method fell back
        a.SetTag(AutoPruneTelemetry.Tags.PruningBudget, r.BudgetAsked);
        a.SetTag(AutoPruneTelemetry.Tags.VisualTokens, answer.VisualTokens);
        a.SetTag(AutoPruneTelemetry.Tags.VisualTokensKept, r.AvgVisualTokensProcessed);
        a.SetTag(AutoPruneTelemetry.Tags.FlopsRatio, r.FlopsRatio);
        a.SetTag(AutoPruneTelemetry.Tags.OutputTokens, answer.TokenIds.Count);
        a.SetTag(AutoPruneTelemetry.Tags.ResponseFinishReasons, new[] { FinishReasonName(answer.FinishReason) });
    }

    /// <summary>Counts a failure or a cancellation and marks the span.</summary>
    public void Failed(Exception e, bool cancelled)
    {
        if (_ended) return;
        _ended = true;
        var tags = _tags;
        tags.Add(AutoPruneTelemetry.Tags.ErrorType, e.GetType().FullName);
        (cancelled ? AutoPruneTelemetry.Cancellations : AutoPruneTelemetry.Errors).Add(1, tags);
        if (Activity is { } a)
        {
            a.SetTag(AutoPruneTelemetry.Tags.ErrorType, e.GetType().FullName);
            a.SetStatus(ActivityStatusCode.Error, cancelled ? "cancelled" : e.Message);
        }
    }

    /// <summary>OpenTelemetry's GenAI finish reasons: "stop" or "length".</summary>
    private static string FinishReasonName(AnswerFinishReason reason) => reason == AnswerFinishReason.Length ? "length" : "stop";

    public void Dispose() => Activity?.Dispose();
}
