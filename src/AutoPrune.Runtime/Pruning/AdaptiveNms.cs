namespace AutoPrune.Pruning;

/// <summary>AdaptPrune's selection: attention x Gaussian positional prior, then greedy soft NMS over
/// grid distance and key-feature similarity (spec, AdaptPrune steps 2-5).</summary>
internal static class AdaptiveNms
{
    /// <summary>
    /// Centred Gaussian on the g x g grid, G(r,c) = exp(-(x_r^2 + y_c^2) / (2 sigma_p^2)) with x, y evenly
    /// spaced on [-g/2, g/2] and sigma_p = factor * g, normalised to max 1 (row-major).
    /// </summary>
    public static float[] PositionalPrior(int g, double sigmaFactor)
    {
        if (g < 1) throw new ArgumentOutOfRangeException(nameof(g));
        double sigma = sigmaFactor * g;
        var coord = new double[g];
        for (int i = 0; i < g; i++) coord[i] = g == 1 ? 0 : -g / 2.0 + i * (double)g / (g - 1);
        var prior = new double[g * g];
        double max = 0;
        for (int r = 0; r < g; r++)
            for (int c = 0; c < g; c++)
            {
                double v = Math.Exp(-(coord[r] * coord[r] + coord[c] * coord[c]) / (2 * sigma * sigma));
                prior[r * g + c] = v;
                max = Math.Max(max, v);
            }
        var result = new float[g * g];
        for (int i = 0; i < result.Length; i++) result[i] = (float)(prior[i] / max);
        return result;
    }

    /// <summary>
    /// Selects <paramref name="k"/> visual tokens. <paramref name="attn"/>: last prompt token's attention
    /// over the V = g*g visual tokens (head-averaged); <paramref name="features"/>: [V, D] L2-normalised key
    /// features. Returns ascending indices. O(k*V) plus O(k * neighbourhood * D).
    /// </summary>
    public static int[] Select(ReadOnlySpan<float> attn, ReadOnlySpan<float> features, int g, int k, PruningOptions options)
    {
        int V = g * g;
        if (attn.Length != V) throw new ArgumentException($"Expected {V} attention values for a {g}x{g} grid, got {attn.Length}.", nameof(attn));
        if (features.Length == 0 || features.Length % V != 0)
            throw new ArgumentException($"Features must be [V, D] with V = {V}; got {features.Length} values.", nameof(features));
        int D = features.Length / V;
        k = Math.Clamp(k, 0, V);

        var prior = PositionalPrior(g, options.AdaptPruneSigmaPFactor);
        var s = new float[V];
        for (int i = 0; i < V; i++) s[i] = attn[i] * prior[i];

        var kept = new bool[V];
        var result = new int[k];
        int limit = (int)Math.Floor(options.AdaptPruneDistanceLimit);
        double limit2 = options.AdaptPruneDistanceLimit * options.AdaptPruneDistanceLimit;
        double twoSigmaD2 = 2 * options.AdaptPruneDistanceSigma * options.AdaptPruneDistanceSigma;
        double twoSigmaS2 = 2 * options.AdaptPruneSimilaritySigma * options.AdaptPruneSimilaritySigma;

        for (int n = 0; n < k; n++)
        {
            int best = -1;
            for (int j = 0; j < V; j++)
            {
                if (kept[j]) continue;
                if (best < 0 || Greater(s[j], s[best])) best = j;
            }
            kept[best] = true;
            result[n] = best;

            int ri = best / g, ci = best % g;
            var fi = features.Slice(best * D, D);
            for (int r = Math.Max(0, ri - limit); r <= Math.Min(g - 1, ri + limit); r++)
                for (int c = Math.Max(0, ci - limit); c <= Math.Min(g - 1, ci + limit); c++)
                {
                    int j = r * g + c;
                    if (kept[j]) continue;
                    double d2 = (r - ri) * (r - ri) + (c - ci) * (c - ci);
                    if (d2 > limit2) continue;
                    var fj = features.Slice(j * D, D);
                    double cos = 0;
                    for (int t = 0; t < D; t++) cos += (double)fi[t] * fj[t];
                    double dissim = 1 - cos;
                    double factor = 1 - Math.Exp(-d2 / twoSigmaD2) * Math.Exp(-dissim * dissim / twoSigmaS2);
                    s[j] = (float)(s[j] * factor);
                }
        }
        Array.Sort(result);
        return result;
    }

    // NaN ranks lowest; equal scores keep the lower index (the caller scans ascending).
    private static bool Greater(float a, float b) => !float.IsNaN(a) && (float.IsNaN(b) || a > b);
}
