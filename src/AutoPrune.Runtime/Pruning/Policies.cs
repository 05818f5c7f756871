using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>
/// One pruning method. The decoder calls <see cref="AfterLayer"/> between layers with a view from which
/// the policy pulls just the signals it needs; <see cref="PruningSession"/> does the bookkeeping
/// (what each layer processed, the report) for every policy alike.
/// </summary>
internal interface IPruningPolicy
{
    PruningMethod Method { get; }

    /// <summary>The solved per-layer schedule; AutoPrune's is known only after layer 1.</summary>
    LayerSchedule? Schedule { get; }

    /// <summary>False for policies that never change the sequence inside the decoder (None, VisionZip).</summary>
    bool RunsInDecoder { get; }

    /// <summary>Receives the vision tower's output before the LLM runs.</summary>
    void OnVision(VisionFeatures vision) { }

    /// <summary>
    /// Chooses what of one image enters the LLM (VisionZip, DivPrune): the projected rows and their original patch
    /// indices. Null (the default) lets every visual token in, projected as it is.
    /// </summary>
    /// <param name="project">The model's projector: vision features [rows, visionHidden] to decoder rows.</param>
    PreLlmSelection? SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project) => null;

    /// <summary>Called after decoder layer <c>view.Layer</c>; returns the new sequence or null to keep it.</summary>
    PruneAction? AfterLayer(LayerView view, PruneContext ctx);

    /// <summary>Signals measured while running (e.g. AutoPrune's MI0), merged into the report.</summary>
    IReadOnlyDictionary<string, double> RuntimeSignals { get; }
}

/// <summary>Where the visual and text rows are in the current sequence, and how to rebuild it.</summary>
internal sealed class PruneContext
{
    public required SequenceState State { get; init; }
    public required int Prefix { get; init; }
    public required int VisualCount { get; init; }
    public required ModelShape Shape { get; init; }
    public required PruningOptions Options { get; init; }

    /// <summary>
    /// LLaVA-NeXT only (null otherwise): where each visual patch of the image came from (view, row, column, area in
    /// the original image), which of the image's rows are image_newline tokens, and each view's [CLS] attention.
    /// Rows of the sequence name their patch through <see cref="SequenceState.VisualIndex"/>.
    /// </summary>
    public AnyResTokenMap? TokenMap { get; init; }

    public int TextCount => State.Length - Prefix - VisualCount;
    public int[] VisualRows => Enumerable.Range(Prefix, VisualCount).ToArray();
    public int[] TextRows => Enumerable.Range(Prefix + VisualCount, TextCount).ToArray();
    public int LastRow => State.Length - 1;

    /// <summary>New rows: the prefix, the kept visual rows (in order), merged tokens, then the text.</summary>
    public PruneAction Build(int[] keepLocal, float[]? merged, bool renumber)
    {
        renumber = Options.Positions switch { PrunedPositions.Original => false, PrunedPositions.Contiguous => true, _ => renumber };
        int mergedCount = merged is null ? 0 : merged.Length / Shape.HiddenSize;
        var rows = new int[Prefix + keepLocal.Length + mergedCount + TextCount];
        int o = 0;
        for (int i = 0; i < Prefix; i++) rows[o++] = i;
        foreach (int k in keepLocal) rows[o++] = Prefix + k;
        for (int j = 0; j < mergedCount; j++) rows[o++] = -j - 1;
        for (int i = 0; i < TextCount; i++) rows[o++] = Prefix + VisualCount + i;
        return new PruneAction(rows, merged, renumber);
    }

    /// <summary>Keeps the top <c>step.Kept</c> visual tokens by score and recycles the dropped ones into <c>step.Recycled</c> merged tokens.</summary>
    public PruneAction KeepAndRecycle(float[] scores, PruneStep step) => KeepAndRecycle(TopK.SelectInOrder(scores, step.Kept), scores, step, renumber: true);

    /// <summary>Keeps the visual tokens <paramref name="keep"/> (local, ascending) and recycles the dropped ones, ranked by <paramref name="scores"/>, into <c>step.Recycled</c> merged tokens.</summary>
    public PruneAction KeepAndRecycle(int[] keep, float[] scores, PruneStep step, bool renumber)
    {
        int d = Shape.HiddenSize;
        var kept = new bool[VisualCount];
        foreach (int i in keep) kept[i] = true;
        var dropped = Enumerable.Range(0, VisualCount).Where(i => !kept[i]).ToArray();
        float[]? merged = null;
        if (step.Recycled > 0 && dropped.Length > 0)
        {
            var r = TokenRecycler.Merge(State.Hidden.AsSpan(Prefix * d, VisualCount * d), d, scores, dropped, Options);
            if (r.Groups != step.Recycled)
                throw new InvalidOperationException($"Recycling produced {r.Groups} merged tokens where the schedule expected {step.Recycled}.");
            merged = r.Merged;
        }
        return Build(keep, merged, renumber);
    }

