using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using Xunit;

namespace AutoPrune.Extensions.AI.Tests;

/// <summary><see cref="ChatOptions.ResponseFormat"/>: JSON and JSON-schema answers from the real model through the chat client.</summary>
public sealed class StructuredOutputTests(ModelFixture fx) : IClassFixture<ModelFixture>
{
    /// <summary>What <c>GetResponseAsync&lt;T&gt;</c> asks for: the schema Microsoft.Extensions.AI generates for this type.</summary>
    public sealed record ShapeReport(int Count, string Color, bool HasCircle);

    [Fact]
    public async Task GetResponseAsync_of_a_type_returns_an_instance_deserialized_from_a_constrained_answer()
    {
        using var client = fx.Client(o => o.MaxOutputTokens = 64);
        var response = await client.GetResponseAsync<ShapeReport>([ModelFixture.Question("0002.png", "How many objects are there?")]);
        Assert.True(response.TryGetResult(out var report), response.Text);
        Assert.NotNull(report);
        Assert.NotNull(report.Color);
        using var doc = JsonDocument.Parse(response.Text);
        Assert.Equal(["count", "color", "hasCircle"], doc.RootElement.EnumerateObject().Select(p => p.Name)); // schema order, all required
    }

    [Fact]
    public async Task Json_and_a_json_schema_give_parseable_answers_streaming_too()
    {
        using var client = fx.Client(o => o.MaxOutputTokens = 40);
        var json = await client.GetResponseAsync([ModelFixture.Question("0002.png", "What shapes are there?")], new ChatOptions { ResponseFormat = ChatResponseFormat.Json });
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(json.Text).RootElement.ValueKind);

        var schema = JsonDocument.Parse("""{"type":"object","properties":{"shape":{"enum":["circle","square","triangle"]},"count":{"type":"integer"}},"required":["shape","count"]}""").RootElement;
        var options = new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(schema, "shape_count") };
        var text = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync([ModelFixture.Question("0002.png", "Which shape is the largest?")], options))
            text.Append(update.Text);
        var root = JsonDocument.Parse(text.ToString()).RootElement;
        Assert.Contains(root.GetProperty("shape").GetString(), new[] { "circle", "square", "triangle" });
        Assert.Equal(JsonValueKind.Number, root.GetProperty("count").ValueKind);
    }

    [Fact]
    public void The_format_reaches_the_request_and_unsupported_schemas_are_refused_naming_the_keyword()
    {
        using var client = fx.Client();
        var asJson = client.CreateRequest([new ChatMessage(ChatRole.User, "q")], new ChatOptions { ResponseFormat = ChatResponseFormat.Json });
        Assert.Equal(ResponseFormat.JsonObject, asJson.Generation.ResponseFormat);
        var schema = JsonDocument.Parse("""{"type":"string"}""").RootElement;
        var asSchema = client.CreateRequest([new ChatMessage(ChatRole.User, "q")], new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(schema, "s") });
        Assert.Equal(ResponseFormatKind.JsonSchema, asSchema.Generation.ResponseFormat!.Kind);
        Assert.Equal("s", asSchema.Generation.ResponseFormat.SchemaName);
        Assert.Null(client.CreateRequest([new ChatMessage(ChatRole.User, "q")], new ChatOptions { ResponseFormat = ChatResponseFormat.Text }).Generation.ResponseFormat);

        var bad = JsonDocument.Parse("""{"type":"object","properties":{"when":{"type":"string","format":"date-time"}}}""").RootElement;
        var e = Assert.ThrowsAny<ArgumentException>(() => client.CreateRequest([new ChatMessage(ChatRole.User, "q")], new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(bad) }));
        Assert.Contains("'format' at '#/properties/when/format'", e.Message);
        Assert.Equal(ChatOptionSupport.Supported, ChatOptionsSupport.Table[nameof(ChatOptions.ResponseFormat)]);
    }
}
