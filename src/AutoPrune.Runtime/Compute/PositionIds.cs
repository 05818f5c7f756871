namespace AutoPrune.Compute;

/// <summary>
/// The rotary position ids of a sequence: <see cref="Count"/> tokens × <see cref="Components"/> components (1 for LLaVA's
/// one position per token; 3 for Qwen2.5-VL's M-RoPE: temporal, height, width), stored component-major as Hugging Face
/// lays them out ([components, tokens]). What sequence building, a prune's kept rows, the rotary op and a KV cache's
/// next position all read. Immutable.
/// </summary>
internal sealed class PositionIds
{
    private readonly int[] _values;

    private PositionIds(int components, int count, int[] values)
    {
        Components = components;
        Count = count;
        _values = values;
    }

    public int Count { get; }
    public int Components { get; }

    /// <summary>Component <paramref name="component"/> of token <paramref name="token"/>'s position.</summary>
    public int this[int component, int token]
    {
        get
        {
            if ((uint)component >= (uint)Components) throw new ArgumentOutOfRangeException(nameof(component), component, $"Positions have {Components} component(s).");
            if ((uint)token >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(token), token, $"Positions hold {Count} token(s).");
            return _values[component * Count + token];
        }
    }

    /// <summary>One component's positions for every token.</summary>
    public ReadOnlySpan<int> Component(int component) => _values.AsSpan(component * Count, Count);

    /// <summary>Every value, component-major ([components, tokens]): what goes to a device.</summary>
    public ReadOnlySpan<int> Values => _values;

    /// <summary>0, 1, ..., count-1 in every component (a prompt with no image, or positions renumbered after a prune).</summary>
    public static PositionIds Sequential(int count, int components = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfLessThan(components, 1);
        var v = new int[components * count];
        for (int c = 0; c < components; c++)
            for (int i = 0; i < count; i++) v[c * count + i] = i;
        return new PositionIds(components, count, v);
    }

    /// <summary>
    /// <paramref name="count"/> tokens at <paramref name="start"/>, start + 1, ..., the same in every component (a text
    /// run: M-RoPE's text tokens have equal components, as have decode tokens).
    /// </summary>
    public static PositionIds Sequential(int count, int components, int start)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        var p = Sequential(count, components);
        if (start != 0)
            for (int i = 0; i < p._values.Length; i++) p._values[i] += start;
        return p;
    }

    /// <summary>
    /// Token-major values (token t's components at [t·components, t·components + components)) turned component-major;
    /// checked as <see cref="FromValues"/>.
    /// </summary>
    public static PositionIds FromTokenMajor(int components, ReadOnlySpan<int> tokenMajor)
    {
        if (components < 1 || tokenMajor.Length % components != 0)
            throw new ArgumentException($"{tokenMajor.Length} position values are not a whole number of {components}-component positions.", nameof(tokenMajor));
        int n = tokenMajor.Length / components;
        var v = new int[tokenMajor.Length];
        for (int t = 0; t < n; t++)
            for (int c = 0; c < components; c++) v[c * n + t] = tokenMajor[t * components + c];
        return FromValues(components, n, v);
    }

    /// <summary>One position per token (taken over, not copied).</summary>
    public static PositionIds OneComponent(int[] positions) => new(1, positions.Length, positions);

    /// <summary>
    /// <paramref name="components"/> × <paramref name="count"/> values, component-major (taken over); checked: every value
    /// non-negative, and the first component (one position per token, or M-RoPE's temporal one) non-decreasing.
    /// </summary>
    public static PositionIds FromValues(int components, int count, int[] values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (components < 1 || count < 0 || values.Length != (long)components * count)
            throw new ArgumentException($"{values.Length} position values are not {components} component(s) of {count} tokens.", nameof(values));
        var p = new PositionIds(components, count, values);
        p.Validate();
        return p;
    }

    /// <summary>Checks every value is non-negative and the first component never decreases.</summary>
    public PositionIds Validate()
    {
        for (int c = 0; c < Components; c++)
        {
            var s = Component(c);
            for (int i = 0; i < s.Length; i++)
            {
                if (s[i] < 0) throw new ArgumentException($"Position component {c} of token {i} is negative ({s[i]}).");
                if (c == 0 && i > 0 && s[i] < s[i - 1])
                    throw new ArgumentException($"Position {s[i]} of token {i} is below the token before it ({s[i - 1]}).");
            }
        }
        return this;
    }

    /// <summary>The largest component of token <paramref name="token"/>'s position.</summary>
    public int MaxAt(int token)
    {
        int m = int.MinValue;
        for (int c = 0; c < Components; c++) m = Math.Max(m, this[c, token]);
        return m;
    }

    /// <summary>The largest value over every token and component (-1 for no tokens).</summary>
    public int Max()
    {
        int m = -1;
        foreach (int v in _values) m = Math.Max(m, v);
        return m;
    }

    /// <summary>
    /// The positions of a new sequence made of old rows: <paramref name="rows"/>[i] ≥ 0 takes that row's position, a
    /// negative value (a merged row) the position of the new row before it (0 for the first).
    /// </summary>
    public PositionIds Gather(ReadOnlySpan<int> rows)
    {
        int n = rows.Length;
        foreach (int r in rows)
            if (r >= Count) throw new ArgumentOutOfRangeException(nameof(rows), r, $"Row {r} is not one of the {Count} tokens.");
        var v = new int[Components * n];
        for (int c = 0; c < Components; c++)
        {
            int src = c * Count, dst = c * n;
            for (int i = 0; i < n; i++)
                v[dst + i] = rows[i] >= 0 ? _values[src + rows[i]] : i > 0 ? v[dst + i - 1] : 0;
        }
        return new PositionIds(Components, n, v);
    }

    /// <summary>Tokens [start, start + length).</summary>
    public PositionIds Slice(int start, int length)
    {
        if (start < 0 || length < 0 || start > Count - length)
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start}+{length}) is not within the {Count} tokens.");
        var v = new int[Components * length];
        for (int c = 0; c < Components; c++) _values.AsSpan(c * Count + start, length).CopyTo(v.AsSpan(c * length, length));
        return new PositionIds(Components, length, v);
    }

    /// <summary>These tokens followed by <paramref name="other"/>'s (same number of components), e.g. a prompt's and its decode tokens'.</summary>
    public PositionIds Append(PositionIds other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Components != Components)
            throw new ArgumentException($"Cannot append {other.Components}-component positions to {Components}-component ones.", nameof(other));
        int n = Count + other.Count;
        var v = new int[Components * n];
        for (int c = 0; c < Components; c++)
        {
            Component(c).CopyTo(v.AsSpan(c * n, Count));
            other.Component(c).CopyTo(v.AsSpan(c * n + Count, other.Count));
        }
        return new PositionIds(Components, n, v);
    }

    /// <summary>Every value token-major (token t's components at [t·Components, t·Components + Components)), as a new array.</summary>
    public int[] ToTokenMajor()
    {
        var r = new int[_values.Length];
        for (int c = 0; c < Components; c++)
            for (int t = 0; t < Count; t++) r[t * Components + c] = _values[c * Count + t];
        return r;
    }

    public override string ToString() => $"PositionIds({Count} tokens x {Components})";

    /// <summary>The same tokens numbered 0..Count-1 in every component.</summary>
    public PositionIds Renumbered() => Sequential(Count, Components);

    /// <summary>Token <paramref name="token"/>'s components (for messages and tests).</summary>
    public int[] At(int token)
    {
        var r = new int[Components];
        for (int c = 0; c < Components; c++) r[c] = this[c, token];
        return r;
    }
}