    /// <summary>Local indices (into the visual rows) of the [CLS] tokens ("full" strategy) and of the other visual tokens.</summary>
    public (int[] Cls, int[] Others) SplitCls()
    {
        var vis = State.VisualIndex;
        var rows = Enumerable.Range(0, VisualCount);
        return (rows.Where(i => vis[Prefix + i] == SequenceState.ClsToken).ToArray(), rows.Where(i => vis[Prefix + i] != SequenceState.ClsToken).ToArray());
    }

    /// <summary>Head-averaged attention of the last prompt token over the visual tokens at this layer.</summary>
    public float[] LastTokenVisualAttention(LayerView view)
        => AttentionScores.MeanOverHeadsAndRows(view.AttentionRows([LastRow]), view.Heads, 1, State.Length, VisualRows);
}

/// <summary>Shared shape of the policies whose schedule does not depend on the sample.</summary>
internal abstract class ScheduledPolicy(ModelShape shape, PruningOptions options) : IPruningPolicy
{
    public LayerSchedule? Schedule { get; protected set; } = ScheduleSolver.Solve(shape, options);
    public PruningMethod Method => options.Method;
    public virtual bool RunsInDecoder => true;
    public virtual PreLlmSelection? SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project) => null;
    public virtual IReadOnlyDictionary<string, double> RuntimeSignals { get; } = new Dictionary<string, double>();
    internal PruningOptions Options => options;

    protected PruneStep? StepAt(int layer)
    {
        foreach (var s in Schedule!.Steps)
            if (s.AfterLayer == layer) return s;
        return null;
    }

    public PruneAction? AfterLayer(LayerView view, PruneContext ctx)
        => StepAt(view.Layer) is PruneStep step ? Prune(view, ctx, step) : null;

    protected abstract PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step);
}

/// <summary>The full model.</summary>
internal sealed class NoPruningPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;
}

/// <summary>FastV: one prune at layer K by the last prompt token's attention; original positions kept.</summary>
internal sealed class FastVPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
        => ctx.Build(TopK.SelectInOrder(ctx.LastTokenVisualAttention(view), step.Kept), null, renumber: false);
}

/// <summary>AdaptPrune: attention × Gaussian prior, greedy soft NMS over grid distance and key similarity; original positions kept.</summary>
internal sealed class AdaptPrunePolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var attention = ctx.LastTokenVisualAttention(view);
        // Layer K's key projection (no RoPE) of the hidden states entering layer K, L2-normalised.
        var (_, keys) = view.NextLayerQueryKeys(rope: false);
        int kd = view.KvHeads * view.HeadDim, v = ctx.VisualCount;
        var features = new float[v * kd];
        for (int i = 0; i < v; i++)
        {
            var src = keys.AsSpan((ctx.Prefix + i) * kd, kd);
            float norm = MathF.Sqrt(TensorPrimitives.SumOfSquares<float>(src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, features.AsSpan(i * kd, kd));
        }
        // The grid prior and the spatial NMS need a patch per token: a [CLS] token ("full") has none and is kept.
        var (cls, patches) = ctx.SplitCls();
        if (cls.Length == 0)
            return ctx.Build(AdaptiveNms.Select(attention, features, ctx.Shape.GridSize, step.Kept, Options), null, renumber: false);
        var patchAttention = patches.Select(i => attention[i]).ToArray();
        var patchFeatures = new float[patches.Length * kd];
        for (int j = 0; j < patches.Length; j++) features.AsSpan(patches[j] * kd, kd).CopyTo(patchFeatures.AsSpan(j * kd, kd));
        var chosen = AdaptiveNms.Select(patchAttention, patchFeatures, ctx.Shape.GridSize, step.Kept - cls.Length, Options);
        return ctx.Build([.. cls.Concat(chosen.Select(j => patches[j])).Order()], null, renumber: false);
    }
}

