using Xunit;

namespace AutoPrune.Tests.Engine;

/// <summary>Agreement with Hugging Face transformers' greedy answers and top-5 logits on the dev set.</summary>
public sealed class DevSetAgreementTests(PublicModelFixture fx) : IClassFixture<PublicModelFixture>
{
    /// <summary>Every 8th dev row in the fast suite; `AUTOPRUNE_FULL_DEV=1` runs all 208.</summary>
    public static TheoryData<int> Rows => new(TestData.Dev
        .Where((r, i) => Environment.GetEnvironmentVariable("AUTOPRUNE_FULL_DEV") == "1" || i % 8 == 0)
        .Select(r => r.Id));

    [Theory]
    [MemberData(nameof(Rows))]
    public async Task AnswerAndTop5MatchTransformers(int id)
    {
        var row = TestData.Dev.Single(r => r.Id == id);
        var answer = await fx.Model.AskAsync(row.Question, ImageInput.FromFile(TestData.Image(row.Image)),
            new GenerationOptions { MaxNewTokens = 8 });
        Assert.Equal(row.PromptLen, answer.PromptTokens);
        Assert.Equal(row.Top5Ids, answer.TopLogits.Select(t => t.Id).ToArray());
        for (int i = 0; i < 5; i++)
            Assert.InRange(answer.TopLogits[i].Logit, row.Top5Logits[i] - 1e-3f, row.Top5Logits[i] + 1e-3f);
        Assert.Equal(row.HfPred, answer.Text.Trim());
        Assert.Equal(AnswerFinishReason.Stop, answer.FinishReason);
    }
}
