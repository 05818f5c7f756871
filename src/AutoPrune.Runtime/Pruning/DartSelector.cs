using System.Numerics.Tensors;

namespace AutoPrune.Pruning;

/// <summary>
/// DART's selection (spec): pivots are the visual and the text tokens with the largest L1 norm of their key; for
/// each pivot in turn, keep the not-yet-kept visual tokens least similar (cosine, on the final-norm hidden states)
/// to it. Attention-free.
/// </summary>
internal static class DartSelector
{
    /// <param name="visualKeyNorms">L1 norm of each visual token's key at the layer before the prune.</param>
    /// <param name="textKeyNorms">L1 norm of each text token's (after the image) key.</param>
    /// <param name="visualHidden">[V, dim]: the visual tokens' hidden states after the model's final RMSNorm.</param>
    /// <param name="textHidden">[T, dim]: the text tokens' hidden states after the final RMSNorm.</param>
    /// <param name="k">Visual tokens to keep (the visual pivots included).</param>
    /// <param name="visualPivots">Visual pivots (spec: 4).</param>
    /// <param name="textPivots">Text pivots (spec: 4).</param>
    /// <returns>The kept visual tokens, ascending; exactly <paramref name="k"/> (clamped to [0, V]).</returns>
    public static int[] Select(ReadOnlySpan<float> visualKeyNorms, ReadOnlySpan<float> textKeyNorms, ReadOnlySpan<float> visualHidden,
        ReadOnlySpan<float> textHidden, int dim, int k, int visualPivots = 4, int textPivots = 4)
    {
        int V = visualKeyNorms.Length, T = textKeyNorms.Length;
        if (dim < 1 || visualHidden.Length != V * dim) throw new ArgumentException($"visualHidden must be [{V}, {dim}].", nameof(visualHidden));
        if (textHidden.Length != T * dim) throw new ArgumentException($"textHidden must be [{T}, {dim}].", nameof(textHidden));
        k = Math.Clamp(k, 0, V);
        if (k == 0) return [];
        if (k == V) return Enumerable.Range(0, V).ToArray();

        int pv = Math.Min(Math.Max(0, visualPivots), k), pt = Math.Min(Math.Max(0, textPivots), T);
        var vPiv = TopK.RankDescending(visualKeyNorms)[..pv];
        var tPiv = pt == 0 ? [] : TopK.RankDescending(textKeyNorms)[..pt];
        var kept = new bool[V];
        int count = 0;
        foreach (int p in vPiv) { kept[p] = true; count++; }

        // Pivot hidden states in turn: visual pivots (largest norm first), then text pivots.
        var pivots = new List<float[]>(pv + pt);
        foreach (int p in vPiv) pivots.Add(visualHidden.Slice(p * dim, dim).ToArray());
        foreach (int p in tPiv) pivots.Add(textHidden.Slice(p * dim, dim).ToArray());
        if (pivots.Count == 0) return TopK.SelectInOrder(visualKeyNorms, k);

        var norms = new float[V];
        for (int i = 0; i < V; i++) norms[i] = MathF.Sqrt(TensorPrimitives.SumOfSquares(visualHidden.Slice(i * dim, dim)));
        int quota = (k - pv) / pivots.Count;
        var similarity = new float[V];
        for (int pi = 0; pi < pivots.Count; pi++)
        {
            bool last = pi == pivots.Count - 1;
            int take = last ? k - count : quota; // the last pivot also fills what rounding left over
            if (take <= 0) continue;
            Similarities(pivots[pi], visualHidden, norms, dim, similarity);
            // Least similar first = largest negated similarity; kept tokens rank last.
            for (int i = 0; i < V; i++) similarity[i] = kept[i] ? float.NegativeInfinity : -similarity[i];
            var order = TopK.RankDescending(similarity);
            for (int i = 0, taken = 0; i < V && taken < take; i++)
            {
                int v = order[i];
                if (kept[v]) continue;
                kept[v] = true;
                count++;
                taken++;
            }
        }
        var result = new int[count];
        for (int i = 0, o = 0; i < V; i++) if (kept[i]) result[o++] = i;
        return result;
    }

    private static void Similarities(float[] pivot, ReadOnlySpan<float> hidden, float[] norms, int dim, Span<float> result)
    {
        float pn = MathF.Sqrt(TensorPrimitives.SumOfSquares<float>(pivot));
        for (int i = 0; i < norms.Length; i++)
        {
            float denom = pn * norms[i];
            result[i] = denom > 0 ? TensorPrimitives.Dot(pivot, hidden.Slice(i * dim, dim)) / denom : 0f;
        }
    }
}
