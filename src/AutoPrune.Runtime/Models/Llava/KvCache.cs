namespace AutoPrune.Models.Llava;

/// <summary>
/// Per-request key/value cache. Each decoder layer holds the keys and values (after RoPE) of exactly
/// the tokens that entered it, so a layer after a prune holds a shorter cache.
/// </summary>
internal sealed class KvCache
{
    internal sealed class LayerCache
    {
        public required float[] Keys;
        public required float[] Values;
        public int Count;
        /// <summary>Position id the next appended token gets at this layer (last position + 1).</summary>
        public int NextPosition;
        public int Capacity => Keys.Length / KvDim;
        public required int KvDim;
    }

    private readonly LayerCache?[] _layers;
    public int ExtraCapacity { get; }

    public KvCache(int layers, int extraCapacity)
    {
        _layers = new LayerCache?[layers];
        ExtraCapacity = extraCapacity;
    }

    public LayerCache this[int layer] => _layers[layer] ?? throw new InvalidOperationException($"Layer {layer} has no cache yet: prefill first.");

    public int Layers => _layers.Length;

    /// <summary>Creates layer <paramref name="layer"/>'s cache from the prefill keys/values of its <paramref name="rows"/> tokens.</summary>
    public void Init(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows, int kvDim, int nextPosition)
    {
        int cap = rows + ExtraCapacity;
        var c = new LayerCache { Keys = new float[cap * kvDim], Values = new float[cap * kvDim], KvDim = kvDim, Count = rows, NextPosition = nextPosition };
        k.Slice(0, rows * kvDim).CopyTo(c.Keys);
        v.Slice(0, rows * kvDim).CopyTo(c.Values);
        _layers[layer] = c;
    }

    /// <summary>Appends one token's key and value to a layer and advances its position.</summary>
    public void Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var c = this[layer];
        if (c.Count >= c.Capacity)
            throw new InvalidOperationException($"KV cache of layer {layer} is full ({c.Capacity} tokens).");
        k.CopyTo(c.Keys.AsSpan(c.Count * c.KvDim, c.KvDim));
        v.CopyTo(c.Values.AsSpan(c.Count * c.KvDim, c.KvDim));
        c.Count++;
        c.NextPosition++;
    }

    /// <summary>Tokens held per layer.</summary>
    public int[] CountsPerLayer() => _layers.Select(l => l?.Count ?? 0).ToArray();

    /// <summary>Bytes held by all layers' caches.</summary>
    public long Bytes => _layers.Sum(l => l is null ? 0L : (l.Keys.Length + l.Values.Length) * 4L);
}
