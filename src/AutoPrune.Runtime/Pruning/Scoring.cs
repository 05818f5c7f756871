namespace AutoPrune.Pruning;

/// <summary>Top-k selection that keeps the original order.</summary>
internal static class TopK
{
    /// <summary>
    /// Indices of the <paramref name="k"/> largest scores, returned ascending. Ties go to the lower index;
    /// NaN ranks below every number. k is clamped to [0, n].
    /// </summary>
    public static int[] SelectInOrder(ReadOnlySpan<float> scores, int k)
    {
        int n = scores.Length;
        k = Math.Clamp(k, 0, n);
        if (k == 0) return [];
        if (k == n) return Enumerable.Range(0, n).ToArray();
        var order = RankDescending(scores);
        var kept = order.AsSpan(0, k).ToArray();
        Array.Sort(kept);
        return kept;
    }

    /// <summary>All indices ordered by score descending, ties by lower index, NaN last.</summary>
    public static int[] RankDescending(ReadOnlySpan<float> scores)
    {
        var keys = new float[scores.Length];
        var nan = new bool[scores.Length];
        var order = new int[scores.Length];
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
            nan[i] = float.IsNaN(scores[i]);
            keys[i] = nan[i] ? float.NegativeInfinity : scores[i];
        }
        Array.Sort(order, (a, b) =>
        {
            int c = keys[b].CompareTo(keys[a]);
            if (c != 0) return c;
            if (nan[a] != nan[b]) return nan[a] ? 1 : -1;
            return a.CompareTo(b);
        });
        return order;
    }
}

/// <summary>Mutual information between text rows and visual columns of one layer's attention (spec, AutoPrune step 2).</summary>
internal static class MutualInformation
{
    /// <summary>
    /// MI summed over heads. <paramref name="attn"/> is [heads, T, keys]: softmax probabilities of the T
    /// text rows over all keys (not renormalised over the visual columns). Per head: p(x) = 1/T,
    /// p(x,y) = a[x,y]/T, p(y) = sum_x p(x,y), MI = sum p(x,y) log2(max(p(x,y) / (p(x)p(y) + 1e-6), 1e-6)),
    /// with y over <paramref name="visualColumns"/>. Computed in fp32.
    /// </summary>
    public static float Compute(ReadOnlySpan<float> attn, int heads, int T, int keys, ReadOnlySpan<int> visualColumns)
        => ComputeWithBound(attn, heads, T, keys, visualColumns).Mi;

    /// <summary>
    /// <see cref="Compute"/> and its largest possible value for this attention mass: per head, MI &lt;= m_h log2 T where
    /// m_h = sum over text rows and visual columns of p(x,y) is the head's attention mass on the visual columns (the
    /// bound is reached when every text row looks at its own columns). <c>Mi / Bound</c> is a scale-free "how focused"
    /// in [0, 1] that does not grow with the question's length or the number of heads.
    /// </summary>
    public static (float Mi, float Bound) ComputeWithBound(ReadOnlySpan<float> attn, int heads, int T, int keys, ReadOnlySpan<int> visualColumns)
    {
        if (heads < 1 || T < 1 || keys < 1) throw new ArgumentOutOfRangeException(nameof(heads), "heads, T and keys must be positive.");
        if (attn.Length != heads * T * keys)
            throw new ArgumentException($"Attention has {attn.Length} values; expected heads*T*keys = {heads}*{T}*{keys}.", nameof(attn));
        foreach (int y in visualColumns)
            if ((uint)y >= (uint)keys) throw new ArgumentOutOfRangeException(nameof(visualColumns), y, $"Visual column outside [0, {keys}).");

        float invT = 1f / T;
        float px = invT;
        var py = new float[visualColumns.Length];
        float total = 0f, bound = 0f, log2T = MathF.Log2(T);
        for (int h = 0; h < heads; h++)
        {
            var head = attn.Slice(h * T * keys, T * keys);
            Array.Clear(py);
            for (int x = 0; x < T; x++)
            {
                var row = head.Slice(x * keys, keys);
                for (int j = 0; j < visualColumns.Length; j++) py[j] += row[visualColumns[j]] * invT;
            }
            float mass = 0f;
            foreach (float p in py) mass += p;
            bound += mass * log2T;
            float mi = 0f;
            for (int x = 0; x < T; x++)
            {
                var row = head.Slice(x * keys, keys);
                for (int j = 0; j < visualColumns.Length; j++)
                {
                    float pxy = row[visualColumns[j]] * invT;
                    if (pxy <= 0f) continue;
                    float ratio = MathF.Max(pxy / (px * py[j] + 1e-6f), 1e-6f);
                    mi += pxy * MathF.Log2(ratio);
                }
            }
            total += mi;
        }
        return (total, bound);
    }
}

