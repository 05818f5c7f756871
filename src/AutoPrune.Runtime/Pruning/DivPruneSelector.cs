using System.Numerics.Tensors;
using AutoPrune.Compute.Cpu;

namespace AutoPrune.Pruning;

/// <summary>
/// DivPrune's selection (spec): greedy max-min diversity under the cosine distance <c>1 - cos(f_i, f_j)</c>.
/// The first token is the one whose nearest other token is farthest; each next one is the token farthest from
/// the tokens already kept. Ties go to the lower index. Attention-free.
/// </summary>
internal static class DivPruneSelector
{
    /// <summary>Distances are compared in steps of 1/Resolution.</summary>
    internal const float Resolution = 1024;

    /// <summary>
    /// Selects <paramref name="k"/> of the rows of <paramref name="features"/> ([n, dim]); returns them ascending.
    /// O(n^2 dim) for the similarity matrix (one GEMM), then O(n k) for the greedy loop.
    /// </summary>
    /// <param name="matchDevice">Normalise as the device does (<see cref="CpuPrecision.MatchDevice"/>): the squared norm
    /// summed in order and the unit rows rounded to fp16 before their cosines.</param>
    public static int[] Select(ReadOnlySpan<float> features, int dim, int k, bool matchDevice = false)
    {
        if (dim < 1 || features.Length % dim != 0) throw new ArgumentException($"Features must be [n, {dim}]; got {features.Length} values.", nameof(features));
        int n = features.Length / dim;
        k = Math.Clamp(k, 0, n);
        if (k == 0) return [];
        if (k == n) return Enumerable.Range(0, n).ToArray();
        var distance = CosineDistances(features, n, dim, matchDevice);
        return GreedyMaxMin(distance, n, k);
    }

    /// <summary>The n x n matrix 1 - cos(f_i, f_j) (zero vectors have cosine 0 with everything).</summary>
    internal static float[] CosineDistances(ReadOnlySpan<float> features, int n, int dim, bool matchDevice = false)
    {
        var unit = new float[n * dim];
        for (int i = 0; i < n; i++)
        {
            var src = features.Slice(i * dim, dim);
            float norm = MathF.Sqrt(matchDevice ? DeviceNumerics.SequentialSum(src, squares: true) : TensorPrimitives.SumOfSquares(src));
            TensorPrimitives.Multiply(src, norm > 0 ? 1f / norm : 0f, unit.AsSpan(i * dim, dim));
        }
        if (matchDevice) DeviceNumerics.RoundToHalf(unit);
        var cos = new float[n * n];
        Gemm.MatMulTransB(unit, n, dim, unit, n, cos);
        // The GEMM's blocking may round the two halves differently: make the matrix exactly symmetric. Distances are kept
        // to 1/1024: near-duplicates (a uniform background's patches) then tie exactly and the lower index wins, instead
        // of the choice hinging on digits that differ between an fp32 CPU and an fp16 GPU.
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                float d = MathF.Round((1f - cos[i * n + j]) * Resolution) / Resolution;
                cos[i * n + j] = d;
                cos[j * n + i] = d;
            }
        for (int i = 0; i < n; i++) cos[i * n + i] = 0f;
        return cos;
    }

    /// <summary>Greedy max-min on a distance matrix [n, n]; returns the selected rows ascending.</summary>
    internal static int[] GreedyMaxMin(ReadOnlySpan<float> distance, int n, int k)
    {
        if (distance.Length != n * n) throw new ArgumentException($"Expected an {n}x{n} distance matrix.", nameof(distance));
        k = Math.Clamp(k, 0, n);
        var selected = new int[k];
        if (k == 0) return selected;
        // First: the token whose nearest other token is farthest.
        int first = 0;
        float bestNearest = float.NegativeInfinity;
        for (int i = 0; i < n; i++)
        {
            float nearest = float.PositiveInfinity;
            var row = distance.Slice(i * n, n);
            for (int j = 0; j < n; j++)
                if (j != i && row[j] < nearest) nearest = row[j];
            if (n == 1) nearest = 0;
            if (nearest > bestNearest) { bestNearest = nearest; first = i; }
        }
        var taken = new bool[n];
        var toSet = new float[n]; // distance of each token to the nearest kept one
        taken[first] = true;
        selected[0] = first;
        distance.Slice(first * n, n).CopyTo(toSet);
        for (int s = 1; s < k; s++)
        {
            int best = -1;
            for (int j = 0; j < n; j++)
                if (!taken[j] && (best < 0 || toSet[j] > toSet[best])) best = j;
            taken[best] = true;
            selected[s] = best;
            var row = distance.Slice(best * n, n);
            for (int j = 0; j < n; j++)
                if (row[j] < toSet[j]) toSet[j] = row[j];
        }
        Array.Sort(selected);
        return selected;
    }
}
