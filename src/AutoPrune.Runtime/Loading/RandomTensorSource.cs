using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using AutoPrune.Compute;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace AutoPrune.Loading;

/// <summary>
/// Generated weights for speed measurements: any tensor the model asks for is made in memory from
/// (seed, canonical name) with exactly the shape the caller expects, so a model of any size runs without a
/// checkpoint. Norm weights (names containing "norm" — which covers "layrnorm" — and ending ".weight") are 1,
/// biases (".bias") are 0, everything else (including embed_tokens, position_embedding and class_embedding) is
/// uniform in ±√3·0.02, i.e. mean 0 and standard deviation 0.02.
/// </summary>
/// <remarks>
/// Element i of a tensor depends only on (seed, name, i): elements 2j and 2j+1 take the low and high 32 bits of a
/// SplitMix64 hash of the pair index j, so the values do not depend on how the work is split between threads.
/// <see cref="ReadFloat16"/> rounds the very same fp32 values to nearest even, a chunk at a time, without an fp32
/// copy of the whole tensor; the <c>...Into</c> variants fill a caller's buffer instead of allocating (fresh pages
/// cost more than generating: a 4096×11008 fp16 tensor takes about 20 ms into a reused buffer on 2 cores).
/// <see cref="Contains"/> is true for every name except the LM head when the config
/// ties word embeddings (so the decoder reuses the embedding matrix, as it would with such a checkpoint).
/// </remarks>
internal sealed unsafe class RandomTensorSource : ITensorSource
{
    /// <summary>Standard deviation of the generated (non-norm, non-bias) values.</summary>
    public const float Std = 0.02f;

    /// <summary>Half-width of the uniform distribution: √3·<see cref="Std"/>.</summary>
    public static readonly float Amplitude = MathF.Sqrt(3f) * Std;

    private const string LmHead = "language_model.lm_head.weight";

    /// <summary>Elements one parallel work item generates (a multiple of <see cref="BlockElements"/>).</summary>
    private const int ChunkElements = 1 << 16;

    /// <summary>Elements converted to fp16 per step inside a chunk (a stack buffer of fp32).</summary>
    private const int BlockElements = 2048;

    /// <summary>Chunks below which a tensor is generated on the calling thread.</summary>
    private const int MinParallelChunks = 4;

    private readonly ulong _seed;
    private readonly List<(string Name, long[] Shape)> _requests = new();

    /// <summary>Generated weights for a model of <paramref name="config"/> (only its embedding tying matters).</summary>
    public RandomTensorSource(LlavaConfig config, ulong seed)
        : this(seed, (config ?? throw new ArgumentNullException(nameof(config))).TieWordEmbeddings || config.TextConfig.TieWordEmbeddings)
    {
    }

    /// <summary>Generated weights; with <paramref name="tieWordEmbeddings"/> the LM head is reported absent.</summary>
    public RandomTensorSource(ulong seed, bool tieWordEmbeddings = false)
    {
        _seed = seed;
        TieWordEmbeddings = tieWordEmbeddings;
    }

    public ulong Seed => _seed;

    /// <summary>When true, <see cref="Contains"/> is false for <c>language_model.lm_head.weight</c>.</summary>
    public bool TieWordEmbeddings { get; }

    /// <summary>Every tensor generated so far, in order, with its canonical name and shape.</summary>
    public IReadOnlyList<(string Name, long[] Shape)> Requests
    {
        get { lock (_requests) return _requests.ToArray(); }
    }

    /// <summary>Total elements generated so far.</summary>
    public long ElementsGenerated
    {
        get { lock (_requests) return _requests.Sum(r => Count(r.Shape)); }
    }

    public bool Contains(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return !(TieWordEmbeddings && TensorNames.ToCanonical(name) == LmHead);
    }

    public float[] ReadFloat32(string name, params long[] expectedShape)
    {
        var (canonical, count, kind) = Check(name, expectedShape);
        var result = GC.AllocateUninitializedArray<float>(count);
        Record(canonical, expectedShape);
        Generate(canonical, kind, result);
        return result;
    }

    public Half[] ReadFloat16(string name, params long[] expectedShape)
    {
        var (canonical, count, kind) = Check(name, expectedShape);
        var result = GC.AllocateUninitializedArray<Half>(count);
        Record(canonical, expectedShape);
        Generate(canonical, kind, result);
        return result;
    }