/// <summary>Attention reductions used by the scoring layers.</summary>
internal static class AttentionScores
{
    /// <summary>Mean over heads and rows of attn[heads, rows, keys] at <paramref name="columns"/>.</summary>
    public static float[] MeanOverHeadsAndRows(ReadOnlySpan<float> attn, int heads, int rows, int keys, ReadOnlySpan<int> columns)
    {
        if (attn.Length != heads * rows * keys)
            throw new ArgumentException($"Attention has {attn.Length} values; expected heads*rows*keys = {heads}*{rows}*{keys}.", nameof(attn));
        var result = new float[columns.Length];
        for (int hr = 0; hr < heads * rows; hr++)
        {
            var row = attn.Slice(hr * keys, keys);
            for (int j = 0; j < columns.Length; j++) result[j] += row[columns[j]];
        }
        float inv = 1f / (heads * rows);
        for (int j = 0; j < result.Length; j++) result[j] *= inv;
        return result;
    }

    /// <summary>
    /// AutoPrune layer-0 pre-selection score: cls(v) + w * MI0 * textMean(v), with MI0 already summed over
    /// heads and divided by T, w = <see cref="PruningOptions.AutoPruneTextWeight"/>.
    /// </summary>
    public static float[] AutoPrunePreselection(ReadOnlySpan<float> cls, ReadOnlySpan<float> textMean, float mi0, PruningOptions options)
    {
        if (cls.Length != textMean.Length) throw new ArgumentException("cls and text scores must have one value per visual token.", nameof(textMean));
        var s = new float[cls.Length];
        float w = (float)options.AutoPruneTextWeight * mi0;
        for (int v = 0; v < s.Length; v++) s[v] = cls[v] + w * textMean[v];
        return s;
    }

    /// <summary>
    /// SparseVLM raters: text tokens whose relevance (mean over visual tokens of softmax over text of
    /// visual . text^T) is above the mean relevance. <paramref name="visual"/> is [V, d], <paramref name="text"/> [T, d].
    /// Returns ascending text indices; all of them when every relevance is equal.
    /// </summary>
    public static int[] SparseVlmRaters(ReadOnlySpan<float> visual, ReadOnlySpan<float> text, int dim)
    {
        if (dim < 1 || visual.Length % dim != 0 || text.Length % dim != 0) throw new ArgumentException("Feature arrays must be [n, dim].", nameof(dim));
        int V = visual.Length / dim, T = text.Length / dim;
        if (T == 0) return [];
        var relevance = new double[T];
        var logits = new double[T];
        for (int v = 0; v < V; v++)
        {
            var vr = visual.Slice(v * dim, dim);
            double max = double.NegativeInfinity;
            for (int t = 0; t < T; t++)
            {
                double dot = 0;
                var tr = text.Slice(t * dim, dim);
                for (int i = 0; i < dim; i++) dot += (double)vr[i] * tr[i];
                logits[t] = dot;
                max = Math.Max(max, dot);
            }
            double z = 0;
            for (int t = 0; t < T; t++) z += logits[t] = Math.Exp(logits[t] - max);
            for (int t = 0; t < T; t++) relevance[t] += logits[t] / z / V;
        }
        double mean = relevance.Average();
        var raters = Enumerable.Range(0, T).Where(t => relevance[t] > mean + 1e-12).ToArray();
        return raters.Length > 0 ? raters : Enumerable.Range(0, T).ToArray();
    }
}
