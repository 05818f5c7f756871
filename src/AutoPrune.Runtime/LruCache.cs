namespace AutoPrune;

/// <summary>
/// A small thread-safe least-recently-used cache. <paramref name="onHit"/> runs on each value handed out and
/// <paramref name="onEvict"/> on each value dropped (evicted, replaced or cleared), both under the cache's lock, so a
/// hit can take a reference before an eviction could release it.
/// </summary>
internal sealed class LruCache<TKey, TValue>(int capacity, Action<TValue>? onHit = null, Action<TValue>? onEvict = null) where TKey : notnull
{
    private readonly LinkedList<(TKey Key, TValue Value)> _order = new();
    private readonly Dictionary<TKey, LinkedListNode<(TKey Key, TValue Value)>> _map = new();
    private readonly Lock _lock = new();

    public bool TryGet(TKey key, out TValue value)
    {
        lock (_lock)
        {
            if (_map.TryGetValue(key, out var node))
            {
                _order.Remove(node);
                _order.AddFirst(node);
                value = node.Value.Value;
                onHit?.Invoke(value);
                return true;
            }
        }
        value = default!;
        return false;
    }

    /// <summary>Adds <paramref name="value"/>; false (and nothing kept) when the cache holds nothing.</summary>
    public bool Add(TKey key, TValue value)
    {
        if (capacity <= 0) return false;
        lock (_lock)
        {
            if (_map.Remove(key, out var old))
            {
                _order.Remove(old);
                onEvict?.Invoke(old.Value.Value);
            }
            _map[key] = _order.AddFirst((key, value));
            while (_map.Count > capacity)
            {
                var last = _order.Last!;
                _order.RemoveLast();
                _map.Remove(last.Value.Key);
                onEvict?.Invoke(last.Value.Value);
            }
        }
        return true;
    }

    /// <summary>Drops every value.</summary>
    public void Clear()
    {
        lock (_lock)
        {
            foreach (var (_, v) in _order) onEvict?.Invoke(v);
            _order.Clear();
            _map.Clear();
        }
    }

    public int Count { get { lock (_lock) return _map.Count; } }
}
