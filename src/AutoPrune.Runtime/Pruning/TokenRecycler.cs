namespace AutoPrune.Pruning;

/// <summary>Merged tokens from recycling: <see cref="Merged"/> is [groups, dim], one row per group in
/// ascending order of the group centre's row; <see cref="Members"/> are the rows merged into each group.</summary>
internal sealed record RecycleResult(float[] Merged, int Dim, int[] Centres, int[][] Members)
{
    public int Groups => Centres.Length;
}

/// <summary>
/// SparseVLM/AutoPrune recycling: of the dropped tokens take the top fraction (+1) by score, cluster
/// their hidden states with density-peak clustering into floor(n/10)+1 groups, and emit group means.
/// </summary>
internal static class TokenRecycler
{
    /// <param name="hidden">[n, dim] hidden states of the visual tokens entering the prune.</param>
    /// <param name="scores">One score per row of <paramref name="hidden"/>.</param>
    /// <param name="dropped">Rows dropped by the prune.</param>
    public static RecycleResult Merge(ReadOnlySpan<float> hidden, int dim, ReadOnlySpan<float> scores, ReadOnlySpan<int> dropped, PruningOptions options)
    {
        if (dim < 1 || hidden.Length % dim != 0) throw new ArgumentException("hidden must be [n, dim].", nameof(hidden));
        int rows = hidden.Length / dim;
        if (scores.Length != rows) throw new ArgumentException($"Expected {rows} scores, got {scores.Length}.", nameof(scores));
        foreach (int r in dropped)
            if ((uint)r >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(dropped), r, $"Dropped row outside [0, {rows}).");

        int nSel = ScheduleMath.RecycleSelected(dropped.Length, options);
        int groups = ScheduleMath.RecycleGroups(dropped.Length, options);
        if (nSel == 0) return new RecycleResult([], dim, [], []);

        // Top nSel dropped tokens by score, in ascending row order.
        var droppedScores = new float[dropped.Length];
        for (int i = 0; i < dropped.Length; i++) droppedScores[i] = scores[dropped[i]];
        var pick = TopK.SelectInOrder(droppedScores, nSel);
        var sel = new int[nSel];
        for (int i = 0; i < nSel; i++) sel[i] = dropped[pick[i]];
        Array.Sort(sel);

        var cluster = DensityPeakClustering(hidden, dim, sel, groups, options.RecycleDensityNeighbours, out var centres);

        var merged = new float[centres.Length * dim];
        var members = new int[centres.Length][];
        for (int gi = 0; gi < centres.Length; gi++)
        {
            var m = new List<int>();
            for (int i = 0; i < sel.Length; i++) if (cluster[i] == gi) m.Add(sel[i]);
            members[gi] = m.ToArray();
            var acc = new double[dim];
            foreach (int r in m)
                for (int t = 0; t < dim; t++) acc[t] += hidden[r * dim + t];
            for (int t = 0; t < dim; t++) merged[gi * dim + t] = (float)(acc[t] / m.Count);
        }
        var centreRows = new int[centres.Length];
        for (int gi = 0; gi < centres.Length; gi++) centreRows[gi] = sel[centres[gi]];
        return new RecycleResult(merged, dim, centreRows, members);
    }

    /// <summary>
    /// Density-peak clustering (DPC-kNN) of the rows <paramref name="sel"/>: distance = Euclidean / sqrt(dim);
    /// density = exp(-mean squared distance to the k nearest others); delta = distance to the nearest denser
    /// point (the densest takes its largest distance); the <paramref name="groups"/> largest density*delta
    /// are centres (ordered by position in <paramref name="sel"/>); every point joins its nearest centre.
    /// Ties break towards the lower index, so the result is deterministic.
    /// </summary>
    /// <returns>Cluster id (index into <paramref name="centres"/>) of each selected point.</returns>
    internal static int[] DensityPeakClustering(ReadOnlySpan<float> hidden, int dim, int[] sel, int groups, int neighbours, out int[] centres)
    {
        int n = sel.Length;
        groups = Math.Clamp(groups, 1, n);
        var dist = new double[n, n];
        double scale = 1.0 / Math.Sqrt(dim);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                double s = 0;
                var a = hidden.Slice(sel[i] * dim, dim);
                var b = hidden.Slice(sel[j] * dim, dim);
                for (int t = 0; t < dim; t++) { double d = (double)a[t] - b[t]; s += d * d; }
                dist[i, j] = dist[j, i] = Math.Sqrt(s) * scale;
            }

        int kk = Math.Min(Math.Max(1, neighbours), n - 1);
        var density = new double[n];
        var row = new double[n - 1 > 0 ? n - 1 : 0];
        for (int i = 0; i < n; i++)
        {
            if (kk == 0) { density[i] = 1; continue; }
            int w = 0;
            for (int j = 0; j < n; j++) if (j != i) row[w++] = dist[i, j];
            Array.Sort(row);
            double m = 0;
            for (int q = 0; q < kk; q++) m += row[q] * row[q];
            density[i] = Math.Exp(-m / kk);
        }

        bool Denser(int j, int i) => density[j] > density[i] || (density[j] == density[i] && j < i);
        var delta = new double[n];
        for (int i = 0; i < n; i++)
        {
            double best = double.PositiveInfinity, far = 0;
            for (int j = 0; j < n; j++)
            {
                if (j == i) continue;
                far = Math.Max(far, dist[i, j]);
                if (Denser(j, i)) best = Math.Min(best, dist[i, j]);
            }
            delta[i] = double.IsPositiveInfinity(best) ? far : best;
        }

        var gamma = new float[n];
        for (int i = 0; i < n; i++) gamma[i] = (float)(density[i] * delta[i]);
        centres = TopK.SelectInOrder(gamma, groups);

        var assign = new int[n];
        var isCentre = new int[n];
        Array.Fill(isCentre, -1);
        for (int c = 0; c < centres.Length; c++) isCentre[centres[c]] = c;
        for (int i = 0; i < n; i++)
        {
            if (isCentre[i] >= 0) { assign[i] = isCentre[i]; continue; }
            int best = 0;
            for (int c = 1; c < centres.Length; c++)
                if (dist[i, centres[c]] < dist[i, centres[best]]) best = c;
            assign[i] = best;
        }
        return assign;
    }
}
