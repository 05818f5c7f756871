using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>Bad requests get an OpenAI-style error with the right status, naming the problem; nothing crashes the server.</summary>
[Collection(ServerCollection.Name)]
public sealed class BadInputTests(LibraryFixture library, InProcessServer server) : IClassFixture<InProcessServer>
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
        { "no final user message", """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}""", "must end with a user message", "messages" },
        { "bad base64", Valid(b => Part(b)["image_url"]!["url"] = "data:image/png;base64,@@not*base64@@"), "not valid base64", "messages[0].content[0].image_url.url" },
        { "unsupported image content type", Valid(b => Part(b)["image_url"]!["url"] = "data:text/plain;base64,aGVsbG8="), "unsupported content type", "messages[0].content[0].image_url.url" },
        { "unsupported part type", Valid(b => Part(b)["type"] = "input_audio"), "'input_audio', an unsupported content type", "messages[0].content[0].type" },
        { "file URL", Valid(b => Part(b)["image_url"]!["url"] = "file:///etc/passwd"), "must be a data: URL", "messages[0].content[0].image_url.url" },
        { "remote URL not allowed", Valid(b => Part(b)["image_url"]!["url"] = "http://example.com/a.png"), "downloads no images", "messages[0].content[0].image_url.url" },
        { "not an image", Valid(b => Part(b)["image_url"]!["url"] = "data:image/png;base64,aGVsbG8gd29ybGQ="), "is not in a format this server decodes", "messages[0].content[0].image_url.url" },
        { "image_url without url", Valid(b => Part(b)["image_url"] = new JsonObject { ["detail"] = "low" }), "'messages[0].content[0].image_url.url' must be a string", "messages[0].content[0].image_url.url" },
        { "text part not a string", Valid(b => Part(b, 1)["text"] = 3), "'messages[0].content[1].text' must be a string", "messages[0].content[1].text" },
        { "part not an object", Valid(b => b["messages"]![0]!["content"]!.AsArray()[1] = "hi"), "Invalid type for 'messages[0].content[1]'", "messages[0].content[1]" },
        { "image in an assistant message", """{"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}, {"role": "user", "content": "hi"}]}""", "images are allowed in user messages only", "messages[0].content[0]" },
        { "prompt longer than the model's context", Valid(b => Part(b, 1)["text"] = new string('x', 200_000)), "characters long", "messages" },
        { "unknown method", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "magic" }), "Unknown pruning method 'magic'", "autoprune.method" },
        { "negative budget", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "fastv", ["budget"] = -3 }), "must be > 0", "autoprune.budget" },
        { "infeasible budget", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "sparsevlm", ["budget"] = 8 }), "smallest feasible budget", "autoprune.budget" },
        { "unknown autoprune field", Valid(b => b["autoprune"] = new JsonObject { ["methd"] = "fastv" }), "'methd'", "autoprune" },
        { "n > 1", Valid(b => b["n"] = 2), "'n' must be 1", "n" },
        { "tools", Valid(b => b["tools"] = new JsonArray(new JsonObject { ["type"] = "function" })), "no function calling", "tools" },
        { "unknown response format", Valid(b => b["response_format"] = new JsonObject { ["type"] = "yaml" }), "'response_format' type 'yaml' is not supported", "response_format.type" },
        { "json_schema without a schema", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x"}}""")), "'response_format.json_schema.schema'", "response_format.json_schema.schema" },
        { "unsupported schema keyword", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"d":{"type":"string","pattern":"^a"}}}}}""")), "'pattern' at '#/properties/d/pattern'", "response_format.json_schema.schema" },
        { "response format with stop", Valid(b => { b["response_format"] = new JsonObject { ["type"] = "json_object" }; b["stop"] = "}"; }), "'stop' cannot be combined with a JSON 'response_format'", "stop" },
        { "schema longer than max_tokens", Valid(b => b["response_format"] = JsonNode.Parse("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"shape":{"type":"string"}},"required":["shape"]}}}""")), "needs up to 12 tokens", "max_tokens" },
        { "max_tokens 0", Valid(b => b["max_tokens"] = 0), "'max_tokens' must be at least 1", "max_tokens" },
        { "temperature negative", Valid(b => b["temperature"] = -1), "'temperature' must be between 0 and 2 (got -1)", "temperature" },
        { "frequency penalty", Valid(b => b["frequency_penalty"] = 0.5), "'frequency_penalty' is not supported", "frequency_penalty" },
        { "presence penalty", Valid(b => b["presence_penalty"] = 0.5), "'presence_penalty' is not supported", "presence_penalty" },
        { "presence penalty out of range", Valid(b => b["presence_penalty"] = 3), "'presence_penalty' must be between -2 and 2 (got 3)", "presence_penalty" },
        { "wrong type: presence_penalty", Valid(b => b["presence_penalty"] = "high"), "Invalid type for 'presence_penalty': expected a number", "presence_penalty" },
        { "temperature over 2", Valid(b => b["temperature"] = 5), "'temperature' must be between 0 and 2 (got 5)", "temperature" },
        { "top_p 0", Valid(b => b["top_p"] = 0), "'top_p' must be greater than 0 and at most 1 (got 0)", "top_p" },
        { "top_p over 1", Valid(b => b["top_p"] = 1.5), "'top_p' must be greater than 0 and at most 1 (got 1.5)", "top_p" },
        { "wrong type: top_p", Valid(b => b["top_p"] = "x"), "Invalid type for 'top_p': expected a number", "top_p" },
        { "max_completion_tokens 0", Valid(b => b["max_completion_tokens"] = 0), "'max_completion_tokens' must be at least 1", "max_completion_tokens" },
        { "wrong type: max_completion_tokens", Valid(b => b["max_completion_tokens"] = 1.5), "Invalid type for 'max_completion_tokens': expected an integer", "max_completion_tokens" },
        { "five stop sequences", Valid(b => b["stop"] = new JsonArray("a", "b", "c", "d", "e")), "at most 4 are allowed", "stop" },
        { "a stop sequence too long", Valid(b => b["stop"] = new JsonArray("a", new string('x', 5000))), "'stop[1]' is 5,000 characters long", "stop[1]" },
        { "a stop item not a string", Valid(b => b["stop"] = new JsonArray("a", 1)), "Invalid type for 'stop[1]'", "stop[1]" },
        { "seed over 32 bits", Valid(b => b["seed"] = 1L << 40), "'seed' must fit in a 32-bit signed integer", "seed" },
        { "wrong type: stream", Valid(b => b["stream"] = "yes"), "Invalid type for 'stream': expected a boolean", "stream" },
        { "logprobs", Valid(b => b["logprobs"] = true), "'logprobs' is not supported", "logprobs" },
        { "top_logprobs", Valid(b => b["top_logprobs"] = 2), "'top_logprobs' is not supported", "top_logprobs" },
        { "logit_bias", Valid(b => b["logit_bias"] = new JsonObject { ["50256"] = -100 }), "'logit_bias' is not supported", "logit_bias" },
        { "wrong type: logit_bias", Valid(b => b["logit_bias"] = "x"), "Invalid type for 'logit_bias'", "logit_bias" },
        { "wrong type: tools", Valid(b => b["tools"] = "x"), "Invalid type for 'tools'", "tools" },
        { "tool_choice required", Valid(b => b["tool_choice"] = "required"), "'tool_choice' can only be 'none' or 'auto'", "tool_choice" },
        { "wrong type: response_format.type", Valid(b => b["response_format"] = new JsonObject { ["type"] = 1 }), "Invalid type for 'response_format.type'", "response_format.type" },
        { "stream_options without stream", Valid(b => b["stream_options"] = new JsonObject { ["include_usage"] = true }), "'stream_options' is only allowed", "stream_options" },
        { "wrong type: autoprune.budget", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "fastv", ["budget"] = true }), "'autoprune.budget' must be a number", "autoprune.budget" },
        { "wrong type: autoprune.method", Valid(b => b["autoprune"] = new JsonObject { ["method"] = 3 }), "'autoprune.method' must be a pruning method name", "autoprune.method" },
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
        string message = (string)error["message"]!;
        Assert.Contains(words, message, StringComparison.Ordinal);
        Assert.Equal(param, (string?)error["param"]);
        // No .NET leftovers: an exception's " (Parameter 'x')" tail, or a name quoted twice.
        Assert.DoesNotContain("(Parameter", message, StringComparison.Ordinal);
        Assert.DoesNotContain("''", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Max_tokens_above_what_the_model_can_give_is_clamped_to_it_not_refused()
    {
        using var client = await server.ReadyClientAsync();
        const int Cap = 1024; // the fixture's 1,024 positions and the default MaxNewTokensLimit
        var expected = await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage, maxTokens: Cap);
        foreach (var field in new[] { "max_tokens", "max_completion_tokens" })
        {
            // What the OpenAI SDKs and many clients send by default.
            using var response = await client.SendAsync(Api.Post(Valid(b => b[field] = 16_384)));
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{field}: {(int)response.StatusCode} {text}");
            var answer = JsonNode.Parse(text)!;
            Assert.Equal(expected.Text, (string?)answer["choices"]![0]!["message"]!["content"]);
            Assert.Equal(expected.Usage!.OutputTokenCount, (long)answer["usage"]!["completion_tokens"]!);
        }
    }

    [Fact]
    public async Task Data_urls_with_escapes_or_line_wrapped_base64_give_the_same_answer()
    {
        using var client = await server.ReadyClientAsync();
        string expected = (await library.AskAsync(TestData.KnownQuestion, TestData.KnownImage)).Text;
        var base64 = Convert.ToBase64String(File.ReadAllBytes(TestData.Image(TestData.KnownImage)));
        var wrapped = string.Join("\r\n", base64.Chunk(76).Select(c => new string(c)));
        foreach (var (what, url) in new[]
                 {
                     ("plain (no escapes at all)", "data:image/png;base64," + base64),
                     ("'/' and '+' escaped", "data:image\\/png;base64," + base64.Replace("/", "\\/").Replace("+", "\\u002B")),
                     ("every character escaped", string.Concat(("data:image/png;base64," + base64).Select(c => $"\\u{(int)c:X4}"))),
                     ("wrapped at 76 characters (MIME)", "data:image/png;base64," + wrapped.Replace("\r\n", "\\r\\n")),
                 })
        {
            // Written by hand: the JSON string is exactly as given (System.Text.Json would escape '+' itself).
            string body = $$$"""{"model": "{{{Api.ModelId}}}", "max_tokens": {{{Api.MaxTokens}}}, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "{{{url}}}"}}, {"type": "text", "text": "{{{TestData.KnownQuestion}}}"}]}]}""";
            using var response = await client.SendAsync(Api.Post(body));
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{what}: {(int)response.StatusCode} {text}");
            Assert.Equal(expected, (string?)JsonNode.Parse(text)!["choices"]![0]!["message"]!["content"]);
        }
    }

    /// <summary>A body whose marker <c>XQX</c> is replaced by bytes that are not text.</summary>
    private static byte[] WithBadText(string json, bool loneSurrogate)
    {
        var bytes = Encoding.UTF8.GetBytes(json);
        int at = bytes.AsSpan().IndexOf("XQX"u8);
        Assert.True(at >= 0, "no marker in " + json);
        byte[] bad = loneSurrogate ? "\\ud800"u8.ToArray() : [(byte)'X', 0xFF, 0xFE, (byte)'X'];
        return [.. bytes.AsSpan(0, at), .. bad, .. bytes.AsSpan(at + 3)];
    }

    public static TheoryData<string, string, string?> TextCases() => new()
    {
        // where, body with the marker, param
        { "text part", Valid(b => Part(b, 1)["text"] = "How many XQX?"), "messages[0].content[1].text" },
        { "string content", """{"messages": [{"role": "user", "content": "How many XQX?"}]}""", "messages[0].content" },
        { "system content", """{"messages": [{"role": "system", "content": "Be XQX."}, {"role": "user", "content": "hi"}]}""", "messages[0].content" },
        { "stop", Valid(b => b["stop"] = "XQX"), "stop" },
        { "stop item", Valid(b => b["stop"] = new JsonArray("a", "XQX")), "stop[1]" },
        { "autoprune.method", Valid(b => b["autoprune"] = new JsonObject { ["method"] = "XQX" }), "autoprune.method" },
        { "image_url", Valid(b => Part(b)["image_url"]!["url"] = "data:image/png;base64,XQX"), "messages[0].content[0].image_url.url" },
        { "model", Valid(b => b["model"] = "XQX"), "model" },
        { "name", Valid(b => b["messages"]![0]!["name"] = "XQX"), "messages[0].name" },
        { "role", """{"messages": [{"role": "XQX", "content": "hi"}]}""", "messages[0].role" },
        { "response_format.type", Valid(b => b["response_format"] = new JsonObject { ["type"] = "XQX" }), "response_format.type" },
        { "an unknown field", Valid(b => b["user"] = "XQX"), "user" },
        { "a property name", Valid(b => b["messages"]![0]!["XQX"] = 1), "messages[0]" },
        { "a top-level property name", Valid(b => b["XQX"] = 1), null },
    };

    [Theory]
    [MemberData(nameof(TextCases))]
    public async Task Invalid_UTF8_or_a_lone_surrogate_anywhere_in_the_body_gets_400_naming_the_field(string where, string body, string? param)
    {
        using var client = await server.ReadyClientAsync();
        foreach (bool surrogate in new[] { false, true })
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new ByteArrayContent(WithBadText(body, surrogate)) };
            request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            using var response = await client.SendAsync(request);
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{where} ({(surrogate ? "\\ud800" : "0xFF 0xFE")}): {(int)response.StatusCode} {text}");
            var error = Api.Error(text);
            Assert.Equal("invalid_encoding", (string?)error["code"]);
            Assert.Equal(param, (string?)error["param"]);
            Assert.Contains("is not valid text", (string)error["message"]!);
        }
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
