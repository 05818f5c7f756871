using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using AutoPrune.Loading;
using CsCheck;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.Reliability;

/// <summary>
/// Fuzz-style properties for the safetensors loader, the shard index and config.json: thousands of
/// mutated files give either a <see cref="ModelLoadException"/> with a message or a load whose every
/// tensor reads back with the element count its shape says, never another exception type, never a
/// slow attempt, never an allocation proportional to a size the file claims.
/// </summary>
public sealed partial class SafeTensorFuzzTests : IDisposable
{
    private const long AllocationLimit = 1 << 20; // the valid file is ~1 KB; 1 MB is far above any honest cost and far below any lie

    private readonly PerThreadDirs _dirs = new();
    private readonly byte[] _valid;
    private readonly int _headerLength;
    private readonly (string Name, long[] Shape)[] _tensors;

    public SafeTensorFuzzTests()
    {
        string path = Path.Combine(_dirs.Current, "valid.safetensors");
        var rnd = new Random(7);
        float[] Data(int n) => Enumerable.Range(0, n).Select(_ => (float)rnd.NextDouble() - 0.5f).ToArray();
        SafeTensorWriter.Write(path,
        [
            ("model.a.weight", DType.F32, [4, 8], Data(32)),
            ("model.b.bias", DType.F16, [3, 5], Data(15)),
            ("model.c.weight", DType.BF16, [2, 2, 3], Data(12)),
            ("model.empty", DType.F32, [0, 4], []),
            ("model.scalar", DType.F32, [], Data(1)),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        _valid = File.ReadAllBytes(path);
        File.Delete(path);
        _headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(_valid);
        _tensors = [("model.a.weight", [4, 8]), ("model.b.bias", [3, 5]), ("model.c.weight", [2, 2, 3]), ("model.empty", [0, 4]), ("model.scalar", [])];
    }

    public void Dispose() => _dirs.Dispose();

    // ------------------------------------------------------------------ mutations

    private static readonly string[] InterestingNumbers =
    [
        "-1", "0", "1", "7", "8", "63", "64", "65", "4294967295", "4294967296", "2147483647", "2147483648",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "-9223372036854775808",
        "1e300", "1.5", "-0", "1E2", "00", "100000000", "1000000000000",
    ];

    private static readonly string[] InterestingDTypes = ["F64", "I32", "BOOL", "", "f32", "F16 ", "BF16\\u0000", "U8", "F8_E4M3", "null"];

    private byte[] WithHeader(string header, bool fixLength)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var data = _valid.AsSpan(8 + _headerLength);
        var result = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, fixLength ? (ulong)h.Length : (ulong)_headerLength);
        h.CopyTo(result, 8);
        data.CopyTo(result.AsSpan(8 + h.Length));
        return result;
    }

    private string HeaderText => Encoding.UTF8.GetString(_valid, 8, _headerLength);

    [GeneratedRegex(@"-?\d+")] private static partial Regex NumberRx();
    [GeneratedRegex(@"""(F32|F16|BF16)""")] private static partial Regex DTypeRx();

