using AutoPrune.Pruning;
using AutoPrune.Tests.Engine;
using Xunit;
using Xunit.Abstractions;

namespace AutoPrune.Tests.Reliability;

/// <summary>Issue 16, rows 16, 18 and 19: requests refused before anything is tokenised, decoded or queued.</summary>
[Collection(SerialReliability.Name)]
public sealed class RequestValidationTests(PublicModelFixture fx, ITestOutputHelper output) : IClassFixture<PublicModelFixture>
{
    private static readonly TestData.DevRow Row = TestData.Dev[0];
    private static VisionRequest Good => VisionRequest.Create(Row.Question, ImageInput.FromFile(TestData.Image(Row.Image))) with { Generation = new() { MaxNewTokens = 2 } };

    private async Task<T> Refused<T>(VisionRequest request, string expected) where T : Exception
    {
        var (bytes, error) = await SpecialFiles.AllocatedAsync(() => fx.Model.AskAsync(request));
        var e = Assert.IsAssignableFrom<T>(error);
        Assert.Contains(expected, e.Message);
        output.WriteLine($"{e.GetType().Name}: {bytes:N0} bytes allocated");
        Assert.True(bytes < (1L << 20), $"the refused request allocated {bytes:N0} bytes");
        return (T)error!;
    }

    public static TheoryData<float, string> Temperatures => new()
    {
        { float.PositiveInfinity, "Temperature must be a number in [0, 100] (got Infinity)" },
        { float.MaxValue, "Temperature must be a number in [0, 100]" },
        { float.NaN, "Temperature must be a number in [0, 100] (got NaN)" },
        { -0.5f, "Temperature must be a number in [0, 100] (got -0.5)" },
    };

    [Theory]
    [MemberData(nameof(Temperatures))]
    public Task Row16_temperatures_that_are_not_finite_or_in_range(float t, string expected)
        => Refused<ArgumentOutOfRangeException>(Good with { Generation = new() { Temperature = t, MaxNewTokens = 2 } }, expected);

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(-5)]
    [InlineData(double.PositiveInfinity)]
    [InlineData(0)]
    public Task Row16_a_bad_budget_is_refused_even_with_method_none(double budget)
        => Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = PruningMethod.None, Budget = budget } }, "PruningOptions.Budget");

    [Fact]
    public async Task Row16_undefined_enum_values_are_refused()
    {
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Accounting = (BudgetAccounting)7 } }, "PruningOptions.Accounting 7 is not Processed or Published");
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = (PruningMethod)42 } }, "PruningOptions.Method 42 is not a pruning method");
        await Refused<ArgumentOutOfRangeException>(Good with { Turns = [new ConversationTurn((TurnRole)9, "<image>\nHi?")] }, "role 9");
    }

    [Fact]
    public async Task Row16_nan_or_negative_method_constants_are_refused_naming_the_field()
    {
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = PruningMethod.AdaptPrune, AdaptPruneDistanceSigma = double.NaN } }, "PruningOptions.AdaptPruneDistanceSigma = NaN is out of range");
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = PruningMethod.AutoPrune, AutoPruneK0 = -1 } }, "PruningOptions.AutoPruneK0 = -1 is out of range: expected a finite number in [0, 10000]");
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = PruningMethod.SparseVLM, RecycleClusterDivisor = 0 } }, "PruningOptions.RecycleClusterDivisor = 0");
        await Refused<ArgumentOutOfRangeException>(Good with { Pruning = new PruningOptions { Method = PruningMethod.None, FastVDropRatio = double.NegativeInfinity } }, "PruningOptions.FastVDropRatio = -Infinity");
    }

    [Fact]
    public async Task Row18_a_ten_million_character_question_is_refused_before_tokenising()
    {
        string question = new('a', 10_000_000);
        var request = VisionRequest.Create(question, ImageInput.FromFile(TestData.Image(Row.Image))) with { Generation = new() { MaxNewTokens = 2 } };
        var e = await Refused<ArgumentException>(request, "The conversation is 10,000,008 characters long; the prompt limit of 1,024 tokens holds at most");
        Assert.IsNotType<ArgumentOutOfRangeException>(e);
        // Under the character bound the prompt is still tokenised, and refused by its token count.
        var byTokens = await Assert.ThrowsAsync<ArgumentException>(() => fx.Model.AskAsync(VisionRequest.Create(string.Join(" ", Enumerable.Repeat("circle", 600)), ImageInput.FromFile(TestData.Image(Row.Image)))));
        Assert.Contains("the limit is 1024", byTokens.Message);
    }

    [Fact]
    public async Task Row19_null_parts_of_a_request_are_ArgumentNullException_naming_them()
    {
        var img = ImageInput.FromFile(TestData.Image(Row.Image));
        var nullText = await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync(Good with { Turns = [new ConversationTurn(TurnRole.User, null!)] }));
        Assert.Contains("The text of turn 0 (User) is null", nullText.Message);
        var nullTurn = await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync(Good with { Turns = [null!] }));
        Assert.Contains("Turn 0 of the request is null", nullTurn.Message);
        var nullImage = await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync(Row.Question, null!));
        Assert.Contains("Image 0 of the request is null", nullImage.Message);
        await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync(Good with { Images = null! }));
        await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync(Good with { Turns = null! }));
        await Assert.ThrowsAsync<ArgumentNullException>(() => fx.Model.AskAsync((VisionRequest)null!));
        Assert.Throws<ArgumentNullException>(() => ImageInput.FromFile(null!));
        Assert.Throws<ArgumentNullException>(() => VisionRequest.Create(null!, img));
        // And the model still answers.
        Assert.Equal(Row.PromptLen, (await fx.Model.AskAsync(Good)).PromptTokens);
    }
}
