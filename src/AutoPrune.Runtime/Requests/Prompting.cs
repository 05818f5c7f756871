namespace AutoPrune;

/// <summary>Prompt conventions shared by every surface.</summary>
public static class Prompting
{
    public const string ImagePlaceholder = "<image>";
}
