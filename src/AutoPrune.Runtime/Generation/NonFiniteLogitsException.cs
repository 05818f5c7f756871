namespace AutoPrune.Generation;

/// <summary>
/// The model computed NaN or infinite logits: its weights, or config values such as <c>rope_theta</c> or the image
/// normalisation, do not give finite numbers. Raised instead of answering with whatever token a NaN comparison picks.
/// </summary>
public sealed class NonFiniteLogitsException : InvalidOperationException
{
    public NonFiniteLogitsException(string message) : base(message) { }

    /// <summary>Throws when any logit is NaN or infinite; <paramref name="where"/> says at which step.</summary>
    internal static void ThrowIfAny(ReadOnlySpan<float> logits, string where)
    {
        int nan = 0, inf = 0;
        foreach (float x in logits)
        {
            if (float.IsNaN(x)) nan++;
            else if (float.IsInfinity(x)) inf++;
        }
        if (nan + inf == 0) return;
        throw new NonFiniteLogitsException(
            $"The model produced non-finite logits at {where} ({nan} NaN and {inf} infinite of {logits.Length}): the checkpoint's weights, or " +
            "config values such as rope_theta, rms_norm_eps or the image normalisation, do not give finite numbers. No answer was generated.");
    }
}
