using System.Buffers.Binary;
using System.Text;
using AutoPrune.Compute.Quant;
using AutoPrune.Loading;
using AutoPrune.Loading.Gguf;
using AutoPrune.Tests.Reliability;
using CsCheck;
using Xunit;

using AutoPrune.Models.Llava;

using AutoPrune.Models;

namespace AutoPrune.Tests.Gguf;

/// <summary>
/// Fuzz-style properties for the GGUF reader, like <see cref="SafeTensorFuzzTests"/> for safetensors: thousands of mutated
/// files (random bytes, truncation, every count / length / type / dimension / offset field set to hostile values, names
/// made duplicates, data bytes changed) give either a <see cref="ModelLoadException"/> naming the file or a load whose every
/// tensor dequantizes to its element count, never another exception, never a slow attempt, never an allocation sized by a
/// claim in the file.
/// </summary>
public sealed class GgufFuzzTests : IDisposable
{
    private const long AllocationLimit = 6L << 20; // honest loads of the bases allocate < 2 MB (all tensors dequantized)

    private readonly PerThreadDirs _dirs = new();
    private readonly byte[] _synthetic = Synthetic();
    private readonly byte[] _fixture = FixtureExtract();

    public void Dispose() => _dirs.Dispose();

    /// <summary>Every value type (nested arrays too) and a tensor of every format the runtime computes with.</summary>
    private static byte[] Synthetic()
    {
        var w = new GgufWriter();
        var values = GgufReaderTests.EveryValueType();
        for (int i = 0; i < values.Length; i++) w.Add($"fuzz.v{i}", values[i]);
        w.Add("tokenizer.ggml.model", GgufValue.Of("llama"));
        w.Add("tokenizer.ggml.tokens", GgufValue.Array(new[] { "<unk>", "<s>", "</s>", "▁a", "b" }));
        w.Add("tokenizer.ggml.scores", GgufValue.Array(new[] { 0f, 0f, 0f, -1f, -2f }));
        w.Add("tokenizer.ggml.token_type", GgufValue.Array(new[] { 2, 3, 3, 1, 1 }));
        var r = new Random(4);
        foreach (var f in QuantFormats.All)
        {
            int cols = f.BlockElements() == 256 ? 256 : 64;
            var data = Enumerable.Range(0, 2 * cols).Select(_ => (float)(r.NextDouble() - 0.5)).ToArray();
            var bytes = new byte[f.RowBytes(cols) * 2];
            BlockCodec.Quantize(f, data, bytes);
            w.AddTensor($"t.{f}", f.ToGgmlType(), [cols, 2], bytes);
        }
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        return ms.ToArray();
    }

    /// <summary>The Q4_K_M fixture's real metadata (402-token vocabulary) with four of its tensors (F32, Q5_0, Q4_K, Q6_K).</summary>
    private static byte[] FixtureExtract()
    {
        using var f = GgufFile.Open(GgufTestData.Text("Q4_K_M"));
        var w = new GgufWriter();
        foreach (var (k, v) in f.Metadata) w.Add(k, v);
        foreach (var name in new[] { "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.0.ffn_down.weight" })
        {
            var t = f.GetTensor(name);
            w.AddTensor(t.Name, t.Type, t.Dimensions, f.GetBytes(t).ToArray());
        }
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        return ms.ToArray();
    }

    // ------------------------------------------------------------------ structure map (where each numeric field is)

    private sealed record Field(int Offset, int Size, string Kind);

    private sealed record Layout(List<Field> Fields, List<(int Offset, int Length, string Text)> Names, long DataOffset);

