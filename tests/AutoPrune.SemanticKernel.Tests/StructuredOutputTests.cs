using System.Text.Json;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;
using SkText = Microsoft.SemanticKernel.TextContent;

namespace AutoPrune.SemanticKernel.Tests;

/// <summary>Semantic Kernel's <c>response_format</c>: the forms the OpenAI connector takes, through the service on the real model.</summary>
public sealed class StructuredOutputTests(ChatFixture fx) : IClassFixture<ChatFixture>
{
    public sealed record ShapeReport(string Shape, int Count);

    private ChatHistory Question(string question)
    {
        var history = new ChatHistory();
        history.AddUserMessage([new ImageContent(File.ReadAllBytes(TestData.Image(TestData.KnownImage)), "image/png"), new SkText(question)]);
        return history;
    }

    [Fact]
    public async Task A_type_as_response_format_gives_an_answer_that_deserializes_to_it()
    {
        var settings = new AutoPrunePromptExecutionSettings { MaxTokens = 48, ResponseFormat = typeof(ShapeReport) };
        var answer = await fx.Service.GetChatMessageContentAsync(Question("What shape is there, and how many?"), settings);
        var report = JsonSerializer.Deserialize<ShapeReport>(answer.Content!, JsonSerializerOptions.Web);
        Assert.NotNull(report);
        Assert.NotNull(report.Shape);
        using var doc = JsonDocument.Parse(answer.Content!);
        Assert.Equal(["shape", "count"], doc.RootElement.EnumerateObject().Select(p => p.Name));

        var asObject = await fx.Service.GetChatMessageContentAsync(Question("Describe the image."), new AutoPrunePromptExecutionSettings { MaxTokens = 32, ResponseFormat = "json_object" });
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(asObject.Content!).RootElement.ValueKind);
    }

    [Fact]
    public async Task The_OpenAI_json_form_loaded_from_settings_JSON_constrains_the_answer()
    {
        // as a prompt template's or a config file's execution settings would give it
        var generic = JsonSerializer.Deserialize<PromptExecutionSettings>("""
            {"max_tokens": 40, "response_format": {"type": "json_schema", "json_schema": {"name": "color", "schema":
              {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": false}}}}
            """)!;
        var answer = await fx.Service.GetChatMessageContentAsync(Question("What color is it?"), generic);
        var color = JsonDocument.Parse(answer.Content!).RootElement.GetProperty("color").GetString();
        Assert.Contains(color, new[] { "red", "green", "blue" });
    }

    [Fact]
    public void Every_form_translates_and_round_trips_through_JSON()
    {
        Assert.Null(new AutoPrunePromptExecutionSettings().ToChatOptions().ResponseFormat);
        Assert.IsType<ChatResponseFormatText>(new AutoPrunePromptExecutionSettings { ResponseFormat = "text" }.ToChatOptions().ResponseFormat);
        var json = Assert.IsType<ChatResponseFormatJson>(new AutoPrunePromptExecutionSettings { ResponseFormat = "json_object" }.ToChatOptions().ResponseFormat);
        Assert.Null(json.Schema);
        var typed = Assert.IsType<ChatResponseFormatJson>(new AutoPrunePromptExecutionSettings { ResponseFormat = typeof(ShapeReport) }.ToChatOptions().ResponseFormat);
        Assert.Equal("ShapeReport", typed.SchemaName);
        Assert.Equal(JsonValueKind.Object, typed.Schema!.Value.ValueKind);
        Assert.Same(ChatResponseFormat.Json, new AutoPrunePromptExecutionSettings { ResponseFormat = ChatResponseFormat.Json }.ToChatOptions().ResponseFormat);

        // A Type is written as OpenAI's json_schema object and read back as JSON, giving the same schema.
        var settings = new AutoPrunePromptExecutionSettings { ResponseFormat = typeof(ShapeReport) };
        string text = JsonSerializer.Serialize(settings);
        Assert.Contains("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"ShapeReport\"", text);
        var back = JsonSerializer.Deserialize<AutoPrunePromptExecutionSettings>(text)!;
        var again = Assert.IsType<ChatResponseFormatJson>(back.ToChatOptions().ResponseFormat);
        Assert.Equal(typed.Schema.Value.GetRawText(), again.Schema!.Value.GetRawText());
        Assert.Equal(typeof(ShapeReport), ((AutoPrunePromptExecutionSettings)settings.Clone()).ResponseFormat);

        var e = Assert.Throws<ArgumentException>(() => new AutoPrunePromptExecutionSettings { ResponseFormat = 42 }.ToChatOptions());
        Assert.Contains("response_format must be", e.Message);
        Assert.Contains("Int32", e.Message);
        Assert.Contains("\"yaml\" is not", Assert.Throws<ArgumentException>(() => new AutoPrunePromptExecutionSettings { ResponseFormat = "yaml" }.ToChatOptions()).Message);
        var noSchema = JsonSerializer.Deserialize<AutoPrunePromptExecutionSettings>("""{"response_format":{"type":"json_schema"}}""")!;
        Assert.Contains("needs \"json_schema\"", Assert.Throws<ArgumentException>(() => noSchema.ToChatOptions()).Message);
    }
}
