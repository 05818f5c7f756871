using System.Text.Json.Nodes;
using AutoPrune.Loading;
using AutoPrune.Pruning;
using AutoPrune.Tests.Loading;
using Xunit;

using AutoPrune.Models.Llava;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>The two LLaVA-NeXT fixture models, loaded once for the engine tests below.</summary>
public sealed class NextModelsFixture : IDisposable
{
    public VisionLanguageModel Llama { get; } = VisionLanguageModel.Load(NextFixture.Model("llama"), new ModelOptions { Device = "cpu" });
    public VisionLanguageModel Mistral { get; } = VisionLanguageModel.Load(NextFixture.Model("mistral"), new ModelOptions { Device = "cpu" });
    public void Dispose() { Llama.Dispose(); Mistral.Dispose(); }
}

/// <summary>LLaVA-NeXT through the public API: prompt formats and conversations, the sliding window, pruning requests, checkpoint layouts.</summary>
public class NextEngineTests(NextModelsFixture fx) : IClassFixture<NextModelsFixture>
{
    private const string SmallImage = "images/06_50x60.png"; // 1080 image tokens
    private static ImageInput Image(string name = SmallImage) => ImageInput.FromFile(NextFixture.Image(name));

    private static VisionRequest Conversation(params (TurnRole Role, string Text)[] turns) => new()
    {
        Turns = turns.Select(t => new ConversationTurn(t.Role, t.Text)).ToList(),
        Images = [Image()],
        Generation = new GenerationOptions { MaxNewTokens = 3 },
    };

    /// <summary>The ids of <paramref name="text"/> as the checkpoint's tokenizer encodes a prompt (BOS, special tokens split out, image expanded).</summary>
    private static int[] Encode(string variant, string text, int imageTokens)
        => AutoPrune.Loading.Text.LlavaTokenizer.Load(NextFixture.Model(variant), 400).EncodePrompt(text, imageTokens);

    [Fact]
    public void Multi_turn_conversations_in_both_formats()
    {
        var request = Conversation((TurnRole.System, "Be brief."), (TurnRole.User, "<image>\nHow many circles?"), (TurnRole.Assistant, "Two."), (TurnRole.User, "What colour?"));
        Assert.Equal(Encode("mistral", "[INST] Be brief.\n\n<image>\nHow many circles? [/INST] Two.</s>[INST] What colour? [/INST]", 1080),
            fx.Mistral.PromptIds(request));
        Assert.Equal(Encode("llama", "Be brief. USER: <image>\nHow many circles? ASSISTANT: Two.</s>USER: What colour? ASSISTANT:", 1080),
            fx.Llama.PromptIds(request));
    }

    [Fact]
    public async Task A_second_turn_answers_and_the_format_can_be_overridden()
    {
        var request = Conversation((TurnRole.User, "<image>\nHow many circles?"), (TurnRole.Assistant, "Two."), (TurnRole.User, "What colour?"));
        var a = await fx.Mistral.AskAsync(request);
        Assert.Equal(3, a.TokenIds.Count);
        Assert.Equal(1080, a.VisualTokens);

        using var vicuna = VisionLanguageModel.Load(NextFixture.Model("mistral"), new ModelOptions { Device = "cpu", PromptFormat = PromptFormat.Vicuna });
        Assert.Equal(PromptFormat.Vicuna, vicuna.Info.PromptFormat);
        Assert.Equal(Encode("mistral", "USER: <image>\nWhat colour? ASSISTANT:", 1080),
            vicuna.PromptIds(VisionRequest.Create("What colour?", Image())));
    }

    [Theory]
    [InlineData("chat_template.json", """{"chat_template": "{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"}""", PromptFormat.Mistral)]
    [InlineData("tokenizer_config.json", """{"add_bos_token": true, "legacy": false, "chat_template": [{"name": "default", "template": "{{ '[INST] ' }}"}]}""", PromptFormat.Mistral)]
    [InlineData("chat_template.jinja", "{{ message['role'].upper() + ': ' }}", PromptFormat.Vicuna)]
    [InlineData("processor_config.json", """{"chat_template": "{{ 'hello' }}"}""", PromptFormat.Vicuna)] // unrecognised: the text model decides
    public void The_format_comes_from_the_chat_template(string file, string content, PromptFormat expected)
    {
        using var dir = CopyOf("llama");
        File.WriteAllText(dir.File(file), content);
        Assert.Equal(expected, AutoPrune.Loading.Text.PromptFormats.Detect(dir.Path, LlavaConfig.Load(dir.Path)));
    }

