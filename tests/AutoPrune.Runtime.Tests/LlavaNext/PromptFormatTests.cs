using AutoPrune.Loading.Text;
using Xunit;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>The Mistral and Vicuna prompt formats as text, where a turn's images go, and prompts whose images take different token counts.</summary>
public class PromptFormatTests
{
    [Fact]
    public void Mistral_format_single_turn_multi_turn_and_system()
    {
        Assert.Equal("[INST] <image>\nWhat is it? [/INST]", PromptFormats.Format(PromptFormat.Mistral, [("user", "<image>\nWhat is it?")]));
        Assert.Equal("[INST] q1 [/INST] a1</s>[INST] q2 [/INST]",
            PromptFormats.Format(PromptFormat.Mistral, [("user", "q1"), ("assistant", "a1"), ("user", "q2")]));
        Assert.Equal("[INST] Be brief.\n\nq1 [/INST] a1</s>",
            PromptFormats.Format(PromptFormat.Mistral, [("system", "Be brief."), ("user", "q1"), ("assistant", "a1")]));
        Assert.Equal("USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:",
            PromptFormats.Format(PromptFormat.Vicuna, [("user", "q1"), ("assistant", "a1"), ("user", "q2")]));
        Assert.Throws<ArgumentException>(() => PromptFormats.Format(PromptFormat.Mistral, [("tool", "x")]));
        Assert.Throws<ArgumentOutOfRangeException>(() => PromptFormats.Format(PromptFormat.Auto, [("user", "q")]));
    }

    /// <summary>
    /// Hugging Face's llava and llava-next chat templates render a message's images first, then its text, whatever the
    /// order of its parts: a user turn's placeholders go to its start in both formats, each followed by a newline.
    /// </summary>
    [Theory]
    [InlineData("What is it?\n<image>")]
    [InlineData("<image>\nWhat is it?")]
    [InlineData("What is it? <image>")]
    [InlineData("<image> What is it?")]
    [InlineData("<image>What is it?")]
    public void A_user_turns_images_go_first_whatever_their_place_in_the_text(string turn)
    {
        Assert.Equal("USER: <image>\nWhat is it? ASSISTANT:", PromptFormats.Format(PromptFormat.Vicuna, [("user", turn)]));
        Assert.Equal("[INST] <image>\nWhat is it? [/INST]", PromptFormats.Format(PromptFormat.Mistral, [("user", turn)]));
    }

    [Fact]
    public void Several_images_keep_their_order_at_the_start_of_their_own_turn()
    {
        Assert.Equal("<image>\n<image>\nCompare them", PromptFormats.ImagesFirst("Compare <image> them\n<image>"));
        Assert.Equal("<image>\n<image>\nleft\nand right", PromptFormats.ImagesFirst("left\n<image>\nand right\n<image>"));
        Assert.Equal("no image here", PromptFormats.ImagesFirst("no image here"));
        Assert.Equal("USER: q1 ASSISTANT: a1</s>USER: <image>\nq2 ASSISTANT:",
            PromptFormats.Format(PromptFormat.Vicuna, [("user", "q1"), ("assistant", "a1"), ("user", "q2\n<image>")]));
        Assert.Equal("[INST] Be brief.\n\n<image>\nq1 [/INST] a1</s>[INST] <image>\nq2 [/INST]",
            PromptFormats.Format(PromptFormat.Mistral, [("system", "Be brief."), ("user", "q1\n<image>"), ("assistant", "a1"), ("user", "q2\n<image>")]));
    }

    [Fact]
    public void Each_image_placeholder_takes_its_own_token_count()
    {
        var tok = LlavaTokenizer.Load(NextFixture.Model("mistral"), 400);
        var ids = tok.EncodePrompt("[INST] <image>\n<image>\nq [/INST]", [3, 5]);
        Assert.Equal(8, ids.Count(i => i == 400));
        int first = Array.IndexOf(ids, 400);
        Assert.Equal([400, 400, 400], ids[first..(first + 3)]);
        Assert.NotEqual(400, ids[first + 3]); // the newline between the two images
        Assert.Contains("placeholders", Assert.Throws<ArgumentException>(() => tok.EncodePrompt("<image><image>", [3])).Message);
    }
}
