using AutoPrune.Compute;
using System.Numerics.Tensors;

namespace AutoPrune.Pruning;

/// <summary>How a selection of k tokens is shared among a LLaVA-NeXT image's views under <see cref="BudgetScope.PerView"/>.</summary>
internal static class ViewQuotas
{
    /// <summary>
    /// Candidates by group: one group per view (by their patches' views), then one for tokens without a patch (merged).
    /// <paramref name="patches"/> gives each candidate's patch (negative: none).
    /// </summary>
    public static int[][] Groups(int[] patches, VisualTokenMap map, int views)
    {
        var lists = Enumerable.Range(0, views + 1).Select(_ => new List<int>()).ToArray();
        for (int i = 0; i < patches.Length; i++) lists[patches[i] >= 0 ? map.Tokens[patches[i]].View : views].Add(i);
        return lists.Select(l => l.ToArray()).ToArray();
    }

    /// <summary>
    /// Quotas summing to k (at most the candidates): the last group (merged tokens) keeps its proportional share of the
    /// candidates, rounded; the views share the rest by <paramref name="shares"/>, never more than a view has.
    /// </summary>
    public static int[] ForGroups(int k, int[][] groups, double[] shares)
    {
        int total = groups.Sum(g => g.Length);
        k = Math.Clamp(k, 0, total);
        int merged = groups[^1].Length;
        int mergedQuota = merged == 0 ? 0 : Math.Clamp((int)Math.Round((double)k * merged / total, MidpointRounding.AwayFromZero), 0, merged);
        int viewTotal = groups.Length - 1;
        // The views must be able to take the rest.
        int viewCapacity = total - merged;
        if (k - mergedQuota > viewCapacity) mergedQuota = k - viewCapacity;
        var caps = groups.Take(viewTotal).Select(g => g.Length).ToArray();
        var quotas = Apportion(k - mergedQuota, shares, caps);
        return [.. quotas, mergedQuota];
    }

    /// <summary>
    /// Splits <paramref name="total"/> among groups in proportion to <paramref name="weights"/>, no group above its cap:
    /// groups whose share reaches their cap get the cap and the rest is shared again; then floors, and the remaining units
    /// to the largest fractions (ties to the lower group). The sum is exactly min(total, Σ caps).
    /// </summary>
    public static int[] Apportion(int total, IReadOnlyList<double> weights, IReadOnlyList<int> caps)
    {
        int n = caps.Count;
        if (weights.Count != n) throw new ArgumentException($"{weights.Count} weights for {n} groups.", nameof(weights));
        total = Math.Clamp(total, 0, caps.Sum());
        var q = new int[n];
        var done = new bool[n];
        for (int i = 0; i < n; i++) if (caps[i] <= 0) done[i] = true;
        while (true)
        {
            int rest = total - q.Sum();
            double w = 0;
            for (int i = 0; i < n; i++) if (!done[i]) w += Math.Max(0, weights[i]);
            if (rest <= 0) return q;
            bool changed = false;
            for (int i = 0; i < n; i++)
            {
                if (done[i]) continue;
                double ideal = w > 0 ? rest * Math.Max(0, weights[i]) / w : (double)rest / n;
                if (ideal >= caps[i]) { q[i] = caps[i]; done[i] = true; changed = true; }
            }
            if (changed) continue;
            var frac = new double[n];
            int given = 0;
            for (int i = 0; i < n; i++)
            {
                if (done[i]) continue;
                double ideal = w > 0 ? rest * Math.Max(0, weights[i]) / w : 0;
                q[i] = (int)Math.Floor(ideal);
                frac[i] = ideal - q[i];
                given += q[i];
            }
            int left = rest - given;
            var order = Enumerable.Range(0, n).Where(i => !done[i]).OrderByDescending(i => frac[i]).ThenBy(i => i).ToList();
            foreach (int i in order)
            {
                if (left == 0) break;
                if (q[i] < caps[i]) { q[i]++; left--; }
            }
            // Groups without weight take what no weighted group could (all at their caps).
            for (int i = 0; i < n && left > 0; i++)
            {
                int add = Math.Min(left, caps[i] - q[i]);
                q[i] += add; left -= add;
            }
            return q;
        }
    }
}