    /// <summary>Walks a valid file and records every count, length, type, dimension and offset field and every name.</summary>
    private static Layout Map(byte[] b)
    {
        var fields = new List<Field>();
        var names = new List<(int, int, string)>();
        int p = 0;
        ulong U64(string kind) { fields.Add(new(p, 8, kind)); ulong v = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(p)); p += 8; return v; }
        uint U32(string kind) { fields.Add(new(p, 4, kind)); uint v = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(p)); p += 4; return v; }
        string Str(string kind, bool isName)
        {
            int n = (int)U64(kind);
            string s = Encoding.UTF8.GetString(b, p, n);
            if (isName) names.Add((p, n, s));
            p += n;
            return s;
        }
        void Value(uint type)
        {
            switch (type)
            {
                case 0 or 1 or 7: p += 1; break;
                case 2 or 3: p += 2; break;
                case 4 or 5 or 6: p += 4; break;
                case 10 or 11 or 12: p += 8; break;
                case 8: Str("string-length", false); break;
                case 9:
                    uint et = U32("array-type");
                    int n = (int)U64("array-length");
                    for (int i = 0; i < n; i++) Value(et);
                    break;
            }
        }
        U32("magic"); U32("version");
        int nt = (int)U64("tensor-count");
        int nkv = (int)U64("kv-count");
        for (int i = 0; i < nkv; i++) { Str("key-length", true); Value(U32("value-type")); }
        for (int i = 0; i < nt; i++)
        {
            Str("name-length", true);
            uint nd = U32("n-dims");
            for (int d = 0; d < nd; d++) U64("dim");
            U32("tensor-type");
            U64("tensor-offset");
        }
        return new Layout(fields, names, (p + 31) / 32 * 32);
    }

    private static readonly ulong[] Hostile =
    [
        0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 63, 64, 255, 256, 1023, 4095, 65535, 65536, 1UL << 24, (1UL << 24) + 1,
        int.MaxValue, (ulong)int.MaxValue + 1, uint.MaxValue, (ulong)uint.MaxValue + 1, long.MaxValue, (ulong)long.MaxValue + 1, ulong.MaxValue, ulong.MaxValue - 1,
        9, 12, 13, 14, 15, 29, 30, 34, 36, 39, 40, 100, 0x46554747, 0x03000000,
    ];

    private Gen<(string Kind, byte[] Bytes)> Mutations(byte[] valid)
    {
        var layout = Map(valid);
        int n = valid.Length, header = (int)layout.DataOffset;
        var flip = Gen.Select(Gen.Int[0, n - 1], Gen.Byte).Array[1, 8].Select(fs => ("flip", Apply(valid, fs)));
        var flipHeader = Gen.Select(Gen.Int[0, header - 1], Gen.Byte).Array[1, 4].Select(fs => ("flip-header", Apply(valid, fs)));
        var truncate = Gen.OneOf(Gen.Int[0, header + 64], Gen.Int[0, n - 1]).Select(len => ("truncate", valid.AsSpan(0, len).ToArray()));
        var extend = Gen.Byte.Array[1, 64].Select(extra => ("extend", valid.Concat(extra).ToArray()));
        var field = Gen.Select(Gen.Int[0, layout.Fields.Count - 1], Gen.OneOf(Gen.OneOf(Hostile), Gen.ULong, Gen.Int[-3, 3].Select(d => (ulong)(long)d)), Gen.Bool)
            .Select((i, v, delta) =>
            {
                var f = layout.Fields[i];
                var b = (byte[])valid.Clone();
                ulong old = f.Size == 8 ? BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(f.Offset)) : BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(f.Offset));
                ulong nv = delta && v is <= 3 or >= ulong.MaxValue - 3 ? old + v : v;
                if (f.Size == 8) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(f.Offset), nv);
                else BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(f.Offset), (uint)nv);
                return ("field:" + f.Kind, b);
            });
        var sameLength = layout.Names.GroupBy(x => x.Length).Where(g => g.Count() > 1).SelectMany(g => g.Select(x => (x, g.Where(y => y.Offset != x.Offset).ToList()))).ToList();
        var duplicate = Gen.Int[0, Math.Max(0, sameLength.Count - 1)].Select(i =>
        {
            var b = (byte[])valid.Clone();
            if (sameLength.Count == 0) return ("duplicate-name", b);
            var (target, others) = sameLength[i];
            var src = others[i % others.Count];
            Encoding.UTF8.GetBytes(src.Text).CopyTo(b, target.Offset);
            return ("duplicate-name", b);
        });
        var badUtf8 = Gen.Select(Gen.Int[0, layout.Names.Count - 1], Gen.OneOf<byte>(0xFF, 0xC0, 0x80, 0xED)).Select((i, v) =>
        {
            var b = (byte[])valid.Clone();
            b[layout.Names[i].Offset] = v;
            return ("bad-utf8", b);
        });
        var dataOnly = Gen.Select(Gen.Int[header, n - 1], Gen.Byte).Array[1, 16].Select(fs => ("data-only", Apply(valid, fs)));
        return Gen.OneOf(flip, flipHeader, truncate, extend, field, field, field, duplicate, badUtf8, dataOnly);
    }

    private static byte[] Apply(byte[] valid, (int Pos, byte Value)[] flips)
    {
        var b = (byte[])valid.Clone();
        foreach (var (pos, value) in flips) b[pos] = value;
        return b;
    }

    /// <summary>Parse, dequantize every supported tensor, and read the vocabulary when there is one.</summary>
    private static void LoadEverything(GgufFile f, byte[] valid, string kind)
    {
        foreach (var t in f.Tensors)
        {
            if (t.Type.ToQuantFormat() is null) continue;
            var values = f.ReadFloat32(t);
            Assert.Equal(t.ElementCount, values.LongLength);
            Assert.Equal(t.ByteSize, f.GetBytes(t).Length);
        }
        if (f.TryGetValue("tokenizer.ggml.tokens", out _)) GgufVocabulary.Read(f);
        if (kind == "data-only")
        {
            using var v = GgufFile.FromBytes(valid);
            Assert.Equal(v.Tensors.Select(t => (t.Name, t.Type, t.Offset, t.ByteSize)), f.Tensors.Select(t => (t.Name, t.Type, t.Offset, t.ByteSize)));
            Assert.Equal(v.Metadata.Select(kv => kv.Key), f.Metadata.Select(kv => kv.Key));
        }
    }

    [Theory]
    [InlineData("synthetic", 3000)]
    [InlineData("fixture", 1500)]
    public void Mutated_gguf_gives_ModelLoadException_or_a_correct_load(string which, int iterations)
    {
        var valid = which == "synthetic" ? _synthetic : _fixture;
        using (var ok = GgufFile.FromBytes(valid)) LoadEverything(ok, valid, "valid");
        int failures = 0, loads = 0;
        var kinds = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        var gen = Mutations(valid);
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(240), () => gen.Sample((kind, bytes) =>
        {
            var error = FuzzSupport.Attempt(() =>
            {
                using var f = GgufFile.FromBytes(bytes, "mutated.gguf");
                LoadEverything(f, valid, kind);
            }, AllocationLimit, $"{which} GGUF mutation '{kind}'");
            if (error is Xunit.Sdk.XunitException) throw error;
            FuzzSupport.AssertClean(error, $"{which} GGUF mutation '{kind}'", typeof(ModelLoadException));
            if (error is ModelLoadException mle)
            {
                Assert.Equal("mutated.gguf", mle.FilePath);
                Interlocked.Increment(ref failures);
                kinds.AddOrUpdate(kind, 1, (_, c) => c + 1);
            }
            else Interlocked.Increment(ref loads);
        }, iter: iterations));
        Assert.True(failures > iterations / 4 && loads > iterations / 20, $"the mutations should exercise both outcomes (failures {failures}, loads {loads})");
        Assert.True(kinds.Keys.Count(k => k.StartsWith("field:", StringComparison.Ordinal)) >= 8, $"refusals per kind: {string.Join(", ", kinds)}");
    }

    /// <summary>The same through the memory-mapped file path (empty, truncated and mutated files on disk).</summary>
    [Fact]
    public void Mutated_gguf_files_on_disk_fail_cleanly()
    {
        var gen = Mutations(_synthetic);
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(120), () => gen.Sample((kind, bytes) =>
        {
            string path = Path.Combine(_dirs.Current, "m.gguf");
            File.WriteAllBytes(path, bytes);
            var error = FuzzSupport.Attempt(() =>
            {
                using var f = GgufFile.Open(path);
                LoadEverything(f, _synthetic, kind);
            }, AllocationLimit, $"GGUF file mutation '{kind}'");
            if (error is Xunit.Sdk.XunitException) throw error;
            FuzzSupport.AssertClean(error, $"GGUF file mutation '{kind}'", typeof(ModelLoadException));
            if (error is ModelLoadException mle) Assert.Equal(path, mle.FilePath);
        }, iter: 400, threads: 1));
        string empty = Path.Combine(_dirs.Current, "empty.gguf");
        File.WriteAllBytes(empty, []);
        Assert.Contains("is empty", Assert.Throws<ModelLoadException>(() => GgufFile.Open(empty)).Message);
    }

    /// <summary>Each check the reader makes, on a file built to fail exactly that check, with the message it gives.</summary>
    [Fact]
    public void Each_hostile_header_gets_its_specific_error()
    {
        var layout = Map(_synthetic);
        Field F(string kind, int nth = 0) => layout.Fields.Where(f => f.Kind == kind).ElementAt(nth);
        byte[] Set(string kind, ulong v, int nth = 0)
        {
            var b = (byte[])_synthetic.Clone();
            var f = F(kind, nth);
            if (f.Size == 8) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(f.Offset), v); else BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(f.Offset), (uint)v);
            return b;
        }
        string Fails(byte[] b, GgufLimits? limits = null)
        {
            ModelLoadException? e = null;
            var err = FuzzSupport.Attempt(() => { try { GgufFile.FromBytes(b, "x.gguf", limits).Dispose(); } catch (ModelLoadException ex) { e = ex; } }, 1 << 20, "hostile");
            Assert.Null(err);
            Assert.NotNull(e);
            return e!.Message;
        }
        int tensorOffsets = layout.Fields.Count(f => f.Kind == "tensor-offset");
        Assert.Contains("not a GGUF file: it should start with the magic 'GGUF'", Fails(Set("magic", 0x46554748)));
        Assert.Contains("GGUF version 1 (32-bit counts)", Fails(Set("version", 1)));
        Assert.Contains("big-endian GGUF file", Fails(Set("version", 0x03000000)));
        Assert.Contains("GGUF version 4 is not supported", Fails(Set("version", 4)));
        Assert.Contains("declares 4294967296 tensors, above the limit of 65536", Fails(Set("tensor-count", 1UL << 32)));
        Assert.Contains("metadata entries, above the limit", Fails(Set("kv-count", ulong.MaxValue)));
        Assert.Contains("room for at most", Fails(Set("kv-count", 60000)));
        Assert.Contains("above the limit of 10 (GgufLimits.MaxMetadataEntries)", Fails(_synthetic, new GgufLimits { MaxMetadataEntries = 10 }));
        Assert.Contains("is a string of 18446744073709551615 bytes", Fails(Set("key-length", ulong.MaxValue)));
        Assert.Contains("above the limit of 65535 (GgufLimits.MaxKeyBytes)", Fails(Set("key-length", 70000)));
        Assert.Contains("has value type 13, which is not a GGUF type", Fails(Set("value-type", 13)));
        Assert.Contains("has element type 99", Fails(Set("array-type", 99)));
        Assert.Contains("declares 16777217 elements, above the limit", Fails(Set("array-length", (1UL << 24) + 1)));
        Assert.Contains("but only", Fails(Set("array-length", 1UL << 20)));
        Assert.Contains("nests arrays more than 1 deep", Fails(_synthetic, new GgufLimits { MaxArrayDepth = 1 }));
        Assert.Contains("has 5 dimensions; expected 1 to 4", Fails(Set("n-dims", 5)));
        Assert.Contains("dimension 0 = 0; expected a value between 1", Fails(Set("dim", 0)));
        Assert.Contains("whose product does not fit 64 bits", Fails(Set("dim", 1UL << 62, 1)));
        Assert.Contains("ggml type 4, which is not a known type", Fails(Set("tensor-type", 4)));
        Assert.Contains("ne0 must be a multiple of 32", Fails(Set("dim", 48, layout.Fields.Where(f => f.Kind == "dim").Select((f, i) => (f, i)).First(x => x.i % 2 == 0 && x.i / 2 == 2).i)));
        Assert.Contains("is not a multiple of the alignment 32", Fails(Set("tensor-offset", 8, 1)));
        Assert.Contains("the file is truncated or the offset is wrong", Fails(Set("tensor-offset", 1UL << 40, tensorOffsets - 1)));
        Assert.Contains("overlaps tensor", Fails(Set("tensor-offset", 0, 1)));
        Assert.Contains("is truncated", Fails(_synthetic.AsSpan(0, (int)layout.DataOffset + 10).ToArray()));
        // duplicates: two keys, two tensors
        var dupKey = (byte[])_synthetic.Clone();
        var k0 = layout.Names.First(x => x.Text == "fuzz.v1");
        Encoding.UTF8.GetBytes("fuzz.v2").CopyTo(dupKey, k0.Offset);
        Assert.Contains("metadata key 'fuzz.v2' appears twice", Fails(dupKey));
        var dupTensor = (byte[])_synthetic.Clone();
        var t0 = layout.Names.First(x => x.Text == "t.F32");
        Encoding.UTF8.GetBytes("t.F16").CopyTo(dupTensor, t0.Offset);
        Assert.Contains("tensor 't.F16' appears twice", Fails(dupTensor));
        // general.alignment: a power of two, uint32
        Assert.Contains("'general.alignment' = 48; expected a power of two", Fails(WithAlignment(GgufValue.Of(48u))));
        Assert.Contains("'general.alignment' is uint64; expected uint32", Fails(WithAlignment(GgufValue.Of(32UL))));
        var bad = (byte[])_synthetic.Clone();
        bad[layout.Names.First(x => x.Text == "fuzz.v0").Offset] = 0xFF;
        Assert.Contains("is not valid UTF-8", Fails(bad));
    }

    private static byte[] WithAlignment(GgufValue alignment)
    {
        // The writer refuses a bad alignment, so place the key by hand: a valid file with "general.alignment" = 32 (u32), patched.
        var w = new GgufWriter();
        w.Add("general.alignment", GgufValue.Of(32u));
        w.AddTensor("t", GgmlType.F32, [8], new byte[32]);
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        var b = ms.ToArray();
        int typeAt = 4 + 4 + 8 + 8 + 8 + "general.alignment".Length;
        if (alignment.Type == GgufValueType.UInt32) BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(typeAt + 4), (uint)alignment.Raw);
        else
        {
            // uint64: the value grows by 4 bytes; rebuild the tail
            var head = b.AsSpan(0, typeAt).ToArray();
            var rest = b.AsSpan(typeAt + 8).ToArray();
            var v = new byte[12];
            BinaryPrimitives.WriteUInt32LittleEndian(v, (uint)GgufValueType.UInt64);
            BinaryPrimitives.WriteUInt64LittleEndian(v.AsSpan(4), (ulong)alignment.Raw);
            b = head.Concat(v).Concat(rest).ToArray();
        }
        return b;
    }
}
