namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Rotary position ids of a token sequence: <see cref="Count"/> tokens × <see cref="Components"/> components, stored
/// token-major (token t's components at <c>[t·k, t·k + k)</c>). One component is the usual 1D position (LLaVA, any
/// Llama-style model); Qwen2.5-VL's M-RoPE has three (temporal, height, width), equal for text tokens and spread over the
/// grid for image tokens. Pruning keeps tokens by row, so <see cref="Gather"/> keeps each kept token's own positions.
/// Immutable.
/// </summary>
internal sealed class PositionIds
{
    private readonly int[] _values;

    /// <param name="values">Token-major values; its length must be a multiple of <paramref name="components"/>.</param>
    public PositionIds(int components, int[] values)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(components, 1);
        ArgumentNullException.ThrowIfNull(values);
        if (values.Length % components != 0)
            throw new ArgumentException($"{values.Length} values are not a whole number of {components}-component positions.", nameof(values));
        Components = components;
        _values = values;
    }

    /// <summary>Position components per token (1, or 3 for M-RoPE).</summary>
    public int Components { get; }

    /// <summary>Tokens.</summary>
    public int Count => _values.Length / Components;

    /// <summary>All values, token-major.</summary>
    public ReadOnlySpan<int> Values => _values;

    /// <summary>Component <paramref name="component"/> of token <paramref name="token"/>.</summary>
    public int this[int token, int component]
    {
        get
        {
            if ((uint)component >= (uint)Components) throw new ArgumentOutOfRangeException(nameof(component), component, $"Positions have {Components} component(s).");
            return _values[checked(token * Components + component)];
        }
    }

    /// <summary>The components of one token.</summary>
    public ReadOnlySpan<int> Token(int token) => _values.AsSpan(token * Components, Components);

    /// <summary>One component of every token (e.g. the temporal positions, or the only one), as a new array.</summary>
    public int[] Component(int component)
    {
        if ((uint)component >= (uint)Components) throw new ArgumentOutOfRangeException(nameof(component), component, $"Positions have {Components} component(s).");
        var r = new int[Count];
        for (int t = 0; t < r.Length; t++) r[t] = _values[t * Components + component];
        return r;
    }

    /// <summary>Tokens [start, start + length).</summary>
    public PositionIds Slice(int start, int length)
    {
        if (start < 0 || length < 0 || start > Count - length)
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start}+{length}) is not within the {Count} tokens.");
        return new PositionIds(Components, _values.AsSpan(start * Components, length * Components).ToArray());
    }

    /// <summary>The tokens at <paramref name="rows"/>, in that order (e.g. the tokens a pruning step keeps).</summary>
    public PositionIds Gather(ReadOnlySpan<int> rows)
    {
        int k = Components, n = Count;
        var r = new int[rows.Length * k];
        for (int i = 0; i < rows.Length; i++)
        {
            int row = rows[i];
            if ((uint)row >= (uint)n) throw new ArgumentOutOfRangeException(nameof(rows), row, $"Row {row} is not one of the {n} tokens.");
            _values.AsSpan(row * k, k).CopyTo(r.AsSpan(i * k, k));
        }
        return new PositionIds(k, r);
    }

    /// <summary>This sequence followed by <paramref name="other"/> (same number of components).</summary>
    public PositionIds Append(PositionIds other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Components != Components) throw new ArgumentException($"Cannot append {other.Components}-component positions to {Components}-component ones.", nameof(other));
        return new PositionIds(Components, [.. _values, .. other._values]);
    }

    /// <summary>The largest value of any component (-1 when empty): the next text token continues from it + 1.</summary>
    public int Max() => _values.Length == 0 ? -1 : _values.Max();

    /// <summary><paramref name="count"/> tokens at start, start + 1, ..., the same in every component.</summary>
    public static PositionIds Sequential(int count, int start = 0, int components = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var v = new int[checked(count * components)];
        for (int t = 0; t < count; t++)
            for (int c = 0; c < components; c++) v[t * components + c] = start + t;
        return new PositionIds(components, v);
    }

    public override string ToString() => $"PositionIds({Count} tokens x {Components})";
}
