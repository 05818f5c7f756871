using AutoPrune.Compute.Cpu;

namespace AutoPrune.Models.Llava;

/// <summary>
/// Per-request key/value cache. Each decoder layer holds the keys and values (after RoPE) of exactly
/// the tokens that entered it, so a layer after a prune holds a shorter cache. Its memory is unmanaged and goes back
/// when the cache is disposed (at the end of the request), to the model's <see cref="HostMemoryPool"/>.
/// </summary>
internal sealed class KvCache : IDisposable
{
    internal sealed class LayerCache : IDisposable
    {
        public required NativeFloats Keys;
        public required NativeFloats Values;
        public int Count;
        /// <summary>Position id the next appended token gets at this layer (last position + 1).</summary>
        public int NextPosition;
        public int Capacity => Keys.Length / KvDim;
        public required int KvDim;

        public void Dispose()
        {
            Keys.Dispose();
            Values.Dispose();
        }
    }

    private readonly LayerCache?[] _layers;
    private readonly HostMemoryPool? _pool;
    public int ExtraCapacity { get; }

    /// <param name="layers">Decoder layers.</param>
    /// <param name="extraCapacity">Tokens each layer can take after its prompt rows.</param>
    /// <param name="pool">Where the layers' memory comes from and goes back to (null: allocated and freed).</param>
    public KvCache(int layers, int extraCapacity, HostMemoryPool? pool = null)
    {
        _layers = new LayerCache?[layers];
        ExtraCapacity = extraCapacity;
        _pool = pool;
    }

    public LayerCache this[int layer]
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _layers[layer] ?? throw new InvalidOperationException($"Layer {layer} has no cache yet: prefill first.");
        }
    }

    public int Layers => _layers.Length;

    /// <summary>Creates layer <paramref name="layer"/>'s cache from the prefill keys/values of its <paramref name="rows"/> tokens.</summary>
    public void Init(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows, int kvDim, int nextPosition)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long cap = (long)(rows + ExtraCapacity) * kvDim;
        _layers[layer]?.Dispose();
        _layers[layer] = null;
        var keys = Rent(cap);
        NativeFloats values;
        try { values = Rent(cap); }
        catch { keys.Dispose(); throw; }
        var c = new LayerCache { Keys = keys, Values = values, KvDim = kvDim, Count = rows, NextPosition = nextPosition };
        k.Slice(0, rows * kvDim).CopyTo(c.Keys.Span);
        v.Slice(0, rows * kvDim).CopyTo(c.Values.Span);
        _layers[layer] = c;
    }

    private NativeFloats Rent(long length) => _pool?.Rent(length) ?? new NativeFloats(length);

    /// <summary>Appends one token's key and value to a layer and advances its position.</summary>
    public void Append(int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var c = this[layer];
        if (c.Count >= c.Capacity)
            throw new InvalidOperationException($"KV cache of layer {layer} is full ({c.Capacity} tokens).");
        k.CopyTo(c.Keys.Slice(c.Count * c.KvDim, c.KvDim));
        v.CopyTo(c.Values.Slice(c.Count * c.KvDim, c.KvDim));
        c.Count++;
        c.NextPosition++;
    }

    /// <summary>Tokens held per layer.</summary>
    public int[] CountsPerLayer() => _layers.Select(l => l?.Count ?? 0).ToArray();

    /// <summary>Bytes held by all layers' caches.</summary>
    public long Bytes => _layers.Sum(l => l is null ? 0L : l.Keys.Bytes + l.Values.Bytes);

    /// <summary>Gives every layer's memory back; the cache is unusable afterwards.</summary>
    public void Dispose()
    {
        for (int i = 0; i < _layers.Length; i++)
        {
            _layers[i]?.Dispose();
            _layers[i] = null;
        }
        _disposed = true;
    }

    private bool _disposed;
}
