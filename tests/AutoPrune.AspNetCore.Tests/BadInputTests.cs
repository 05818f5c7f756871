using System.Net;
using System.Text.Json.Nodes;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>Bad requests get an OpenAI-style error with the right status, naming the problem; nothing crashes the server.</summary>
[Collection(ServerCollection.Name)]
public sealed class BadInputTests(InProcessServer server) : IClassFixture<InProcessServer>
{
    private static string Valid(Action<JsonObject>? change = null)
    {
        var body = Api.Body("How many blue objects are there?", TestData.KnownImage);
        change?.Invoke(body);
        return body.ToJsonString();
    }

    private static JsonObject Part(JsonObject body, int index = 0) => body["messages"]![0]!["content"]![index]!.AsObject();

    public static TheoryData<string, string, string, string?> Cases() => new()
    {
        // name, body, words the message must contain, param
        { "malformed JSON", """{"messages": [{"role": "user", "content": "hi"}""", "not valid JSON", null },
        { "not an object", "[1, 2]", "must be a JSON object", null },
        { "empty body", "", "empty", null },
        { "wrong type: max_tokens", Valid(b => b["max_tokens"] = "eight"), "Invalid type for 'max_tokens': expected an integer", "max_tokens" },
        { "wrong type: temperature", Valid(b => b["temperature"] = true), "Invalid type for 'temperature': expected a number", "temperature" },
        { "wrong type: messages", Valid(b => b["messages"] = "hi"), "Invalid type for 'messages': expected an array", "messages" },
        { "wrong type: content", Valid(b => b["messages"]![0]!["content"] = 5), "Invalid type for 'messages[0].content'", "messages[0].content" },
        { "wrong type: stop", Valid(b => b["stop"] = 3), "Invalid type for 'stop'", "stop" },
        { "missing messages", """{"model": "shapes-llava-tiny"}""", "Missing required parameter: 'messages'", "messages" },
        { "empty messages", """{"messages": []}""", "at least one message", "messages" },
        { "missing role", """{"messages": [{"content": "hi"}]}""", "'messages[0].role'", "messages[0].role" },
        { "tool role", """{"messages": [{"role": "tool", "content": "hi"}]}""", "'tool'", "messages[0].role" },
        { "no final user message", """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}""", "must end with a user message", null },
        { "bad base64", Valid(b => Part(b)["image_url"]!["url"] = "data:image/png;base64,@@not*base64@@"), "not valid base64", "messages[0].content[0].image_url.url" },
        { "unsupported image content type", Valid(b => Part(b)["image_url"]!["url"] = "data:text/plain;base64,aGVsbG8="), "unsupported content type", "messages[0].content[0].image_url.url" },
        { "unsupported part type", Valid(b => Part(b)["type"] = "input_audio"), "'input_audio', an unsupported content type", "messages[0].content[0].type" },
        { "file URL", Valid(b => Part(b)["image_url"]!["url"] = "file:///etc/passwd"), "must be a data: URL", "messages[0].content[0].image_url.url" },
        { "remote URL not allowed", Valid(b => Part(b)["image_url"]!["url"] = "http://example.com/a.png"), "downloads no images", "messages[0].content[0].image_url.url" },
        { "not an image", Valid(b => Part(b)["image_url"]!["url"] = "data:image/png;base64,aGVsbG8gd29ybGQ="), "image", null },
        { "unknown method", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "magic" }), "Unknown pruning method 'magic'", "autoprune.method" },
        { "negative budget", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "fastv", ["budget"] = -3 }), "must be > 0", "autoprune.budget" },
        { "infeasible budget", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "sparsevlm", ["budget"] = 8 }), "smallest feasible budget", "autoprune.budget" },
        { "unknown autoprune field", Valid(b => b["autoprune"] = new JsonObject { ["methd"] = "fastv" }), "'methd'", "autoprune" },
        { "n > 1", Valid(b => b["n"] = 2), "'n' must be 1", "n" },
        { "tools", Valid(b => b["tools"] = new JsonArray(new JsonObject { ["type"] = "function" })), "no function calling", "tools" },
        { "unknown response format", Valid(b => b["response_format"] = new JsonObject { ["type"] = "yaml" }), "'response_format' type 'yaml' is not supported", "response_format.type" },
        { "json_schema without a schema", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x"}}""")), "'response_format.json_schema.schema'", "response_format.json_schema.schema" },
        { "unsupported schema keyword", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"d":{"type":"string","pattern":"^a"}}}}}""")), "'pattern' at '#/properties/d/pattern'", "response_format.json_schema.schema" },
        { "response format with stop", Valid(b => { b["response_format"] = new JsonObject { ["type"] = "json_object" }; b["stop"] = "}"; }), "StopSequences cannot be combined", null },
        { "schema longer than max_tokens", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"shape":{"type":"string"}},"required":["shape"]}}}""")), "needs up to 12 tokens", null },
        { "max_tokens 0", Valid(b => b["max_tokens"] = 0), "'max_tokens' must be at least 1", "max_tokens" },
        { "max_tokens over the limit", Valid(b => b["max_tokens"] = 1_000_000), "MaxNewTokens", null },
        { "temperature negative", Valid(b => b["temperature"] = -1), "emperature", null },
        { "frequency penalty", Valid(b => b["frequency_penalty"] = 0.5), "FrequencyPenalty", null },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Bad_input_gets_400_with_an_OpenAI_error_naming_the_problem(string name, string body, string words, string? param)
    {
        using var client = await server.ReadyClientAsync();
        using var response = await client.SendAsync(Api.Post(body));
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{name}: {(int)response.StatusCode} {text}");
        var error = Api.Error(text);
        Assert.Equal("invalid_request_error", (string?)error["type"]);
        Assert.Contains(words, (string)error["message"]!, StringComparison.Ordinal);
        if (param is not null) Assert.Equal(param, (string?)error["param"]);
    }

    [Fact]
    public async Task Images_over_the_limits_get_400_and_bodies_over_the_limit_413()
    {
        var image = File.ReadAllBytes(TestData.Image(TestData.KnownImage)).Length;
        await using var small = new InProcessServer(Api.Settings(
            ("AutoPrune:Server:MaxImageBytes", (image - 1).ToString()),
            ("AutoPrune:Server:MaxImagesPerRequest", "1"),
            ("AutoPrune:Server:MaxRequestBodyBytes", "65536"),
            ("AutoPrune:ModelOptions:MaxImagePixels", "100")));
        using var client = await small.ReadyClientAsync();

        using var big = await client.SendAsync(Api.Post(Valid()));
        var error = Api.Error(await big.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.BadRequest, big.StatusCode);
        Assert.Equal("image_too_large", (string?)error["code"]);
        Assert.Contains($"limit is {image - 1:N0} bytes", (string)error["message"]!);

        var twoImages = Api.Body("How many?", "0003.png");
        twoImages["messages"]![0]!["content"]!.AsArray().Insert(0, new JsonObject { ["type"] = "image_url", ["image_url"] = new JsonObject { ["url"] = "data:image/png;base64,AAAA" } });
        using var two = await client.SendAsync(Api.Post(twoImages.ToJsonString()));
        Assert.Equal(HttpStatusCode.BadRequest, two.StatusCode);
        Assert.Equal("too_many_images", (string?)Api.Error(await two.Content.ReadAsStringAsync())["code"]);

        using var huge = await client.SendAsync(Api.Post(Api.Body(new string('a', 70_000)).ToJsonString()));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, huge.StatusCode);
        Assert.Contains("65,536 bytes", (string)Api.Error(await huge.Content.ReadAsStringAsync())["message"]!);

        // An image whose header says it has more pixels than the model's limit (AutoPrune:ModelOptions:MaxImagePixels) is refused before decoding.
        using var bitmap = new SkiaSharp.SKBitmap(20, 20);
        bitmap.Erase(SkiaSharp.SKColors.Red);
        using var png = SkiaSharp.SKImage.FromBitmap(bitmap).Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
        Assert.True(png.Size < image);
        var wide = Api.Body("How many?", TestData.KnownImage);
        wide["messages"]![0]!["content"]![0]!["image_url"]!["url"] = "data:image/png;base64," + Convert.ToBase64String(png.ToArray());
        using var pixels = await client.SendAsync(Api.Post(wide.ToJsonString()));
        Assert.Equal(HttpStatusCode.BadRequest, pixels.StatusCode);
        Assert.Contains("pixels", (string)Api.Error(await pixels.Content.ReadAsStringAsync())["message"]!);
    }

    [Fact]
    public async Task Missing_or_wrong_key_gets_401_other_content_types_415_unknown_models_404_and_the_server_stays_ready()
    {
        await using var keyed = new InProcessServer(Api.Settings(("AutoPrune:Server:ApiKeys:0", Api.Key)));
        using var client = await keyed.ReadyClientAsync();
        foreach (var key in new[] { null, "wrong", Api.Key + "x", "" })
        {
            using var denied = await client.SendAsync(Api.Post(Valid(), key));
            Assert.Equal(HttpStatusCode.Unauthorized, denied.StatusCode);
            Assert.Equal("authentication_error", (string?)Api.Error(await denied.Content.ReadAsStringAsync())["type"]);
            Assert.Equal("Bearer", denied.Headers.WwwAuthenticate.Single().Scheme);
            using var models = await client.GetAsync("/v1/models");
            Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);
        }
        using var ok = await client.SendAsync(Api.Post(Valid(), Api.Key));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);

        using var form = await client.SendAsync(Api.Post(Valid(), Api.Key, "application/x-www-form-urlencoded"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, form.StatusCode);
        Assert.Contains("application/json", (string)Api.Error(await form.Content.ReadAsStringAsync())["message"]!);

        using var model = await client.SendAsync(Api.Post(Valid(b => b["model"] = "gpt-4o"), Api.Key));
        Assert.Equal(HttpStatusCode.NotFound, model.StatusCode);
        Assert.Equal("model_not_found", (string?)Api.Error(await model.Content.ReadAsStringAsync())["code"]);

        using var ready = await client.GetAsync("/ready");
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
    }
}
