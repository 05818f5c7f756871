namespace AutoPrune.Pruning;

/// <summary>
/// Greedy soft non-maximum suppression over the patch grid: pick the highest-scoring token, then damp the scores of
/// the tokens near it that look like it, so that every distinct region keeps a token before any region keeps many.
/// A neighbour j of a pick i (grid distance d &lt;= limit) is multiplied by
/// <c>1 - strength * exp(-d^2 / (2 sigmaD^2)) * exp(-(1 - cos(f_i, f_j))^2 / (2 sigmaS^2))</c>: only tokens both close
/// and near-duplicates are suppressed strongly. AdaptPrune's selection is this with strength 1 on the full grid;
/// AutoPrune's coverage term uses it on whatever tokens are left.
/// </summary>
internal static class CoverageNms
{
    /// <param name="scores">One score per candidate (higher is better); modified copy is used internally.</param>
    /// <param name="unitFeatures">[n, dim] L2-normalised features of the candidates.</param>
    /// <param name="gridIndex">Each candidate's patch index (row * g + col) on the g x g grid, or a negative value for a
    /// candidate without a place (a merged token): it neither suppresses nor is suppressed.</param>
    /// <returns>The <paramref name="k"/> selected candidates, ascending.</returns>
    public static int[] Select(ReadOnlySpan<float> scores, ReadOnlySpan<float> unitFeatures, int dim, ReadOnlySpan<int> gridIndex, int g, int k,
        double strength, double distanceLimit, double distanceSigma, double similaritySigma)
    {
        int n = scores.Length;
        if (gridIndex.Length != n) throw new ArgumentException($"Expected {n} grid indices, got {gridIndex.Length}.", nameof(gridIndex));
        if (dim < 1 || unitFeatures.Length != n * dim) throw new ArgumentException($"Features must be [{n}, dim]; got {unitFeatures.Length} values.", nameof(unitFeatures));
        if (g < 1) throw new ArgumentOutOfRangeException(nameof(g));
        k = Math.Clamp(k, 0, n);
        var s = scores.ToArray();
        // Which candidate sits on each grid cell (-1: none).
        var at = new int[g * g];
        Array.Fill(at, -1);
        for (int i = 0; i < n; i++)
        {
            int p = gridIndex[i];
            if (p >= 0)
            {
                if (p >= g * g) throw new ArgumentOutOfRangeException(nameof(gridIndex), p, $"Patch index outside the {g}x{g} grid.");
                if (at[p] >= 0) throw new ArgumentException($"Two candidates on patch {p}.", nameof(gridIndex));
                at[p] = i;
            }
        }

        var kept = new bool[n];
        var result = new int[k];
        int limit = (int)Math.Floor(distanceLimit);
        double limit2 = distanceLimit * distanceLimit;
        double twoSigmaD2 = 2 * distanceSigma * distanceSigma;
        double twoSigmaS2 = 2 * similaritySigma * similaritySigma;

        for (int m = 0; m < k; m++)
        {
            int best = TakeBest(s, kept);
            result[m] = best;
            int p = gridIndex[best];
            if (p < 0 || strength == 0) continue;

            int ri = p / g, ci = p % g;
            var fi = unitFeatures.Slice(best * dim, dim);
            for (int r = Math.Max(0, ri - limit); r <= Math.Min(g - 1, ri + limit); r++)
                for (int c = Math.Max(0, ci - limit); c <= Math.Min(g - 1, ci + limit); c++)
                {
                    int j = at[r * g + c];
                    if (j < 0 || kept[j]) continue;
                    double d2 = (r - ri) * (r - ri) + (c - ci) * (c - ci);
                    if (d2 > limit2) continue;
                    s[j] = (float)(s[j] * Factor(fi, unitFeatures.Slice(j * dim, dim), d2, strength, twoSigmaD2, twoSigmaS2));
                }
        }
        Array.Sort(result);
        return result;
    }

