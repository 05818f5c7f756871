using AutoPrune.Models.Qwen2VL;
using Xunit;

namespace AutoPrune.Tests.Qwen;

/// <summary>Qwen2.5-VL's ChatML template as its Jinja chat_template renders it.</summary>
public class Qwen2VLChatTemplateTests
{
    private const string Sys = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
    private const string Img = "<|vision_start|><|image_pad|><|vision_end|>";

    [Theory]
    [MemberData(nameof(QwenFixture.AllCases), MemberType = typeof(QwenFixture))]
    public void One_turn_renders_the_fixture_prompt(string checkpoint, int index)
    {
        var c = QwenFixture.Cases(checkpoint)[index];
        var parts = c.Image is null ? new[] { Qwen2VLPart.OfText(c.Question) } : [Qwen2VLPart.Image, Qwen2VLPart.OfText(c.Question)];
        string rendered = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(parts)]);
        // The fixture's prompt_text has the pads already expanded; collapse them back to the template's one pad.
        string collapsed = System.Text.RegularExpressions.Regex.Replace(c.PromptText, "(<\\|image_pad\\|>)+", "<|image_pad|>");
        Assert.Equal(collapsed, rendered);
    }

    [Fact]
    public void Several_images_go_where_they_are_in_the_content()
    {
        string s = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.OfText("Compare "), Qwen2VLPart.Image, Qwen2VLPart.OfText(" and "), Qwen2VLPart.Image, Qwen2VLPart.OfText("."))]);
        Assert.Equal($"{Sys}<|im_start|>user\nCompare {Img} and {Img}.<|im_end|>\n<|im_start|>assistant\n", s);
        string ids = Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.Image, Qwen2VLPart.Image)], addVisionId: true);
        Assert.Equal($"{Sys}<|im_start|>user\nPicture 1: {Img}Picture 2: {Img}<|im_end|>\n<|im_start|>assistant\n", ids);
    }

    [Fact]
    public void A_system_message_replaces_the_default_and_turns_follow_in_order()
    {
        string s = Qwen2VLChatTemplate.Render(
        [
            Qwen2VLMessage.System("Be brief."),
            Qwen2VLMessage.User(Qwen2VLPart.Image, Qwen2VLPart.OfText("What is it?")),
            Qwen2VLMessage.Assistant("A circle."),
            Qwen2VLMessage.User(Qwen2VLPart.OfText("Colour?")),
        ]);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n" +
                     $"<|im_start|>user\n{Img}What is it?<|im_end|>\n" +
                     "<|im_start|>assistant\nA circle.<|im_end|>\n" +
                     "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n", s);
        Assert.Equal($"{Sys}<|im_start|>user\nHi<|im_end|>\n", Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.OfText("Hi"))], addGenerationPrompt: false));
    }

    [Fact]
    public void Bad_conversations_are_refused()
    {
        Assert.Contains("video inputs are not supported yet", Assert.Throws<NotSupportedException>(() =>
            Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(new Qwen2VLPart(Qwen2VLPartKind.Video))])).Message);
        Assert.Contains("only the first message", Assert.Throws<ArgumentException>(() =>
            Qwen2VLChatTemplate.Render([Qwen2VLMessage.User(Qwen2VLPart.OfText("a")), Qwen2VLMessage.System("b")])).Message);
        Assert.Contains("role 'tool'", Assert.Throws<ArgumentException>(() =>
            Qwen2VLChatTemplate.Render([new Qwen2VLMessage("tool", [Qwen2VLPart.OfText("x")])])).Message);
    }

    [Fact]
    public void The_runtimes_turns_become_messages()
    {
        // VisionRequest.Create writes "<image>\n" before the question; Qwen puts the question right after the image.
        var request = VisionRequest.Create("How many circles?", ImageInput.FromBytes(new byte[] { 1 }), ImageInput.FromBytes(new byte[] { 2 }));
        var messages = Qwen2VLChatTemplate.FromTurns(request.Turns);
        Assert.Equal($"{Sys}<|im_start|>user\n{Img}{Img}How many circles?<|im_end|>\n<|im_start|>assistant\n", Qwen2VLChatTemplate.Render(messages));
        var turns = new[] { new ConversationTurn(TurnRole.System, "S"), new ConversationTurn(TurnRole.User, "see <image> here\n\nnow"), new ConversationTurn(TurnRole.Assistant, "ok") };
        Assert.Equal($"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nsee {Img} here\n\nnow<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n",
            Qwen2VLChatTemplate.Render(Qwen2VLChatTemplate.FromTurns(turns), addGenerationPrompt: false));
    }
}
