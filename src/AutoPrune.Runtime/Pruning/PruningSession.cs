using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>
/// Runs one pruning policy during one request's prefill. It asks the decoder for exactly the signals its
/// method needs (attention rows of chosen queries, next-layer keys, the vision tower's [CLS] attention),
/// follows the solved per-layer schedule, and records what each layer really processed for the report.
/// </summary>
internal sealed class PruningSession : IPrefillHook
{
    private readonly ModelShape _shape;
    private readonly PruningOptions _options;
    private readonly double _budgetTokens;
    private readonly int _prefix;          // tokens before the image (never pruned)
    private float[]? _clsMean;             // [V] vision [CLS] attention averaged over heads
    private LayerSchedule? _schedule;
    private readonly Dictionary<string, double> _signals = new(StringComparer.Ordinal);
    private readonly int[][] _processedIndices;
    private readonly int[] _processedCounts;

    /// <summary>Solves (or, for AutoPrune, checks) the schedule: an infeasible budget fails here, before any work.</summary>
    public PruningSession(ModelShape shape, PruningOptions options, int prefixTokens)
    {
        _shape = shape;
        _options = options;
        _prefix = prefixTokens;
        _budgetTokens = options.Method == PruningMethod.None ? shape.VisualTokens : Budget.Resolve(options.Budget, shape.VisualTokens);
        _processedIndices = new int[shape.Layers][];
        _processedCounts = new int[shape.Layers];
        if (options.Method == PruningMethod.AutoPrune)
        {
            // Fail fast on an infeasible budget, before any layer runs.
            AutoPruneSchedule.InitialKeep(shape, _budgetTokens, options.Accounting, options);
        }
        else
        {
            // Methods whose schedule does not depend on the sample are solved up front (this also validates the budget).
            _schedule = ScheduleSolver.Solve(shape, options);
        }
    }

    /// <summary>Whether the decoder must call this session between layers (VisionZip prunes before the LLM).</summary>
    public bool NeedsDecoderHook => _options.Method is not (PruningMethod.None or PruningMethod.VisionZip);

    /// <summary>Gives the session the vision tower's signals (AutoPrune uses its [CLS] attention).</summary>
    public void SetVision(VisionFeatures vision)
    {
        if (_options.Method != PruningMethod.AutoPrune) return;
        if (vision.ClsAttention is null)
            throw new NotSupportedException("AutoPrune needs the vision tower's [CLS] attention, but this model's feature layer is the embedding layer.");
        _clsMean = HeadMean(vision.ClsAttention, vision.Heads, vision.Patches);
    }

    /// <summary>The solved schedule (AutoPrune's is known after layer 1).</summary>
    public LayerSchedule? Schedule => _schedule;

