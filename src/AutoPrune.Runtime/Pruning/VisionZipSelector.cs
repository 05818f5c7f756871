namespace AutoPrune.Pruning;

/// <summary>VisionZip output: <see cref="Hidden"/> is [(D + C), dim]: the dominant rows in original order, then the contextual tokens.</summary>
internal sealed record VisionZipSelection(int[] Dominant, int[] ContextualTargets, int[][] ContextualMembers, float[] Hidden, int Dim)
{
    public int Count => Dominant.Length + ContextualTargets.Length;
}

/// <summary>VisionZip's dominant + contextual token selection before the LLM (spec).</summary>
internal static class VisionZipSelector
{
    /// <param name="clsAttention">[heads, V]: the vision tower's [CLS] row to the patches at the feature layer.</param>
    /// <param name="keys">[V, dk]: the vision keys at the feature layer (cosine similarity).</param>
    /// <param name="hidden">[V, dim]: the visual tokens to emit/merge (projected features).</param>
    public static VisionZipSelection Select(ReadOnlySpan<float> clsAttention, int heads, ReadOnlySpan<float> keys, ReadOnlySpan<float> hidden, int dim, int dominant, int contextual)
    {
        if (heads < 1 || clsAttention.Length % heads != 0) throw new ArgumentException("clsAttention must be [heads, V].", nameof(clsAttention));
        int V = clsAttention.Length / heads;
        if (keys.Length == 0 || keys.Length % V != 0) throw new ArgumentException($"keys must be [V, dk] with V = {V}.", nameof(keys));
        if (hidden.Length != V * dim) throw new ArgumentException($"hidden must be [V, dim] = [{V}, {dim}].", nameof(hidden));
        int dk = keys.Length / V;
        dominant = Math.Clamp(dominant, 0, V);

        var score = new float[V];
        for (int h = 0; h < heads; h++)
            for (int v = 0; v < V; v++) score[v] += clsAttention[h * V + v];
        var dom = TopK.SelectInOrder(score, dominant);

        var isDom = new bool[V];
        foreach (int v in dom) isDom[v] = true;
        var rest = Enumerable.Range(0, V).Where(v => !isDom[v]).ToArray();
        int c = Math.Clamp(contextual, 0, rest.Length);

        var targets = new int[c];
        var members = new int[c][];
        var output = new float[(dom.Length + c) * dim];
        for (int i = 0; i < dom.Length; i++) hidden.Slice(dom[i] * dim, dim).CopyTo(output.AsSpan(i * dim, dim));
        if (c > 0)
        {
            int step = Math.Max(1, rest.Length / c);
            var isTarget = new bool[V];
            for (int i = 0; i < c; i++) { targets[i] = rest[i * step]; isTarget[targets[i]] = true; }

            var norm = new double[V];
            foreach (int v in rest)
            {
                double s = 0;
                for (int t = 0; t < dk; t++) s += (double)keys[v * dk + t] * keys[v * dk + t];
                norm[v] = Math.Max(Math.Sqrt(s), 1e-12);
            }
            var lists = Enumerable.Range(0, c).Select(_ => new List<int>()).ToArray();
            foreach (int v in rest)
            {
                if (isTarget[v]) continue;
                int best = 0;
                double bestSim = double.NegativeInfinity;
                for (int i = 0; i < c; i++)
                {
                    double s = 0;
                    int t0 = targets[i];
                    for (int t = 0; t < dk; t++) s += (double)keys[v * dk + t] * keys[t0 * dk + t];
                    s /= norm[v] * norm[t0];
                    if (s > bestSim) { bestSim = s; best = i; }
                }
                lists[best].Add(v);
            }
            for (int i = 0; i < c; i++)
            {
                members[i] = lists[i].ToArray();
                var dst = output.AsSpan((dom.Length + i) * dim, dim);
                var acc = new double[dim];
                foreach (int v in members[i])
                    for (int t = 0; t < dim; t++) acc[t] += hidden[v * dim + t];
                int count = Math.Max(1, members[i].Length);
                for (int t = 0; t < dim; t++)
                    dst[t] = (float)(hidden[targets[i] * dim + t] + (members[i].Length == 0 ? 0 : acc[t] / count));
            }
        }
        return new VisionZipSelection(dom, targets, members, output, dim);
    }
}
