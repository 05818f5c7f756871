using System.Diagnostics;
using System.Text;
using System.Text.Json;
using AutoPrune.Tests.Cuda;
using AutoPrune.Tests.Engine;
using CsCheck;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Structured;

/// <summary>Structured output end to end on the demo model: every answer parses and validates, or the request is refused before it runs.</summary>
public sealed class StructuredOutputTests(PublicModelFixture fx, ITestOutputHelper output) : IClassFixture<PublicModelFixture>
{
    private static readonly string ImagePath = TestData.Image("images/0002.png");

    private static readonly string[] Questions = ["What shapes are in the picture?", "How many objects are there?", "Describe the image.", "What color is the circle?"];

    private static VisionRequest Ask(string question, ResponseFormat format, int maxNew = 48, float temperature = 0, int seed = 0, bool image = false) =>
        (image ? VisionRequest.Create(question, ImageInput.FromFile(ImagePath)) : VisionRequest.Create(question)) with
        {
            Generation = new GenerationOptions { MaxNewTokens = maxNew, Temperature = temperature, Seed = seed, ResponseFormat = format },
        };

    /// <summary>
    /// The done-when: 200 random schemas of the supported subset (CsCheck), each answered by the demo model
    /// (greedy and sampled, some with the image), give text that parses, has no duplicate keys and validates against
    /// the schema with JsonSchema.Net; the answer never needs more than its token budget.
    /// </summary>
    [Fact]
    public void TwoHundredRandomSchemasGiveAnswersThatParseAndValidate()
    {
        const int maxNew = 32;
        int runs = 0, tokens = 0, stopped = 0;
        var clock = Stopwatch.StartNew();
        Gen.Select(StructuredSupport.Schemas.Where(s => ResponseFormat.ForJsonSchema(s).Grammar!.MinBytes <= 24), Gen.Int[0, Questions.Length - 1], Gen.Int[0, 9], Gen.Int)
            .Sample((schema, q, mode, seed) =>
            {
                var request = Ask(Questions[q], ResponseFormat.ForJsonSchema(schema), maxNew, temperature: mode < 5 ? 0 : 1f, seed, image: mode == 0);
                var answer = fx.Model.AskAsync(request).GetAwaiter().GetResult();
                Assert.InRange(answer.TokenIds.Count, 1, maxNew);
                JsonRecognizerTests.AssertNoDuplicateKeys(answer.Text);
                var errors = StructuredSupport.Validate(schema, answer.Text);
                Assert.True(errors is null, $"schema {schema}\nanswer {answer.Text}\n{errors}");
                if (runs++ % 40 == 0) output.WriteLine($"{schema}\n  -> {answer.Text}");
                tokens += answer.TokenIds.Count;
                if (answer.FinishReason == AnswerFinishReason.Stop) stopped++;
            }, iter: 200, threads: 1);
        Assert.Equal(200, runs);
        output.WriteLine($"{runs} schemas, {tokens} tokens generated ({stopped} answers ended by the model's end token), {clock.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public async Task JsonObjectAnswersAreObjectsAndStreamTheSameText()
    {
        var request = Ask("What shapes are in the picture?", ResponseFormat.JsonObject, maxNew: 40, image: true);
        var text = new StringBuilder();
        VisionAnswer? answer = null;
        await foreach (var chunk in fx.Model.StreamAsync(request))
        {
            text.Append(chunk.Text);
            answer = chunk.Answer ?? answer;
        }
        using var doc = JsonDocument.Parse(answer!.Text);
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
        Assert.Equal(answer.Text, text.ToString());
        Assert.StartsWith("{", answer.Text);
        output.WriteLine(answer.Text);
    }

    [Fact]
    public async Task ConstAndEnumAnswersAreExactlyTheirValues()
    {
        var constant = await fx.Model.AskAsync(Ask("What shape is there?", ResponseFormat.ForJsonSchema("""{"type":"object","properties":{"shape":{"const":"circle"}},"required":["shape"]}""")));
        Assert.Equal("{\"shape\":\"circle\"}", constant.Text);
        Assert.Equal(AnswerFinishReason.Stop, constant.FinishReason); // complete and nothing else allowed: the end token is forced
        string[] colors = ["red", "green", "blue", "yellow", "purple", "orange"];
        var color = await fx.Model.AskAsync(Ask("What color is the circle?", ResponseFormat.ForJsonSchema($$"""{"enum":{{JsonSerializer.Serialize(colors)}}}"""), image: true));
        Assert.Contains(JsonSerializer.Deserialize<string>(color.Text), colors);
    }

    [Fact]
    public async Task SeededSamplingUnderAFormatIsReproducibleAndValid()
    {
        const string schema = """{"type":"object","properties":{"count":{"type":"integer"},"shapes":{"type":"array","items":{"type":"string","maxLength":8},"maxItems":3}},"required":["count","shapes"]}""";
        var a = await fx.Model.AskAsync(Ask("How many objects are there?", ResponseFormat.ForJsonSchema(schema), 60, temperature: 1.5f, seed: 7));
        var b = await fx.Model.AskAsync(Ask("How many objects are there?", ResponseFormat.ForJsonSchema(schema), 60, temperature: 1.5f, seed: 7));
        Assert.Equal(a.TokenIds, b.TokenIds);
        Assert.Null(StructuredSupport.Validate(schema, a.Text));
    }

    /// <summary>A document the budget can only just hold is finished on the last token, whatever the model wanted.</summary>
    [Fact]
    public async Task TheAnswerIsClosedWithinTheTokenBudget()
    {
        const string schema = """{"type":"object","properties":{"description":{"type":"string"},"n":{"type":"integer"}},"required":["description","n"]}""";
        int shortest = ResponseFormat.ForJsonSchema(schema).Grammar!.MinBytes; // {"description":"","n":0}
        foreach (int budget in new[] { shortest, shortest + 1, shortest + 5, 64 })
        {
            var answer = await fx.Model.AskAsync(Ask("Describe the image.", ResponseFormat.ForJsonSchema(schema), budget, temperature: 1f, seed: budget));
            Assert.True(answer.TokenIds.Count <= budget);
            Assert.Null(StructuredSupport.Validate(schema, answer.Text));
        }
    }

    [Fact]
    public async Task RequestsTheFormatCannotServeAreRefusedBeforeRunning()
    {
        const string schema = """{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"string"}},"required":["a","b"]}""";
        var tooShort = await Assert.ThrowsAsync<ArgumentException>(() => fx.Model.AskAsync(Ask("Describe the image.", ResponseFormat.ForJsonSchema(schema, "pair"), maxNew: 12)));
        Assert.Contains("JSON schema 'pair'", tooShort.Message);
        Assert.Contains("needs up to 15 tokens", tooShort.Message); // {"a":"","b":""}
        Assert.Contains("only 12", tooShort.Message);

        var withStop = Ask("Describe the image.", ResponseFormat.JsonObject) with
        { Generation = new GenerationOptions { ResponseFormat = ResponseFormat.JsonObject, StopSequences = ["}"] } };
        var stop = await Assert.ThrowsAsync<ArgumentException>(() => fx.Model.AskAsync(withStop));
        Assert.Contains("StopSequences cannot be combined with ResponseFormat JSON object", stop.Message);

        // Text is the unconstrained default; stop sequences are fine with it.
        var text = await fx.Model.AskAsync(VisionRequest.Create("How many objects are there?", ImageInput.FromFile(ImagePath)) with
        { Generation = new GenerationOptions { MaxNewTokens = 4, ResponseFormat = ResponseFormat.Text, StopSequences = ["zzz"] } });
        var plain = await fx.Model.AskAsync(VisionRequest.Create("How many objects are there?", ImageInput.FromFile(ImagePath)) with
        { Generation = new GenerationOptions { MaxNewTokens = 4 } });
        Assert.Equal(plain.TokenIds, text.TokenIds);
    }
}

/// <summary>The GPU code path (ILGPU's CPU accelerator): constrained steps download the logits and mask them on the host.</summary>
public sealed class StructuredOutputGpuPathTests(EmulatedGpuModelFixture gpu) : IClassFixture<EmulatedGpuModelFixture>
{
    [Fact]
    public async Task ConstrainedAnswersEqualTheCpuAndDownloadTheLogitsEachStep()
    {
        const string schema = """{"type":"object","properties":{"count":{"type":"integer"},"color":{"enum":["red","green","blue"]}},"required":["count","color"]}""";
        // A question without an image: the emulated device is slow, and the decode steps are what this is about.
        VisionRequest R(ResponseFormat? f) => VisionRequest.Create("How many objects are there?") with
        { Generation = new GenerationOptions { MaxNewTokens = 32, ResponseFormat = f } };
        var onGpu = await gpu.Model.AskAsync(R(ResponseFormat.ForJsonSchema(schema)));
        var onCpu = await gpu.CpuMatched.AskAsync(R(ResponseFormat.ForJsonSchema(schema)));
        Assert.Equal(onCpu.Text, onGpu.Text);
        Assert.Null(StructuredSupport.Validate(schema, onGpu.Text));
        // Each constrained step brings back the vocabulary's logits (402 floats); a free greedy step brings back one id.
        var free = await gpu.Model.AskAsync(R(null));
        int vocab = gpu.Model.Info.VocabSize;
        Assert.Equal(4L * vocab, onGpu.DeviceCounters!.DecodePerToken!.D2HBytes);
        Assert.Equal(4L, free.DeviceCounters!.DecodePerToken!.D2HBytes);
    }
}
