using AutoPrune.Loading.Text;
using Xunit;

namespace AutoPrune.Tests.LlavaNext;

/// <summary>The Mistral prompt format as text, and prompts whose images take different token counts.</summary>
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