    /// <summary>
    /// The same suppression for tokens placed anywhere in an image (a LLaVA-NeXT image's base view and tiles):
    /// <paramref name="patches"/> names each candidate's patch in <paramref name="geometry"/> (negative: no place), and the
    /// distance from a pick i to a candidate j is measured in i's own patch size,
    /// d² = ((x_j - x_i) / w_i)² + ((y_j - y_i) / h_i)². Ties go to the lower index, as on the grid.
    /// </summary>
    public static int[] Select(ReadOnlySpan<float> scores, ReadOnlySpan<float> unitFeatures, int dim, ReadOnlySpan<int> patches,
        VisualGeometry geometry, int k, double strength, double distanceLimit, double distanceSigma, double similaritySigma)
    {
        int n = scores.Length;
        if (patches.Length != n) throw new ArgumentException($"Expected {n} patch indices, got {patches.Length}.", nameof(patches));
        if (dim < 1 || unitFeatures.Length != n * dim) throw new ArgumentException($"Features must be [{n}, dim]; got {unitFeatures.Length} values.", nameof(unitFeatures));
        k = Math.Clamp(k, 0, n);
        var s = scores.ToArray();
        var kept = new bool[n];
        var result = new int[k];
        double limit2 = distanceLimit * distanceLimit;
        double twoSigmaD2 = 2 * distanceSigma * distanceSigma;
        double twoSigmaS2 = 2 * similaritySigma * similaritySigma;
        for (int m = 0; m < k; m++)
        {
            int best = TakeBest(s, kept);
            result[m] = best;
            int p = patches[best];
            if (p < 0 || strength == 0) continue;
            double xi = geometry.X[p], yi = geometry.Y[p], wi = geometry.W[p], hi = geometry.H[p];
            var fi = unitFeatures.Slice(best * dim, dim);
            for (int j = 0; j < n; j++)
            {
                int q = patches[j];
                if (q < 0 || kept[j]) continue;
                double dx = (geometry.X[q] - xi) / wi, dy = (geometry.Y[q] - yi) / hi;
                double d2 = dx * dx + dy * dy;
                if (d2 > limit2 + 1e-9) continue;
                s[j] = (float)(s[j] * Factor(fi, unitFeatures.Slice(j * dim, dim), d2, strength, twoSigmaD2, twoSigmaS2));
            }
        }
        Array.Sort(result);
        return result;
    }

    /// <summary>Rows of <paramref name="features"/> ([n, dim]) scaled to unit length (zero rows stay zero).</summary>
    public static float[] Normalize(ReadOnlySpan<float> features, int dim)
    {
        int n = features.Length / dim;
        var unit = new float[n * dim];
        for (int i = 0; i < n; i++)
        {
            var src = features.Slice(i * dim, dim);
            float norm = MathF.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares(src));
            System.Numerics.Tensors.TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, unit.AsSpan(i * dim, dim));
        }
        return unit;
    }

    /// <summary>
    /// The damping of a candidate with unit features <paramref name="fj"/> at squared distance <paramref name="d2"/> from a
    /// pick with <paramref name="fi"/>: 1 - strength·exp(-d²/(2σd²))·exp(-(1 - cos)²/(2σs²)), the cosine summed in double.
    /// </summary>
    private static double Factor(ReadOnlySpan<float> fi, ReadOnlySpan<float> fj, double d2, double strength, double twoSigmaD2, double twoSigmaS2)
    {
        double cos = 0;
        for (int t = 0; t < fi.Length; t++) cos += (double)fi[t] * fj[t];
        double dissim = 1 - cos;
        return 1 - strength * Math.Exp(-d2 / twoSigmaD2) * Math.Exp(-dissim * dissim / twoSigmaS2);
    }

    /// <summary>The best not-yet-kept candidate by score (NaN lowest, ties to the lower index), now kept.</summary>
    private static int TakeBest(float[] s, bool[] kept)
    {
        int best = -1;
        for (int j = 0; j < s.Length; j++)
        {
            if (kept[j]) continue;
            if (best < 0 || Greater(s[j], s[best])) best = j;
        }
        kept[best] = true;
        return best;
    }

    // NaN ranks lowest; equal scores keep the lower index (the caller scans ascending).
    private static bool Greater(float a, float b) => !float.IsNaN(a) && (float.IsNaN(b) || a > b);
}