    private Gen<(string Kind, byte[] Bytes)> Mutations()
    {
        int n = _valid.Length;
        var flipAnywhere = Gen.Select(Gen.Int[0, n - 1], Gen.Byte).Array[1, 8]
            .Select(fs => ("flip", Apply(_valid, fs)));
        var flipHeader = Gen.Select(Gen.Int[0, 8 + _headerLength - 1], Gen.Byte).Array[1, 4]
            .Select(fs => ("flip-header", Apply(_valid, fs)));
        var lengthPrefix = Gen.OneOf<ulong>(
                Gen.OneOf<ulong>(0UL, 1UL, 2UL, 7UL, (ulong)_headerLength - 1, (ulong)_headerLength + 1, (ulong)n - 8, (ulong)n - 7, (ulong)n,
                    100_000_000UL, 100_000_001UL, (ulong)int.MaxValue, (ulong)int.MaxValue + 1, long.MaxValue, ulong.MaxValue),
                Gen.ULong)
            .Select(len => { var b = (byte[])_valid.Clone(); BinaryPrimitives.WriteUInt64LittleEndian(b, len); return ("length-prefix", b); });
        var truncate = Gen.Int[0, n - 1].Select(len => ("truncate", _valid.AsSpan(0, len).ToArray()));
        var extend = Gen.Byte.Array[1, 64].Select(extra => ("extend", _valid.Concat(extra).ToArray()));
        var numbers = NumberRx().Matches(HeaderText);
        var replaceNumber = Gen.Select(Gen.Int[0, numbers.Count - 1], Gen.OneOf<string>(Gen.OneOf(InterestingNumbers), Gen.Long.Select(v => v.ToString())), Gen.Bool)
            .Select((i, v, fix) => ("json-number", WithHeader(Replace(HeaderText, numbers[i], v), fix)));
        var swapNumbers = Gen.Select(Gen.Int[0, numbers.Count - 1], Gen.Int[0, numbers.Count - 1])
            .Select((i, j) => ("json-swap", WithHeader(Swap(HeaderText, numbers[i], numbers[j]), true)));
        var dtypes = DTypeRx().Matches(HeaderText);
        var replaceDType = Gen.Select(Gen.Int[0, dtypes.Count - 1], Gen.OneOf<string>(Gen.OneOf(InterestingDTypes), Gen.OneOf("F32", "F16", "BF16")))
            .Select((i, v) => ("json-dtype", WithHeader(HeaderText[..dtypes[i].Index] + "\"" + v + "\"" + HeaderText[(dtypes[i].Index + dtypes[i].Length)..], true)));
        var deleteSpan = Gen.Select(Gen.Int[0, _headerLength - 1], Gen.Int[1, 24], Gen.Bool)
            .Select((at, len, fix) => ("json-delete", WithHeader(HeaderText.Remove(at, Math.Min(len, _headerLength - at)), fix)));
        var insert = Gen.Select(Gen.Int[0, _headerLength], Gen.Char["{}[]\",:-0123456789.eE aFBnul\\"].Array[1, 12])
            .Select((at, cs) => ("json-insert", WithHeader(HeaderText.Insert(at, new string(cs)), true)));
        var escape = Gen.Select(Gen.Int[0, _headerLength], Gen.OneOf("\\ud800", "\\udfff", "\\u0000", "\\\"", "\\x41", "\\", "\u00e9", "\ud83d\ude00"))
            .Select((at, e) => ("json-escape", WithHeader(HeaderText.Insert(at, e), true)));
        var renameTensor = Gen.Select(Gen.Int[0, _tensors.Length - 1], Gen.Int[0, _tensors.Length - 1])
            .Select((i, j) => ("json-duplicate-name", WithHeader(HeaderText.Replace($"\"{_tensors[i].Name}\"", $"\"{_tensors[j].Name}\""), true)));
        var dataOnly = Gen.Select(Gen.Int[8 + _headerLength, n - 1], Gen.Byte).Array[1, 16]
            .Select(fs => ("data-only", Apply(_valid, fs)));
        return Gen.OneOf(flipAnywhere, flipHeader, lengthPrefix, truncate, extend, replaceNumber, swapNumbers, replaceDType, deleteSpan, insert, escape, renameTensor, dataOnly);
    }

    private static byte[] Apply(byte[] valid, (int Pos, byte Value)[] flips)
    {
        var b = (byte[])valid.Clone();
        foreach (var (pos, value) in flips) b[pos] = value;
        return b;
    }

    private static string Replace(string s, Match m, string v) => s[..m.Index] + v + s[(m.Index + m.Length)..];

    private static string Swap(string s, Match a, Match b)
    {
        if (a.Index == b.Index) return s;
        if (a.Index > b.Index) (a, b) = (b, a);
        return s[..a.Index] + b.Value + s[(a.Index + a.Length)..b.Index] + a.Value + s[(b.Index + b.Length)..];
    }

    // ------------------------------------------------------------------ properties

    private static int s_attempts, s_failures, s_loads;