    /// <summary>Generated weights are fp16, as they are on the GPU: the CPU backend keeps them so (2 bytes per parameter).</summary>
    public WeightData ReadWeight(string name, params long[] expectedShape) => WeightData.Of(ReadFloat16(name, expectedShape));

    /// <summary>Like <see cref="ReadFloat32"/> into a caller's buffer of exactly the tensor's element count (no allocation).</summary>
    public void ReadFloat32Into(string name, Span<float> destination, params long[] expectedShape)
    {
        var (canonical, count, kind) = Check(name, expectedShape);
        CheckDestination(canonical, count, destination.Length);
        Record(canonical, expectedShape);
        Generate(canonical, kind, destination);
    }

    /// <summary>Like <see cref="ReadFloat16"/> into a caller's buffer (e.g. a reused upload staging buffer).</summary>
    public void ReadFloat16Into(string name, Span<Half> destination, params long[] expectedShape)
    {
        var (canonical, count, kind) = Check(name, expectedShape);
        CheckDestination(canonical, count, destination.Length);
        Record(canonical, expectedShape);
        Generate(canonical, kind, destination);
    }

    private void Generate(string canonical, Kind kind, Span<float> dest)
    {
        switch (kind)
        {
            case Kind.Ones: dest.Fill(1f); return;
            case Kind.Zeros: dest.Clear(); return;
        }
        ulong key = KeyFor(_seed, canonical);
        fixed (float* p = dest)
        {
            float* basePtr = p;
            ForEachChunk(dest.Length, (start, n) => FillUniform(key, start, new Span<float>(basePtr + start, n)));
        }
    }

    private void Generate(string canonical, Kind kind, Span<Half> dest)
    {
        switch (kind)
        {
            case Kind.Ones: dest.Fill(Half.One); return;
            case Kind.Zeros: dest.Clear(); return;
        }
        ulong key = KeyFor(_seed, canonical);
        fixed (Half* p = dest)
        {
            Half* basePtr = p;
            ForEachChunk(dest.Length, (start, n) =>
            {
                // fp32 a block at a time on the stack, rounded into the destination.
                Span<float> block = stackalloc float[BlockElements];
                for (int done = 0; done < n; done += BlockElements)
                {
                    int m = Math.Min(BlockElements, n - done);
                    var b = block[..m];
                    FillUniform(key, start + done, b);
                    TensorPrimitives.ConvertToHalf(b, new Span<Half>(basePtr + start + done, m));
                }
            });
        }
    }

    /// <summary>Nothing is held, so nothing is left unused.</summary>
    public IReadOnlyList<string> UnusedTensors() => Array.Empty<string>();

    private enum Kind { Uniform, Ones, Zeros }

    /// <summary>Norm weights are ones, biases zeros, everything else uniform (embeddings included).</summary>
    private static Kind Classify(string canonical)
    {
        if (canonical.EndsWith(".bias", StringComparison.Ordinal)) return Kind.Zeros;
        if (canonical.EndsWith(".weight", StringComparison.Ordinal)
            && canonical.Contains("norm", StringComparison.Ordinal)) // layer_norm1, pre_layrnorm, input_layernorm, model.norm
            return Kind.Ones;
        return Kind.Uniform;
    }

    private static (string Canonical, int Count, Kind Kind) Check(string name, long[]? shape)
    {
        ArgumentNullException.ThrowIfNull(name);
        string canonical = TensorNames.ToCanonical(name);
        if (shape is null || shape.Length == 0)
        {
            throw new ArgumentException(
                $"Tensor '{canonical}': generated weights need the expected shape; none was given.", nameof(shape));
        }
        long count = 1;
        foreach (long d in shape)
        {
            if (d <= 0)
                throw new ArgumentException($"Tensor '{canonical}': shape {TensorInfo.FormatShape(shape)} has a dimension below 1.", nameof(shape));
            if (d > Array.MaxLength / count) // count * d > Array.MaxLength, without overflow
            {
                throw new ArgumentException(
                    $"Tensor '{canonical}': shape {TensorInfo.FormatShape(shape)} has more elements than one .NET array can hold ({Array.MaxLength}).",
                    nameof(shape));
            }
            count *= d;
        }
        return (canonical, (int)count, Classify(canonical));
    }

    private static void CheckDestination(string canonical, int count, int length)
    {
        if (length != count)
            throw new ArgumentException($"Tensor '{canonical}' has {count} elements but the destination holds {length}.", "destination");
    }