    [Fact]
    public void A_chat_template_in_an_unsupported_format_is_a_load_error_unless_overridden()
    {
        using var dir = CopyOf("llama");
        File.WriteAllText(dir.File("chat_template.json"), """{"chat_template": "{{ '<|im_start|>user\\n' }}"}""");
        var ex = Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(dir.Path, new ModelOptions { Device = "cpu" }));
        Assert.Contains("ChatML", ex.Message);
        Assert.Contains("PromptFormat", ex.Message);
        Assert.Equal(dir.File("chat_template.json"), ex.FilePath);
        using var model = VisionLanguageModel.Load(dir.Path, new ModelOptions { Device = "cpu", PromptFormat = PromptFormat.Mistral });
        Assert.Equal(PromptFormat.Mistral, model.Info.PromptFormat);
    }

    [Fact]
    public async Task Prompts_longer_than_the_sliding_window_are_refused_and_answers_stop_at_it()
    {
        using var dir = CopyOf("mistral");
        var config = JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!.AsObject();
        config["text_config"]!["sliding_window"] = 1105;
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());
        using var model = VisionLanguageModel.Load(dir.Path, new ModelOptions { Device = "cpu" });

        var big = VisionRequest.Create("What color is the largest circle?", Image("images/01_640x480.png"));
        var ex = await Assert.ThrowsAsync<ArgumentException>(() => model.AskAsync(big));
        Assert.Contains("sliding_window", ex.Message);
        Assert.Contains("1105", ex.Message);

        // 1103 prompt tokens leave 2 inside the window.
        var small = VisionRequest.Create("How many circles are there?", Image()) with { Generation = new GenerationOptions { MaxNewTokens = 10 } };
        var a = await model.AskAsync(small);
        Assert.Equal(1103, a.PromptTokens);
        Assert.Equal(2, a.TokenIds.Count);
        Assert.Equal(AnswerFinishReason.Length, a.FinishReason);
    }

    [Fact]
    public async Task A_pruning_method_asked_for_or_by_default_prunes_the_image_and_none_counts_its_patches()
    {
        var request = VisionRequest.Create("How many circles are there?", Image()) with
        { Generation = new GenerationOptions { MaxNewTokens = 1 }, Pruning = new PruningOptions { Method = PruningMethod.FastV, Budget = 400 } };
        var fastv = await fx.Llama.AskAsync(request);
        Assert.Equal(PruningMethod.FastV, fastv.Report.Method);
        Assert.InRange(fastv.Report.AvgVisualTokensProcessed, 399, 400); // within one token, never above
        Assert.Empty(fastv.Report.Notes);

        using var model = VisionLanguageModel.Load(NextFixture.Model("llama"),
            new ModelOptions { Device = "cpu", DefaultPruning = new PruningOptions { Method = PruningMethod.AutoPrune, Budget = 128 } });
        var a = await model.AskAsync(request with { Pruning = null });
        Assert.Equal(PruningMethod.AutoPrune, a.Report.Method);
        Assert.Equal(128, a.Report.AvgVisualTokensProcessed, 6);

        // Unpruned, every layer sees the image's 1056 visual tokens: 576 base-view patches, then 24 rows of 20 tile patches
        // (a 50x60 image fills 20 of the 48 columns of its 1x2 tiles); each of those rows is followed by an image_newline
        // token, which is in the prompt (1080 image tokens) but is no patch, never pruned and not counted.
        var none = await fx.Llama.AskAsync(request with { Pruning = new PruningOptions { Method = PruningMethod.None } });
        Assert.Equal(1080, none.VisualTokens);
        Assert.All(none.Report.VisualTokensPerLayer, n => Assert.Equal(1056, n));
        Assert.All(none.Report.KeptIndicesPerLayer, k => Assert.Equal(Enumerable.Range(0, 576 + 24 * 20), k));
        Assert.NotNull(none.Report.Patches);
    }

    [Fact]
    public async Task Image_bytes_give_what_the_file_gives_and_two_images_take_their_own_counts()
    {
        var file = await fx.Llama.AskAsync(VisionRequest.Create("Describe the image.", Image("images/02_480x640.png")) with { Generation = new() { MaxNewTokens = 2 } });
        var bytes = await fx.Llama.AskAsync(VisionRequest.Create("Describe the image.",
            ImageInput.FromBytes(File.ReadAllBytes(NextFixture.Image("images/02_480x640.png")))) with { Generation = new() { MaxNewTokens = 2 } });
        Assert.Equal(file.TopLogits, bytes.TopLogits);
        Assert.Equal(2352, bytes.VisualTokens);

        var two = VisionRequest.Create("Compare them.", Image(), Image("images/00_336x336.png")) with { Generation = new() { MaxNewTokens = 1 } };
        var a = await fx.Llama.AskAsync(two);
        Assert.Equal(1080 + 1176, a.VisualTokens);
        Assert.Equal(1080 + 1176, fx.Llama.PromptIds(two).Count(id => id == 400));
    }

    [Fact]
    public async Task Newer_key_names_load_alike_and_a_missing_image_newline_is_a_load_error_naming_it()
    {
        using var renamed = CopyOf("llama");
        RewriteWeights(renamed, name => name switch
        {
            "image_newline" => "model.image_newline",
            "language_model.lm_head.weight" => "lm_head.weight",
            _ when name.StartsWith("language_model.model.", StringComparison.Ordinal) => "model.language_model." + name["language_model.model.".Length..],
            _ => "model." + name,
        });
        using (var m = VisionLanguageModel.Load(renamed.Path, new ModelOptions { Device = "cpu" }))
        {
            var request = VisionRequest.Create("How many circles are there?", Image()) with { Generation = new() { MaxNewTokens = 1 } };
            Assert.Equal((await fx.Llama.AskAsync(request)).TopLogits, (await m.AskAsync(request)).TopLogits);
        }

        using var missing = CopyOf("llama");
        RewriteWeights(missing, name => name == "image_newline" ? null : name);
        var ex = Assert.Throws<ModelLoadException>(() => VisionLanguageModel.Load(missing.Path, new ModelOptions { Device = "cpu" }));
        Assert.Contains("image_newline", ex.Message);
        Assert.Contains("model.safetensors", ex.Message);
    }

    [Fact]
    public async Task Bad_images_fail_before_queueing_from_their_header()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("not.png"), "not an image");
        var png = File.ReadAllBytes(NextFixture.Image("images/01_640x480.png"));
        File.WriteAllBytes(dir.File("header-only.png"), png[..200]);
        Assert.Equal((640, 480), AutoPrune.Loading.Images.ImagePreprocessor.ReadSizeFile(dir.File("header-only.png"), 1_000_000, new InputFileLimits().ImageBytes));

        var ex = Assert.Throws<AutoPrune.Loading.Images.ImageDecodeException>(() => fx.Llama.PromptIds(VisionRequest.Create("q", ImageInput.FromFile(dir.File("not.png")))));
        Assert.Contains("not.png", ex.Message);
        Assert.Throws<AutoPrune.Loading.Images.ImageDecodeException>(() => fx.Llama.PromptIds(VisionRequest.Create("q", ImageInput.FromFile(dir.File("missing.png")))));
        // The header is all there is: the token count is known, decoding then fails cleanly.
        await Assert.ThrowsAsync<AutoPrune.Loading.Images.ImageDecodeException>(() =>
            fx.Llama.AskAsync(VisionRequest.Create("q", ImageInput.FromFile(dir.File("header-only.png")))));

        using var small = VisionLanguageModel.Load(NextFixture.Model("llama"), new ModelOptions { Device = "cpu", MaxImagePixels = 1000 });
        var big = Assert.Throws<AutoPrune.Loading.Images.ImageDecodeException>(() => small.PromptIds(VisionRequest.Create("q", ImageInput.FromBytes(png))));
        Assert.Contains("MaxPixels", big.Message);
    }

    private static TempDir CopyOf(string variant)
    {
        var dir = new TempDir();
        foreach (var f in Directory.GetFiles(NextFixture.Model(variant))) File.Copy(f, dir.File(Path.GetFileName(f)));
        return dir;
    }

    /// <summary>Writes the folder's weights again (fp16) under new names; a null name drops the tensor.</summary>
    private static void RewriteWeights(TempDir dir, Func<string, string?> rename)
    {
        var tensors = new List<(string, DType, long[], float[])>();
        using (var store = TensorNames.Open(dir.Path))
            foreach (var name in store.Names)
                if (rename(name) is { } to)
                {
                    var info = store.GetInfo(name);
                    tensors.Add((to, DType.F16, info.Shape, store.ReadFloat32(name, info.Shape)));
                }
        SafeTensorWriter.Write(dir.File("model.safetensors"), tensors);
    }
}
