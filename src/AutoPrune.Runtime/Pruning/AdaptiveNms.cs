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
        var grid = new int[V];
        for (int i = 0; i < V; i++) grid[i] = i;
        return CoverageNms.Select(s, features, D, grid, g, k, strength: 1,
            options.AdaptPruneDistanceLimit, options.AdaptPruneDistanceSigma, options.AdaptPruneSimilaritySigma);
    }
}