    private void Record(string canonical, long[] shape)
    {
        lock (_requests) _requests.Add((canonical, (long[])shape.Clone()));
    }

    private static long Count(long[] shape)
    {
        long c = 1;
        foreach (long d in shape) c *= d;
        return c;
    }

    /// <summary>Runs <paramref name="body"/>(start, length) over fixed chunks, in parallel for large tensors.</summary>
    private static void ForEachChunk(int count, Action<long, int> body)
    {
        int chunks = (int)(((long)count + ChunkElements - 1) / ChunkElements);
        if (chunks < MinParallelChunks)
        {
            for (int c = 0; c < chunks; c++)
            {
                long start = (long)c * ChunkElements;
                body(start, (int)Math.Min(ChunkElements, count - start));
            }
            return;
        }
        Parallel.For(0, chunks, ComputeScheduler.Options(), c =>
        {
            long start = (long)c * ChunkElements;
            body(start, (int)Math.Min(ChunkElements, count - start));
        });
    }

    /// <summary>The per-tensor key: the seed and an FNV-1a hash of the canonical name, mixed.</summary>
    internal static ulong KeyFor(ulong seed, string canonical)
    {
        ulong h = 14695981039346656037UL;
        foreach (char ch in canonical)
        {
            h ^= ch;
            h *= 1099511628211UL;
        }
        return Mix(Mix(seed + 0x9E3779B97F4A7C15UL) ^ h);
    }

    /// <summary>SplitMix64's output function (a bijection on 64-bit values).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// Writes elements [first, first + dest.Length) of the tensor with key <paramref name="key"/>. Each 32-bit half of a
    /// hash gives 23 bits k, and the value (k − 2²² + ½)·Amplitude/2²², symmetric about 0 and exact before the final scaling.
    /// Four hashes (eight values) at a time with Vector256 where accelerated; the same values as <see cref="FillUniformScalar"/>.
    /// </summary>
    internal static void FillUniform(ulong key, long first, Span<float> dest)
    {
        if (!Vector256.IsHardwareAccelerated || !BitConverter.IsLittleEndian || (first & 1) != 0)
        {
            FillUniformScalar(key, first, dest);
            return;
        }
        int i = 0, n = dest.Length;
        ulong pair = (ulong)(first >> 1);
        var golden = Vector256.Create(0x9E3779B97F4A7C15UL);
        var keys = Vector256.Create(key);
        var lanes = Vector256.Create(0UL, 1UL, 2UL, 3UL);
        var offset = Vector256.Create(0.5f - (1 << 22));
        var scale = Vector256.Create(Scale);
        ref float d = ref MemoryMarshal.GetReference(dest);
        for (; i + 8 <= n; i += 8, pair += 4)
        {
            var z = keys + (Vector256.Create(pair) + lanes) * golden;
            z = (z ^ Vector256.ShiftRightLogical(z, 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ Vector256.ShiftRightLogical(z, 27)) * 0x94D049BB133111EBUL;
            z ^= Vector256.ShiftRightLogical(z, 31);
            // Little-endian: the uint lanes are lo0, hi0, lo1, hi1, ... = elements 2j, 2j+1, 2j+2, ...
            var k = Vector256.ShiftRightLogical(z.AsUInt32(), 9).AsInt32();
            ((Vector256.ConvertToSingle(k) + offset) * scale).StoreUnsafe(ref d, (nuint)i);
        }
        if (i < n)
            FillUniformScalar(key, first + i, dest[i..]);
    }

    /// <summary>The reference (one hash at a time) version of <see cref="FillUniform"/>.</summary>
    internal static void FillUniformScalar(ulong key, long first, Span<float> dest)
    {
        int i = 0, n = dest.Length;
        long pair = first >> 1;
        if ((first & 1) != 0 && n > 0)
        {
            dest[i++] = Value((uint)(Hash(key, pair) >> 32));
            pair++;
        }
        for (; i + 1 < n; i += 2, pair++)
        {
            ulong r = Hash(key, pair);
            dest[i] = Value((uint)r);
            dest[i + 1] = Value((uint)(r >> 32));
        }
        if (i < n)
            dest[i] = Value((uint)Hash(key, pair));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Hash(ulong key, long pair) => Mix(key + (ulong)pair * 0x9E3779B97F4A7C15UL);

    private static readonly float Scale = Amplitude / (1 << 22);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Value(uint bits) => ((bits >> 9) + (0.5f - (1 << 22))) * Scale;
}
