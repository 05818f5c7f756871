using AutoPrune.Generation;
using AutoPrune.Loading;
using AutoPrune.Loading.Images;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Reliability;

/// <summary>One CPU model for the requests of <see cref="HostileFileTests"/>.</summary>
public sealed class HostileFileFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", VisionCacheSize = 0 });
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Issue 16, rows 1-7 and 9: files that are not files, files larger than they should be, and preprocessing or config
/// values that would allocate before a check. Each is refused with a specific error and a bounded allocation.
/// </summary>
[Collection(SerialReliability.Name)]
public sealed class HostileFileTests(HostileFileFixture fx, ITestOutputHelper output) : IClassFixture<HostileFileFixture>, IDisposable
{
    private const long FewMb = 4L << 20;
    private readonly string _tmp = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "autoprune-hostile-" + Guid.NewGuid().ToString("N"))).FullName;

    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    private static readonly TestData.DevRow Row = TestData.Dev[0];

    private static VisionRequest Ask(ImageInput image) => VisionRequest.Create(Row.Question, image) with { Generation = new GenerationOptions { MaxNewTokens = 2 } };

    private static ModelLoadException LoadFails(string dir, ModelOptions? options = null)
    {
        ModelLoadException? e = null;
        FuzzSupport.WithinTime(TimeSpan.FromSeconds(60), () => e = Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(dir, (options ?? new ModelOptions()) with { Device = "cpu" })));
        return e!;
    }

    /// <summary>The load fails with <see cref="ModelLoadException"/> having allocated a few kilobytes on this thread.</summary>
    private ModelLoadException LoadRefusedWithAFewKilobytes(ModelFolder model, string what)
    {
        var (bytes, error) = SpecialFiles.Allocated(() => VisionLanguageModel.Load(model.Path, new ModelOptions { Device = "cpu" }));
        var e = Assert.IsType<ModelLoadException>(error);
        output.WriteLine($"{what}: {bytes:N0} bytes allocated");
        Assert.True(bytes < FewMb, $"{what}: the refused load allocated {bytes:N0} bytes");
        return e;
    }

    [Fact]
    public async Task Row1_an_image_that_is_dev_zero_is_refused_before_reading_with_a_few_kilobytes()
    {
        var (bytes, error) = await SpecialFiles.AllocatedAsync(() => fx.Model.AskAsync(Ask(ImageInput.FromFile("/dev/zero"))));
        var e = Assert.IsType<ImageDecodeException>(error);
        Assert.Contains("'/dev/zero' is a character device, not a regular file", e.Message);
        output.WriteLine($"ask /dev/zero: {bytes:N0} bytes allocated (all threads)");
        Assert.True(bytes < FewMb, $"the refused request allocated {bytes:N0} bytes");
    }

    [Fact]
    public async Task Row2_failed_requests_keep_no_memory()
    {
        await Assert.ThrowsAsync<ImageDecodeException>(() => fx.Model.AskAsync(Ask(ImageInput.FromFile("/dev/zero")))); // warm-up
        long baseline = Settled();
        long most = 0;
        for (int i = 0; i < 20; i++)
        {
            var (bytes, error) = await SpecialFiles.AllocatedAsync(() => fx.Model.AskAsync(Ask(ImageInput.FromFile("/dev/zero"))));
            Assert.IsType<ImageDecodeException>(error);
            most = Math.Max(most, bytes);
        }
        long kept = Settled() - baseline;
        output.WriteLine($"20 refused requests: at most {most:N0} bytes allocated each, {kept:N0} bytes kept");
        Assert.True(most < FewMb, $"one refused request allocated {most:N0} bytes");
        Assert.True(kept < FewMb, $"20 refused requests left {kept:N0} bytes of managed memory behind");

        static long Settled()
        {
            for (int i = 0; i < 3; i++) { GC.Collect(); GC.WaitForPendingFinalizers(); }
            return GC.GetTotalMemory(forceFullCollection: true);
        }
    }

    [Fact]
    public async Task Row3_a_fifo_as_image_is_refused_without_waiting_for_a_writer()
    {
        var fifo = SpecialFiles.Fifo(Path.Combine(_tmp, "image.png"));
        var ask = fx.Model.AskAsync(Ask(ImageInput.FromFile(fifo)));
        Assert.Same(ask, await Task.WhenAny(ask, Task.Delay(TimeSpan.FromSeconds(20))));
        var e = await Assert.ThrowsAsync<ImageDecodeException>(() => ask);
        Assert.Contains("is a FIFO (named pipe), not a regular file", e.Message);
    }

    [Theory]
    [InlineData("config.json")]
    [InlineData("tokenizer_config.json")]
    [InlineData("preprocessor_config.json")]
    [InlineData("model.safetensors.index.json")]
    [InlineData("model-00002-of-00002.safetensors")]
    public void Row3_a_fifo_in_the_model_folder_is_refused_naming_it(string file)
    {
        using var model = new ModelFolder().MakeFifo(file);
        var e = LoadFails(model.Path);
        Assert.Contains(file, e.Message);
        Assert.Contains("FIFO", e.Message);
    }

    [Theory]
    [InlineData("config.json")]
    [InlineData("preprocessor_config.json")]
    [InlineData("tokenizer_config.json")]
    [InlineData("added_tokens.json")]
    [InlineData("model.safetensors.index.json")]
    [InlineData("tokenizer.model")]
    public void Row4_a_model_file_linked_to_dev_zero_is_refused_with_a_few_kilobytes(string file)
    {
        using var model = new ModelFolder().LinkTo(file, "/dev/zero");
        var e = LoadRefusedWithAFewKilobytes(model, $"{file} -> /dev/zero");
        Assert.Contains(file, e.Message);
        Assert.Contains("is a character device, not a regular file", e.Message);
    }

    [Fact]
    public async Task Row5_a_huge_image_file_is_refused_from_its_size_and_a_padded_one_is_read_once()
    {
        var png = File.ReadAllBytes(TestData.Image(Row.Image));
        // 1.9 GB: a valid PNG followed by sparse zeros (no disk used).
        var huge = SpecialFiles.Sparse(Path.Combine(_tmp, "huge.png"), png, 1_900_000_000);
        var (bytes, error) = await SpecialFiles.AllocatedAsync(() => fx.Model.AskAsync(Ask(ImageInput.FromFile(huge))));
        var e = Assert.IsType<ImageDecodeException>(error);
        Assert.Contains("is 1,900,000,000 bytes, above the 134,217,728-byte limit (ModelOptions.FileLimits.ImageBytes)", e.Message);
        Assert.True(bytes < FewMb, $"the refused request allocated {bytes:N0} bytes");

        // Under the limit it is answered like the plain image, and read once: 24 MB of padding costs about 24 MB, not two copies.
        var padded = SpecialFiles.Sparse(Path.Combine(_tmp, "padded.png"), png, png.Length + (24L << 20));
        var (plainBytes, _) = await SpecialFiles.AllocatedAsync(() => fx.Model.AskAsync(Ask(ImageInput.FromFile(TestData.Image(Row.Image)))));
        VisionAnswer? answer = null;
        var (paddedBytes, paddedError) = await SpecialFiles.AllocatedAsync(async () => answer = await fx.Model.AskAsync(Ask(ImageInput.FromFile(padded))));
        Assert.Null(paddedError);
        var reference = await fx.Model.AskAsync(Ask(ImageInput.FromFile(TestData.Image(Row.Image))));
        Assert.Equal(reference.TopLogits, answer!.TopLogits);
        long extra = paddedBytes - plainBytes;
        output.WriteLine($"1.9 GB image refused with {bytes:N0} bytes allocated; plain image {plainBytes:N0} bytes, +24 MB padding {paddedBytes:N0} bytes");
        Assert.True(extra < (24L << 20) * 5 / 4, $"24 MB of padding cost {extra:N0} more bytes than the plain image");

        // A smaller limit in ModelOptions applies to the same file.
        using var strict = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", FileLimits = new InputFileLimits { ImageBytes = png.Length } });
        Assert.Equal(reference.TopLogits, (await strict.AskAsync(Ask(ImageInput.FromFile(TestData.Image(Row.Image))))).TopLogits);
        var tight = await Assert.ThrowsAsync<ImageDecodeException>(() => strict.AskAsync(Ask(ImageInput.FromFile(padded))));
        Assert.Contains($"above the {png.Length:N0}-byte limit", tight.Message);
    }

    [Theory]
    [InlineData(20_000u)]
    [InlineData(40_000u)]
    public async Task Row6_pad_to_square_of_a_thin_image_is_refused_before_any_buffer(uint height)
    {
        using var padding = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", PadToSquare = true });
        var png = FuzzSupport.PngHeader(1, height); // a 1 x height PNG, about 60 bytes
        var (bytes, error) = await SpecialFiles.AllocatedAsync(() => padding.AskAsync(Ask(ImageInput.FromBytes(png))));
        var e = Assert.IsType<ImageDecodeException>(error);
        Assert.Contains($"Padding the 1x{height} image to a square (PadToSquare) needs {height}x{height}", e.Message);
        output.WriteLine($"1x{height} with PadToSquare: {bytes:N0} bytes allocated");
        Assert.True(bytes < FewMb, $"the refused request allocated {bytes:N0} bytes");
    }

    [Fact]
    public async Task Row6_pad_to_square_still_answers_ordinary_images()
    {
        using var padding = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", PadToSquare = true });
        var a = await padding.AskAsync(Ask(ImageInput.FromFile(TestData.Image(Row.Image))));
        Assert.Equal(Row.PromptLen, a.PromptTokens);
    }

    [Theory]
    [InlineData(20000, "crop_size.height = 20000 is out of range; expected 1..16384")]
    [InlineData(65536, "crop_size.height = 65536 is out of range; expected 1..16384")]
    [InlineData(224, "produces 224x224 images (crop_size 224x224), but the vision tower needs 336x336 (config.json vision_config.image_size)")]
    public void Row7_a_crop_size_out_of_range_or_unlike_the_vision_tower_fails_at_load(int crop, string expected)
    {
        using var model = new ModelFolder().EditJson("preprocessor_config.json", p => p["crop_size"] = new System.Text.Json.Nodes.JsonObject { ["height"] = crop, ["width"] = crop });
        var e = LoadRefusedWithAFewKilobytes(model, $"crop_size {crop}");
        Assert.Contains(expected, e.Message);
        Assert.EndsWith("preprocessor_config.json", e.FilePath);
    }

    [Fact]
    public void Row7_an_image_dependent_output_size_fails_at_load()
    {
        using var model = new ModelFolder().EditJson("preprocessor_config.json", p => p["do_center_crop"] = false);
        Assert.Contains("the output size would depend on each image", LoadFails(model.Path).Message);
    }

    [Theory]
    [InlineData("image_std", "[1e-45, 0.26, 0.27]", "normalised pixels must be finite and within ±10000")]
    [InlineData("image_std", "[0.26, -0.5, 0.27]", "image_std values must be positive finite numbers (image_std[1] = -0.5)")]
    [InlineData("rescale_factor", "1e300", "into Infinity")]
    [InlineData("rescale_factor", "-0.00392", "rescale_factor = -0.00392 must be a positive finite number")]
    [InlineData("image_mean", "[0.5, \"NaN\", 0.5]", "preprocessor_config.json is not valid")]
    public void Row9_preprocessing_values_that_overflow_fail_at_load(string field, string json, string expected)
    {
        using var model = new ModelFolder().EditJson("preprocessor_config.json", p => p[field] = System.Text.Json.Nodes.JsonNode.Parse(json));
        Assert.Contains(expected, LoadFails(model.Path).Message);
    }

    [Theory]
    [InlineData(1e-300)]
    [InlineData(0.5)]
    [InlineData(1e300)]
    public void Row9_a_rope_theta_that_overflows_fails_at_load(double theta)
    {
        using var model = new ModelFolder().EditJson("config.json", c => c["text_config"]!["rope_parameters"]!["rope_theta"] = theta);
        var e = LoadFails(model.Path);
        Assert.Contains("rope_parameters.rope_theta", e.Message);
        Assert.Contains("[1, 1E+12]", e.Message);
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    public async Task Row9_nan_weights_are_a_clear_error_not_an_empty_answer(string device)
    {
        using var folder = new ModelFolder().FillTensor("language_model.model.norm.weight", float.NaN);
        using var model = VisionLanguageModel.Load(folder.Path, new ModelOptions { Device = device });
        var e = await Assert.ThrowsAsync<NonFiniteLogitsException>(() => model.AskAsync(Ask(ImageInput.FromFile(TestData.Image(Row.Image)))));
        Assert.Contains("non-finite logits at the last prompt position", e.Message);
        Assert.Contains("NaN", e.Message);
    }
}
