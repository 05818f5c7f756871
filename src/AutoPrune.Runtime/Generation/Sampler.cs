namespace AutoPrune.Generation;

/// <summary>Picks the next token from logits: greedy, or temperature + nucleus (top-p) sampling with a seed.</summary>
internal sealed class Sampler
{
    private readonly float _temperature, _topP;
    private readonly Random? _rng;

    /// <summary>Largest temperature accepted; above a few the distribution is already close to uniform.</summary>
    public const float MaxTemperature = 100;
    public const int MaxStopSequences = 64;
    public const int MaxStopSequenceChars = 4096;

    public Sampler(GenerationOptions o)
    {
        if (!(o.Temperature >= 0 && o.Temperature <= MaxTemperature))
            throw new ArgumentOutOfRangeException(nameof(o), $"Temperature must be a number in [0, {MaxTemperature}] (got {o.Temperature.ToString(System.Globalization.CultureInfo.InvariantCulture)}).");
        if (float.IsNaN(o.TopP) || o.TopP <= 0 || o.TopP > 1) throw new ArgumentOutOfRangeException(nameof(o), $"TopP must be in (0, 1] (got {o.TopP}).");
        if (o.StopSequences is { } stops)
        {
            if (stops.Count > MaxStopSequences)
                throw new ArgumentOutOfRangeException(nameof(o), $"At most {MaxStopSequences} stop sequences are accepted (got {stops.Count}).");
            foreach (var s in stops)
                if (s is { Length: > MaxStopSequenceChars })
                    throw new ArgumentOutOfRangeException(nameof(o), $"A stop sequence is {s.Length:N0} characters long; at most {MaxStopSequenceChars} are accepted.");
        }
        _temperature = o.Temperature;
        _topP = o.TopP;
        if (_temperature > 0) _rng = o.Seed is int s ? new Random(s) : new Random();
    }

    /// <summary>Greedy decoding (temperature 0): the next token is the first largest logit.</summary>
    public bool IsGreedy => _rng is null;

    public int Next(ReadOnlySpan<float> logits)
    {
        if (_rng is null) return Compute.Cpu.CpuOps.ArgMax(logits);
        var idx = new int[logits.Length];
        for (int i = 0; i < idx.Length; i++) idx[i] = i;
        return Sample(logits, idx);
    }

    /// <summary>As <see cref="Next(ReadOnlySpan{float})"/> among the ids <paramref name="mask"/> allows (structured output);
    /// -1 when it allows none of the logits' ids.</summary>
    public int Next(ReadOnlySpan<float> logits, Constraints.TokenMask mask)
    {
        if (_rng is null) return mask.ArgMax(logits);
        int n = logits.Length;
        var idx = mask.Ids().TakeWhile(id => id < n).ToArray();
        return idx.Length == 0 ? -1 : Sample(logits, idx);
    }

    /// <summary>Temperature and top-p sampling among the candidate ids <paramref name="idx"/> (reordered in place).</summary>
    private int Sample(ReadOnlySpan<float> logits, int[] idx)
    {
        int n = idx.Length;
        var p = new double[n];
        double max = double.NegativeInfinity;
        for (int i = 0; i < n; i++) max = Math.Max(max, logits[idx[i]]);
        double sum = 0;
        for (int i = 0; i < n; i++) { p[i] = Math.Exp((logits[idx[i]] - max) / _temperature); sum += p[i]; }
        Array.Sort(p, idx); // ascending
        Array.Reverse(p); Array.Reverse(idx);
        double cut = _topP * sum, acc = 0;
        int keep = 0;
        while (keep < n) { acc += p[keep++]; if (acc >= cut) break; }
        double r = _rng!.NextDouble() * acc;
        for (int i = 0; i < keep; i++)
        {
            r -= p[i];
            if (r <= 0) return idx[i];
        }
        return idx[keep - 1];
    }

    /// <summary>The k largest logits, largest first (ties by lower id).</summary>
    public static TokenLogit[] TopK(ReadOnlySpan<float> logits, int k)
    {
        var all = new TokenLogit[logits.Length];
        for (int i = 0; i < logits.Length; i++) all[i] = new TokenLogit(i, logits[i]);
        Array.Sort(all, (a, b) => b.Logit != a.Logit ? b.Logit.CompareTo(a.Logit) : a.Id.CompareTo(b.Id));
        return all.AsSpan(0, Math.Min(k, all.Length)).ToArray();
    }
}