    [Fact]
    public void Mutated_safetensors_file_gives_ModelLoadException_or_a_correct_load()
    {
        var gen = Mutations();
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(180), () => gen.Sample((kind, bytes) =>
        {
            string dir = _dirs.Current;
            string path = Path.Combine(dir, SafeTensorStore.SingleFileName);
            File.WriteAllBytes(path, bytes);
            var error = FuzzSupport.Attempt(() =>
            {
                using var store = TensorNames.Open(dir);
                foreach (var name in store.Names)
                {
                    var info = store.GetInfo(name);
                    var values = store.ReadFloat32(name);
                    Assert.Equal(info.Shape.Aggregate(1L, (a, d) => a * d), values.LongLength);
                }
                if (kind == "data-only")
                {
                    // Only tensor bytes changed: the structure must load exactly as written.
                    Assert.Equal(_tensors.Select(t => t.Name).Order(StringComparer.Ordinal), store.Names);
                    foreach (var (name, shape) in _tensors) Assert.Equal(shape, store.GetInfo(name).Shape);
                }
            }, AllocationLimit, $"safetensors mutation '{kind}'");
            Interlocked.Increment(ref s_attempts);
            if (error is Xunit.Sdk.XunitException) throw error;
            FuzzSupport.AssertClean(error, $"safetensors mutation '{kind}'", typeof(ModelLoadException));
            if (error is null) Interlocked.Increment(ref s_loads); else Interlocked.Increment(ref s_failures);
            if (error is ModelLoadException mle) Assert.NotNull(mle.FilePath);
        }, iter: 4000));
        Assert.True(s_failures > 1000 && s_loads > 100, $"the mutations should exercise both outcomes (failures {s_failures}, loads {s_loads})");
    }

    private static readonly string[] HostileShardPaths =
    [
        "../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", "C:\\Windows\\win.ini", "\\\\server\\share\\x.safetensors",
        "shard-1.safetensors\u0000.txt", "", " ", "..", ".", "./shard-1.safetensors", "sub/shard-1.safetensors", "shard-1.safetensors/..",
        "..\\outside.safetensors", "%2e%2e/outside.safetensors", new string('a', 5000), "shard-1.safetensors", "shard-2.safetensors",
        "~/outside.safetensors", "\u2024\u2024/outside.safetensors",
    ];

    [Fact]
    public void Hostile_shard_index_never_escapes_the_folder()
    {
        string root = Path.Combine(Path.GetTempPath(), "autoprune-index-fuzz-" + Guid.NewGuid().ToString("N"));
        string ckpt = Directory.CreateDirectory(Path.Combine(root, "ckpt")).FullName;
        try
        {
            // A valid decoy outside the checkpoint folder: loading it would mean an escape.
            File.WriteAllBytes(Path.Combine(root, "outside.safetensors"), _valid);
            SafeTensorWriter.Write(Path.Combine(ckpt, "shard-1.safetensors"), [("x.weight", DType.F32, [2], [1f, 2f])]);
            SafeTensorWriter.Write(Path.Combine(ckpt, "shard-2.safetensors"), [("y.weight", DType.F32, [1], [3f])]);
            var shardGen = Gen.OneOf(Gen.OneOf(HostileShardPaths), Gen.String[Gen.Char["./\\a:~\0"], 0, 12]);
            var indexGen = Gen.Select(shardGen, shardGen, Gen.Int[0, 3], Gen.Int[0, 200], Gen.String[Gen.Char["{}[]\",:x"], 0, 6]);
            FuzzSupport.WithinTime(TimeSpan.FromSeconds(120), () => indexGen.Sample((s1, s2, edit, at, junk) =>
            {
                string index = "{\"metadata\":{},\"weight_map\":{\"model.x.weight\":" + System.Text.Json.JsonSerializer.Serialize(s1) +
                               ",\"model.y.weight\":" + System.Text.Json.JsonSerializer.Serialize(s2) + "}}";
                if (edit == 1) index = index.Insert(Math.Min(at, index.Length), junk);
                if (edit == 2) index = index.Remove(Math.Min(at, index.Length - 1), 1);
                File.WriteAllText(Path.Combine(ckpt, SafeTensorStore.IndexFileName), index);
                SafeTensorStore? loaded = null;
                var error = FuzzSupport.Attempt(() => loaded = TensorNames.Open(ckpt), AllocationLimit, "index");
                FuzzSupport.AssertClean(error, $"index {index}", typeof(ModelLoadException));
                if (loaded is not null)
                {
                    using (loaded)
                        Assert.All(loaded.Files, f => Assert.StartsWith(ckpt + Path.DirectorySeparatorChar, f));
                }
            }, iter: 1500, threads: 1));
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [GeneratedRegex(@"(?<=[:\[,]\s*)-?\d+(\.\d+)?(?=\s*[,\]}])")] private static partial Regex JsonNumberRx();

    /// <summary>
    /// config.json with any number replaced by an absurd one, end to end through <see cref="VisionLanguageModel.Load"/>
    /// against the real weights: a clean <see cref="ModelLoadException"/> or a model whose shape matches the weights,
    /// and never an allocation sized by the config's claim (the honest load of this model allocates ~25 MB).
    /// </summary>
    [Fact]
    public void Absurd_config_numbers_fail_cleanly_end_to_end()
    {
        string dir = Path.Combine(Path.GetTempPath(), "autoprune-config-fuzz-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var f in Directory.GetFiles(TestData.ModelDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            string config = File.ReadAllText(Path.Combine(TestData.ModelDir, "config.json"));
            var numbers = JsonNumberRx().Matches(config);
            Assert.True(numbers.Count > 20);
            string[] absurd = ["-1", "0", "1", "3", "1000000000", "2147483647", "-2147483648", "16777216", "65536", "1e9", "0.5", "99999999999"];
            var gen = Gen.Select(Gen.Int[0, numbers.Count - 1], Gen.OneOf(absurd));
            int loaded = 0, refused = 0;
            FuzzSupport.WithinTime(TimeSpan.FromSeconds(150), () => gen.Sample((i, v) =>
            {
                File.WriteAllText(Path.Combine(dir, "config.json"), Replace(config, numbers[i], v));
                VisionLanguageModel? model = null;
                var error = FuzzSupport.Attempt(() => model = VisionLanguageModel.Load(dir, new ModelOptions { Device = "cpu" }),
                    96L << 20, $"config.json with {numbers[i].Value} -> {v} at {numbers[i].Index}", slow: TimeSpan.FromSeconds(30));
                if (error is Xunit.Sdk.XunitException) throw error;
                FuzzSupport.AssertClean(error, $"config.json with {numbers[i].Value} -> {v} at {numbers[i].Index}", typeof(ModelLoadException));
                if (model is null) { refused++; return; }
                using (model) { loaded++; Assert.Equal(192, model.Info.HiddenSize); Assert.Equal(576, model.Info.VisualTokensPerImage); }
            }, iter: 120, threads: 1));
            Assert.True(refused > 30, $"refused {refused}, loaded {loaded}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