/// <summary>PDrop: at each stage end, score with the next layer's query of the last instruction token; positions renumbered.</summary>
internal sealed class PDropPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        var (q, k) = view.NextLayerQueryKeys(rope: true);
        int n = ctx.State.Length;
        var attn = Compute.Cpu.Attention.Rows(q, k, n, n, view.Heads, view.KvHeads, view.HeadDim, [ctx.LastRow], causal: true);
        var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, 1, n, ctx.VisualRows);
        return ctx.Build(TopK.SelectInOrder(scores, step.Kept), null, renumber: true);
    }
}

/// <summary>SparseVLM: text raters (relevance above the mean) score the visual tokens; dropped ones are recycled.</summary>
internal sealed class SparseVlmPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    public override IReadOnlyDictionary<string, double> RuntimeSignals => _signals;

    protected override PruneAction Prune(LayerView view, PruneContext ctx, PruneStep step)
    {
        int d = ctx.Shape.HiddenSize;
        var text = ctx.TextRows;
        var raters = AttentionScores.SparseVlmRaters(
            ctx.State.Hidden.AsSpan(ctx.Prefix * d, ctx.VisualCount * d), ctx.State.Hidden.AsSpan(text[0] * d, text.Length * d), d);
        if (raters.Length == 0) raters = Enumerable.Range(0, text.Length).ToArray();
        var raterRows = raters.Select(r => text[r]).ToArray();
        var scores = AttentionScores.MeanOverHeadsAndRows(view.AttentionRows(raterRows), view.Heads, raterRows.Length, ctx.State.Length, ctx.VisualRows);
        _signals[$"raters_layer{view.Layer}"] = raters.Length;
        return ctx.KeepAndRecycle(scores, step);
    }
}

/// <summary>VisionZip: dominant + contextual tokens chosen in the vision tower; the decoder runs unchanged on them.</summary>
internal sealed class VisionZipPolicy(ModelShape shape, PruningOptions options) : ScheduledPolicy(shape, options)
{
    public override bool RunsInDecoder => false;
    protected override PruneAction? Prune(LayerView view, PruneContext ctx, PruneStep step) => null;

    public override PreLlmSelection SelectBeforeLlm(VisionFeatures vision, Func<float[], int, float[]> project)
    {
        var zip = Select(vision);
        return new PreLlmSelection(project(zip.Hidden, zip.Count), [.. zip.Dominant, .. Enumerable.Repeat(-2, zip.ContextualTargets.Length)])
        {
            OriginalPositions = Options.Positions == PrunedPositions.Original,
        };
    }

    public VisionZipSelection Select(VisionFeatures vision)
    {
        var step = Schedule!.Steps.Single(s => s.AfterLayer == -1);
        if (vision.ClsAttention is null || vision.PatchKeys is null)
            throw new NotSupportedException("VisionZip needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");
        if (vision.Tokens == vision.Patches)
            return VisionZipSelector.Select(vision.ClsAttention, vision.Heads, vision.PatchKeys, vision.Features, vision.Hidden, step.Kept, step.Recycled);
        // "full": the [CLS] row comes first and is kept as a dominant token; the patches are chosen with the rest of the budget.
        int d = vision.Hidden;
        var patches = VisionZipSelector.Select(vision.ClsAttention, vision.Heads, vision.PatchKeys, vision.Features.AsSpan(d), d, step.Kept - 1, step.Recycled);
        return patches with
        {
            Dominant = [SequenceState.ClsToken, .. patches.Dominant],
            Hidden = [.. vision.Features.AsSpan(0, d), .. patches.Hidden],
        };
    }
}

/// <summary>Creates the policy object for a method.</summary>
internal static class PruningPolicies
{
    public static IPruningPolicy Create(ModelShape shape, PruningOptions options) => options.Method switch
    {
        PruningMethod.None => new NoPruningPolicy(shape, options),
        PruningMethod.FastV => new FastVPolicy(shape, options),
        PruningMethod.AdaptPrune => new AdaptPrunePolicy(shape, options),
        PruningMethod.PDrop => new PDropPolicy(shape, options),
        PruningMethod.SparseVLM => new SparseVlmPolicy(shape, options),
        PruningMethod.VisionZip => new VisionZipPolicy(shape, options),
        PruningMethod.AutoPrune => new AutoPrunePolicy(shape, options),
        PruningMethod.DivPrune => new DivPrunePolicy(shape, options),
        PruningMethod.Dart => new DartPolicy(shape, options),
        _ => throw new ArgumentOutOfRangeException(nameof(options), options.Method, "Unknown pruning method."),
    };
}
