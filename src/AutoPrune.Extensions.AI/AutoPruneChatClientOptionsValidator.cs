using Microsoft.Extensions.Options;

namespace AutoPrune.Extensions.AI;

/// <summary>Runs <see cref="AutoPruneChatClientOptions.Validate"/> for the options pattern (and so for <c>ValidateOnStart</c>).</summary>
internal sealed class AutoPruneChatClientOptionsValidator : IValidateOptions<AutoPruneChatClientOptions>
{
    public ValidateOptionsResult Validate(string? name, AutoPruneChatClientOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
