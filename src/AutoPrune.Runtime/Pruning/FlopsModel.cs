namespace AutoPrune.Pruning;

/// <summary>Prefill FLOPs model of the spec: per layer <c>4*n*d^2 + 2*n^2*d + 3*n*d*m</c>.</summary>
internal static class FlopsModel
{
    /// <summary>FLOPs of one decoder layer on a sequence of <paramref name="n"/> tokens.</summary>
    public static double Layer(long n, int hiddenSize, int intermediateSize)
    {
        if (n < 0) throw new ArgumentOutOfRangeException(nameof(n));
        double nn = n, d = hiddenSize, m = intermediateSize;
        return 4 * nn * d * d + 2 * nn * nn * d + 3 * nn * d * m;
    }

    /// <summary>Sum of <see cref="Layer"/> over the per-layer sequence lengths.</summary>
    public static double Total(ReadOnlySpan<int> sequenceLengthPerLayer, int hiddenSize, int intermediateSize)
    {
        double total = 0;
        foreach (int n in sequenceLengthPerLayer) total += Layer(n, hiddenSize, intermediateSize);
        return total;
    }

    /// <summary>Prefill FLOPs with <paramref name="visualPerLayer"/> visual tokens entering each layer.</summary>
    public static double Prefill(ModelShape shape, int prefixTokens, int textTokens, ReadOnlySpan<int> visualPerLayer)
    {
        if (visualPerLayer.Length != shape.Layers)
            throw new ArgumentException($"Expected {shape.Layers} per-layer visual counts, got {visualPerLayer.Length}.", nameof(visualPerLayer));
        double total = 0;
        foreach (int v in visualPerLayer) total += Layer((long)prefixTokens + textTokens + v, shape.HiddenSize, shape.IntermediateSize);
        return total;
    }

    /// <summary>Prefill FLOPs with no pruning (all V visual tokens at every layer).</summary>
    public static double Unpruned(ModelShape shape, int prefixTokens, int textTokens)
        => shape.Layers * Layer((long)prefixTokens + textTokens + shape.VisualTokens, shape.HiddenSize, shape.IntermediateSize);

    /// <summary>Pruned over unpruned prefill FLOPs.</summary>
    public static double Ratio(ModelShape shape, int prefixTokens, int textTokens, ReadOnlySpan<int> visualPerLayer)
        => Prefill(shape, prefixTokens, textTokens, visualPerLayer) / Unpruned(shape, prefixTokens, textTokens);
}
