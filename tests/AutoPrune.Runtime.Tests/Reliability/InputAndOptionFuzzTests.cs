using System.Reflection;
using System.Text;
using System.Text.Json.Nodes;
using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using AutoPrune.Pruning;
using CsCheck;
using Xunit;

namespace AutoPrune.Tests.Reliability;

/// <summary>
/// Issue 16's fuzz properties for the new checks: special files and sizes around every limit (<see cref="InputFile"/>),
/// numeric extremes in every numeric field of config.json and preprocessor_config.json, and in every pruning and
/// sampling value of a request. Each outcome is a specific exception of the documented type or a correct result.
/// </summary>
public sealed class InputAndOptionFuzzTests : IDisposable
{
    private readonly PerThreadDirs _dirs = new();
    public void Dispose() => _dirs.Dispose();

    private enum Kind { Regular, Fifo, CharDevice, Directory, LinkToRegular, Missing }

    [Fact]
    public void Special_files_and_sizes_around_the_limit_are_read_exactly_or_refused_by_name()
    {
        var gen = Gen.Select(Gen.Enum<Kind>(), Gen.Int[1, 4096], Gen.Int[-2, 2], Gen.Int[1, 200]);
        int read = 0, refused = 0;
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(180), () => gen.Sample((kind, limit, delta, lineCap) =>
        {
            string dir = _dirs.Current, path = Path.Combine(dir, "f-" + Guid.NewGuid().ToString("N"));
            int size = Math.Max(0, limit + delta);
            var content = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Range(0, size).Select(i => i % 37 == 36 ? '\n' : (char)('a' + i % 26))));
            switch (kind)
            {
                case Kind.Regular: File.WriteAllBytes(path, content); break;
                case Kind.Fifo: SpecialFiles.Fifo(path); break;
                case Kind.CharDevice: File.CreateSymbolicLink(path, "/dev/zero"); break;
                case Kind.Directory: Directory.CreateDirectory(path); break;
                case Kind.LinkToRegular: File.WriteAllBytes(path + ".target", content); File.CreateSymbolicLink(path, path + ".target"); break;
            }
            byte[]? bytes = null;
            var error = FuzzSupport.Attempt(() => bytes = InputFile.ReadAllBytes(path, limit, "Fuzz file"), 2L * limit + (64 << 10), $"{kind} of {size} bytes, limit {limit}");
            FuzzSupport.AssertClean(error, $"{kind}", typeof(InputFileException));
            bool regular = kind is Kind.Regular or Kind.LinkToRegular;
            if (regular && size <= limit)
            {
                Assert.Null(error);
                Assert.Equal(content, bytes);
                // Lines come back as written, those over the cap flagged (and never held).
                var lines = InputFile.ReadLines(path, limit, lineCap, "Fuzz file").ToList();
                var expected = Encoding.ASCII.GetString(content).Split('\n');
                if (expected[^1].Length == 0) expected = expected[..^1];
                Assert.Equal(expected.Length, lines.Count);
                for (int i = 0; i < lines.Count; i++)
                {
                    Assert.Equal(i + 1, lines[i].Number);
                    Assert.Equal(expected[i].Length > lineCap ? null : expected[i], lines[i].Text);
                }
                Interlocked.Increment(ref read);
                return;
            }
            Assert.NotNull(error);
            Assert.Contains(path, error!.Message);
            Assert.Contains(kind switch
            {
                Kind.Fifo => "is a FIFO (named pipe), not a regular file",
                Kind.CharDevice => "is a character device, not a regular file",
                Kind.Directory => "is a directory, not a regular file",
                Kind.Missing => "does not exist",
                _ => $"-byte limit",
            }, error.Message);
            Interlocked.Increment(ref refused);
        }, iter: 600));
        Assert.True(read > 50 && refused > 200, $"read {read}, refused {refused}");
    }

    private static readonly double[] Extremes =
    [
        0, -1, 1, 2, 0.5, 1e-300, -1e-300, 1e-45, 1e300, -1e300, 1e12, 1e13, 65535, 65536, 16384, 16385, 2147483647, 2147483648, -2147483648,
        9007199254740993, 336, 14, 1e-5, 0.999999,
    ];

    /// <summary>Every numeric leaf of a JSON tree, as (path, parent, key or index).</summary>
    private static List<string> NumericPaths(JsonNode node, string prefix = "")
    {
        var paths = new List<string>();
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o) if (v is not null) paths.AddRange(NumericPaths(v, prefix.Length == 0 ? k : prefix + "." + k));
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++) if (a[i] is not null) paths.AddRange(NumericPaths(a[i]!, $"{prefix}[{i}]"));
                break;
            case JsonValue v when v.GetValueKind() == System.Text.Json.JsonValueKind.Number:
                paths.Add(prefix);
                break;
        }
        return paths;
    }

    private static void Set(JsonNode root, string path, double value)
    {
        var parts = path.Split('.');
        JsonNode node = root;
        for (int i = 0; i < parts.Length - 1; i++) node = Step(node, parts[i]);
        var last = parts[^1];
        int bracket = last.IndexOf('[');
        if (bracket < 0) node[last] = JsonValue.Create(value);
        else Step(node, last[..bracket]).AsArray()[int.Parse(last[(bracket + 1)..^1])] = JsonValue.Create(value);

        static JsonNode Step(JsonNode n, string part)
        {
            int b = part.IndexOf('[');
            return b < 0 ? n[part]! : n[part[..b]]!.AsArray()[int.Parse(part[(b + 1)..^1])]!;
        }
    }

    [Fact]
    public void Extreme_numbers_in_every_numeric_config_field_give_ModelLoadException_or_a_model_with_finite_answers()
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.ModelDir, "config.json")))!;
        var pre = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.ModelDir, "preprocessor_config.json")))!;
        var fields = NumericPaths(config).Select(p => ("config.json", p)).Concat(NumericPaths(pre).Select(p => ("preprocessor_config.json", p))).ToArray();
        Assert.True(fields.Length > 30, $"only {fields.Length} numeric fields found");
        var image = File.ReadAllBytes(TestData.Image(TestData.Dev[0].Image));
        int loaded = 0, refused = 0;
        var gen = Gen.Select(Gen.Int[0, fields.Length - 1], Gen.OneOf(Gen.Int[0, Extremes.Length - 1].Select(i => Extremes[i]), Gen.Double[-1e6, 1e6]));
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(480), () => gen.Sample((fi, value) =>
        {
            var (file, path) = fields[fi];
            using var folder = new ModelFolder().EditJson(file, n => Set(n, path, value));
            VisionLanguageModel? model = null;
            var error = FuzzSupport.Attempt(() => model = VisionLanguageModel.Load(folder.Path, new ModelOptions { Device = "cpu", MaxImagePixels = 4_000_000 }),
                256L << 20, $"{file} {path} = {value}", TimeSpan.FromSeconds(20));
            FuzzSupport.AssertClean(error, $"{file} {path} = {value}", typeof(ModelLoadException));
            if (model is null) { Interlocked.Increment(ref refused); return; }
            using (model)
            {
                Interlocked.Increment(ref loaded);
                // A model that loads answers with finite logits, or says its numbers are not finite; never anything else.
                try
                {
                    var a = model.AskAsync(VisionRequest.Create("How many?", ImageInput.FromBytes(image)) with { Generation = new() { MaxNewTokens = 1 } }).GetAwaiter().GetResult();
                    Assert.All(a.TopLogits, t => Assert.True(float.IsFinite(t.Logit)));
                }
                catch (Exception e) when (e is NonFiniteLogitsException or ImageDecodeException) { }
                // A context shorter than the image's tokens (max_position_embeddings = 336, say) refuses the request by its sizes.
                catch (ArgumentException e) when (e.Message.Contains("the limit is", StringComparison.Ordinal)) { }
                // A context so short (max_position_embeddings = 1, say) that the question's characters alone exceed it is refused before tokenising.
                catch (ArgumentException e) when (e.Message.Contains("the prompt limit of", StringComparison.Ordinal)) { }
            }
        }, iter: 60, threads: 1));
        Assert.True(loaded > 3 && refused > 10, $"loaded {loaded}, refused {refused}");
    }

    private static readonly PropertyInfo[] PruningFields = typeof(PruningOptions).GetProperties()
        .Where(p => p.PropertyType == typeof(double) || p.PropertyType == typeof(int)).ToArray();

    [Fact]
    public void Extreme_numbers_in_every_pruning_and_sampling_value_are_refused_by_name_or_run_cleanly()
    {
        var shape = new ModelShape(8, 4, 192, 512, 576, 24);
        var options = new ModelOptions();
        var request = VisionRequest.Create("How many?", ImageInput.FromBytes(new byte[] { 1 }));
        var extremes = Gen.OneOf(Gen.Int[0, Extremes.Length - 1].Select(i => Extremes[i]), Gen.Double, Gen.Double[-2, 2],
            Gen.OneOf(Gen.Const(double.NaN), Gen.Const(double.PositiveInfinity), Gen.Const(double.NegativeInfinity)));
        var temperatures = Gen.OneOf(Gen.Float[0, 2], Gen.Float[0, 2], Gen.Float, Gen.OneOf(Gen.Const(float.NaN), Gen.Const(float.PositiveInfinity), Gen.Const(float.MaxValue), Gen.Const(-0.5f)));
        var gen = Gen.Select(Gen.Enum<PruningMethod>(), Gen.Int[0, PruningFields.Length - 1], extremes, temperatures, Gen.Float[0, 1]);
        int ran = 0, refused = 0;
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(180), () => gen.Sample((method, fi, value, temperature, topP) =>
        {
            var field = PruningFields[fi];
            object boxed = field.PropertyType == typeof(int) ? (object)(int)Math.Clamp(double.IsNaN(value) ? 0 : value, int.MinValue, int.MaxValue) : value;
            var pruning = new PruningOptions { Method = method, Budget = 192 };
            field.SetValue(pruning, boxed);
            var req = request with { Pruning = pruning, Generation = new() { Temperature = temperature, TopP = topP, MaxNewTokens = 2 } };
            Exception? error = null;
            try
            {
                RequestValidator.Validate(req, options, 1_000_000, 1024);
                if (pruning.Method != PruningMethod.None) _ = new PruningSession(shape, pruning, 0);
            }
            catch (Exception e) { error = e; }
            if (error is null) { Interlocked.Increment(ref ran); return; }
            Assert.True(error is ArgumentException, $"{field.Name} = {value}, temperature {temperature}: {error}");
            bool badSampling = !(temperature >= 0 && temperature <= 100) || !(topP > 0);
            if (error is InfeasibleBudgetException) { Interlocked.Increment(ref refused); return; }
            if (!badSampling && error is ArgumentOutOfRangeException && error.Message.Contains("PruningOptions."))
                Assert.Contains($"PruningOptions.{field.Name}", error.Message);
            Interlocked.Increment(ref refused);
        }, iter: 3000));
        Assert.True(ran > 100 && refused > 300, $"ran {ran}, refused {refused}");
    }

    [Fact]
    public void Image_size_plans_never_exceed_the_pixel_limit_at_any_stage()
    {
        var sides = Gen.OneOf(Gen.Int[1, 64], Gen.Int[1, 100_000], Gen.Const(int.MaxValue), Gen.Const(1), Gen.Const(336));
        var gen = Gen.Select(sides, sides, Gen.Bool, Gen.Int[1, 16384], Gen.Bool, Gen.Long[1, 600_000_000]);
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(120), () => gen.Sample((w, h, pad, side, crop, maxPixels) =>
        {
            var c = new ClipPreprocessorConfig { Size = new() { ShortestEdge = side }, DoCenterCrop = crop, CropSize = new() { Height = side, Width = side } };
            ImageSizePlan plan;
            try { plan = ImageSizePlan.Create(w, h, pad, c, maxPixels); }
            catch (ImageDecodeException e) { Assert.Contains("MaxPixels", e.Message); return; }
            long limit = Math.Min(maxPixels, ImageSizePlan.MaxBufferPixels);
            Assert.True((long)w * h <= limit);
            Assert.True((long)plan.PaddedSide * plan.PaddedSide <= limit);
            Assert.True((long)plan.ResizedWidth * plan.ResizedHeight <= limit && (long)plan.ResizedWidth * Math.Max(h, plan.PaddedSide) <= limit);
            Assert.True((long)plan.OutputWidth * plan.OutputHeight <= limit);
        }, iter: 5000));
    }
}