    private static float[] HeadMean(float[] perHead, int heads, int cols)
    {
        var r = new float[cols];
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < cols; j++) r[j] += perHead[h * cols + j];
        for (int j = 0; j < cols; j++) r[j] /= heads;
        return r;
    }

    public PruneAction? AfterLayer(LayerView view)
    {
        var st = view.State;
        int layer = view.Layer;
        Record(layer, st);
        int visCount = CountVisual(st);
        var visualRows = Enumerable.Range(_prefix, visCount).ToArray();
        var textRows = Enumerable.Range(_prefix + visCount, st.Length - _prefix - visCount).ToArray();
        int T = textRows.Length;

        switch (_options.Method)
        {
            case PruningMethod.FastV:
            case PruningMethod.AdaptPrune:
            {
                var step = StepAt(layer);
                if (step is null) return null;
                var attn = view.AttentionRows([st.Length - 1]);
                var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, 1, st.Length, visualRows);
                int[] keep;
                if (_options.Method == PruningMethod.FastV)
                    keep = TopK.SelectInOrder(scores, step.Value.Kept);
                else
                {
                    var (_, keys) = view.NextLayerQueryKeys(rope: false);
                    int kd = view.KvHeads * view.HeadDim;
                    var feats = new float[visCount * kd];
                    for (int i = 0; i < visCount; i++)
                    {
                        var src = keys.AsSpan((_prefix + i) * kd, kd);
                        var dst = feats.AsSpan(i * kd, kd);
                        float norm = MathF.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares<float>(src));
                        System.Numerics.Tensors.TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, dst);
                    }
                    keep = AdaptiveNms.Select(scores, feats, _shape.GridSize, step.Value.Kept, _options);
                }
                return Build(st, visCount, keep, null, renumber: false);
            }
            case PruningMethod.PDrop:
            {
                var step = StepAt(layer);
                if (step is null) return null;
                var (q, k) = view.NextLayerQueryKeys(rope: true);
                var attn = Compute.Cpu.Attention.Rows(q, k, st.Length, st.Length, view.Heads, view.KvHeads, view.HeadDim, [st.Length - 1], causal: true);
                var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, 1, st.Length, visualRows);
                return Build(st, visCount, TopK.SelectInOrder(scores, step.Value.Kept), null, renumber: true);
            }
            case PruningMethod.SparseVLM:
            {
                var step = StepAt(layer);
                if (step is null) return null;
                int d = _shape.HiddenSize;
                var raters = AttentionScores.SparseVlmRaters(
                    st.Hidden.AsSpan(_prefix * d, visCount * d), st.Hidden.AsSpan((_prefix + visCount) * d, T * d), d);
                if (raters.Length == 0) raters = Enumerable.Range(0, T).ToArray();
                var raterRows = raters.Select(r => textRows[r]).ToArray();
                var attn = view.AttentionRows(raterRows);
                var scores = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, raterRows.Length, st.Length, visualRows);
                _signals[$"raters_layer{layer}"] = raters.Length;
                return KeepAndRecycle(st, visCount, scores, step.Value);
            }
            case PruningMethod.AutoPrune:
            {
                if (T == 0) throw new InvalidOperationException("AutoPrune needs text tokens after the image.");
                var attn = view.AttentionRows(textRows);
                float mi = MutualInformation.Compute(attn, view.Heads, T, st.Length, visualRows);
                var textMean = AttentionScores.MeanOverHeadsAndRows(attn, view.Heads, T, st.Length, visualRows);
                if (layer == 0)
                {
                    double mi0 = mi / T * 32.0 / view.Heads;
                    _signals["mi0"] = mi0;
                    int n0 = AutoPruneSchedule.InitialKeep(_shape, _budgetTokens, _options.Accounting, _options);
                    var cls = new float[visCount];
                    for (int i = 0; i < visCount; i++) cls[i] = _clsMean![st.VisualIndex[_prefix + i]];
                    var scores = AttentionScores.AutoPrunePreselection(cls, textMean, (float)mi0, _options);
                    return Build(st, visCount, TopK.SelectInOrder(scores, n0), null, renumber: true);
                }
                if (layer == 1)
                    _schedule = ScheduleSolver.Solve(_shape, _options, mi);
                var step = StepAt(layer);
                if (step is null || step.Value.Kept >= visCount) return null;
                return KeepAndRecycle(st, visCount, textMean, step.Value);
            }
            default:
                return null;
        }
    }

    private PruneStep? StepAt(int layer)
    {
        foreach (var s in _schedule!.Steps)
            if (s.AfterLayer == layer) return s;
        return null;
    }

    private PruneAction KeepAndRecycle(SequenceState st, int visCount, float[] scores, PruneStep step)
    {
        int d = _shape.HiddenSize;
        var keep = TopK.SelectInOrder(scores, step.Kept);
        var kept = new bool[visCount];
        foreach (int i in keep) kept[i] = true;
        var dropped = Enumerable.Range(0, visCount).Where(i => !kept[i]).ToArray();
        float[]? merged = null;
        if (step.Recycled > 0 && dropped.Length > 0)
        {
            var r = TokenRecycler.Merge(st.Hidden.AsSpan(_prefix * d, visCount * d), d, scores, dropped, _options);
            merged = r.Merged;
            if (r.Groups != step.Recycled)
                throw new InvalidOperationException($"Recycling produced {r.Groups} merged tokens where the schedule expected {step.Recycled}.");
        }
        return Build(st, visCount, keep, merged, renumber: true);
    }

    /// <summary>New rows: the prefix, the kept visual rows (in order), merged tokens, then the text.</summary>
    private PruneAction Build(SequenceState st, int visCount, int[] keepLocal, float[]? merged, bool renumber)
    {
        int mergedCount = merged is null ? 0 : merged.Length / _shape.HiddenSize;
        int textCount = st.Length - _prefix - visCount;
        var rows = new int[_prefix + keepLocal.Length + mergedCount + textCount];
        int o = 0;
        for (int i = 0; i < _prefix; i++) rows[o++] = i;
        foreach (int k in keepLocal) rows[o++] = _prefix + k;
        for (int j = 0; j < mergedCount; j++) rows[o++] = -j - 1;
        for (int i = 0; i < textCount; i++) rows[o++] = _prefix + visCount + i;
        return new PruneAction(rows, merged, renumber);
    }

    private int CountVisual(SequenceState st)
    {
        int c = 0;
        for (int i = _prefix; i < st.Length && st.VisualIndex[i] != -1; i++) c++;
        return c;
    }

    private void Record(int layer, SequenceState st)
    {
        int vis = CountVisual(st);
        _processedCounts[layer] = vis;
        _processedIndices[layer] = st.VisualIndex.AsSpan(_prefix, vis).ToArray().Where(v => v >= 0).ToArray();
    }

    /// <summary>Records the last layer (which no hook sees) and builds the report, checking reality against the schedule.</summary>
    public PruningReport Finish(SequenceState finalState, int textTokens)
    {
        if (NeedsDecoderHook) Record(_shape.Layers - 1, finalState);
        else for (int l = 0; l < _shape.Layers; l++) Record(l, finalState); // nothing changes inside the decoder
        var schedule = _schedule ?? ScheduleSolver.Unpruned(_shape, _options);
        for (int l = 0; l < _shape.Layers; l++)
            if (_processedCounts[l] != schedule.Processed[l])
                throw new InvalidOperationException(
                    $"Pruning bug: layer {l} processed {_processedCounts[l]} visual tokens, the {schedule.Method} schedule says {schedule.Processed[l]}.");
        return PruningReports.Create(schedule, _shape, _prefix, textTokens, _options.Method == PruningMethod.None ? _shape.VisualTokens : _budgetTokens,
            _processedIndices, _signals);
    }

    /// <summary>VisionZip, before the LLM: the dominant and contextual tokens replace the image's patches.</summary>
    public static VisionZipSelection SelectVisionZip(LayerSchedule schedule, VisionFeatures vision)
    {
        var step = schedule.Steps.Single(s => s.AfterLayer == -1);
        if (vision.ClsAttention is null || vision.PatchKeys is null)
            throw new NotSupportedException("VisionZip needs the vision tower's attention at the feature layer, but this model's feature layer is the embedding layer.");
        if (vision.Tokens != vision.Patches)
            throw new NotSupportedException("VisionZip needs the 'default' feature strategy (patch tokens without [CLS]).");
        return VisionZipSelector.Select(vision.ClsAttention, vision.Heads, vision.PatchKeys, vision.Features, vision.Hidden, step.Kept, step.Recycled);
    }
}
