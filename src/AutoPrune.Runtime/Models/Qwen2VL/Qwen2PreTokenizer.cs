using System.Buffers;
using System.Globalization;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// The Qwen2 pre-tokenizer: Hugging Face tokenizers' <c>Split</c> with the pattern
/// <see cref="Pattern"/> and behaviour <c>Isolated</c>, written out as a scanner over Unicode code points.
/// <para>
/// A .NET <see cref="System.Text.RegularExpressions.Regex"/> with the same pattern matches UTF-16 code units, so a letter
/// or digit outside the Basic Multilingual Plane (a surrogate pair, category Cs to the regex) would be split where the
/// Rust engine, which matches code points, keeps it whole. The pattern's alternatives, in their order (the first
/// alternative that matches at a position wins, as in a backtracking engine):
/// <list type="number">
/// <item><c>(?i:'s|'t|'re|'ve|'m|'ll|'d)</c>: an English contraction (case-insensitive, so <c>ſ</c> U+017F counts as s).</item>
/// <item><c>[^\r\n\p{L}\p{N}]?\p{L}+</c>: letters, with at most one leading character that is neither CR/LF, letter nor number.</item>
/// <item><c>\p{N}</c>: one number character.</item>
/// <item><c> ?[^\s\p{L}\p{N}]+[\r\n]*</c>: a run of other characters (optionally after one space), and the line breaks after it.</item>
/// <item><c>\s*[\r\n]+</c>: whitespace up to and including its last line break.</item>
/// <item><c>\s+(?!\S)</c>: whitespace but its last character when text follows (that one joins the next word).</item>
/// <item><c>\s+</c>: whitespace.</item>
/// </list>
/// Every character is matched by one of them, so the pieces tile the text. <c>\s</c> is Unicode White_Space
/// (<see cref="Rune.IsWhiteSpace"/>).
/// </para>
/// </summary>
internal sealed class Qwen2PreTokenizer : PreTokenizer
{
    /// <summary>The pattern as Qwen2's <c>tokenizer.json</c> writes it (pre_tokenizer Split, Regex).</summary>
    public const string Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static Qwen2PreTokenizer Instance { get; } = new();

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text)
        => text is null ? [] : Split(text.AsSpan());

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

    /// <summary>The pieces of <paramref name="text"/> as (offset, length) in UTF-16 units.</summary>
    public static List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
    {
        // Code points with their UTF-16 offsets; an unpaired surrogate stands for itself (category Cs, "other").
        var runes = new List<(int Value, int Offset)>(text.Length);
        for (int i = 0; i < text.Length;)
        {
            if (Rune.DecodeFromUtf16(text[i..], out var r, out int used) == OperationStatus.Done)
                runes.Add((r.Value, i));
            else
                runes.Add((text[i], i));
            i += Math.Max(used, 1);
        }
        var pieces = new List<(int, int)>();
        int n = runes.Count, pos = 0;
        while (pos < n)
        {
            int len = MatchAt(runes, pos);
            int start = runes[pos].Offset;
            int end = pos + len < n ? runes[pos + len].Offset : text.Length;
            pieces.Add((start, end - start));
            pos += len;
        }
        return pieces;
    }

    private enum Kind { Letter, Number, Space, Other }

    private static Kind KindOf(int cp)
    {
        if (cp is >= 0xD800 and <= 0xDFFF) return Kind.Other;
        var rune = new Rune(cp);
        if (Rune.IsWhiteSpace(rune)) return Kind.Space;
        switch (Rune.GetUnicodeCategory(rune))
        {
            case UnicodeCategory.UppercaseLetter:
            case UnicodeCategory.LowercaseLetter:
            case UnicodeCategory.TitlecaseLetter:
            case UnicodeCategory.ModifierLetter:
            case UnicodeCategory.OtherLetter:
                return Kind.Letter;
            case UnicodeCategory.DecimalDigitNumber:
            case UnicodeCategory.LetterNumber:
            case UnicodeCategory.OtherNumber:
                return Kind.Number;
            default:
                return Kind.Other;
        }
    }

    private static bool IsLineBreak(int cp) => cp is '\r' or '\n';

    /// <summary>ASCII letter after simple case folding (ſ folds to s), or 0.</summary>
    private static char Fold(int cp) => cp switch
    {
        >= 'A' and <= 'Z' => (char)(cp + 32),
        >= 'a' and <= 'z' => (char)cp,
        0x017F => 's',
        _ => '\0',
    };

    /// <summary>Length in code points of the match at <paramref name="i"/> (always at least 1).</summary>
    private static int MatchAt(List<(int Value, int Offset)> r, int i)
    {
        int n = r.Count;
        int c = r[i].Value;
        Kind k = KindOf(c);

        // 1. Contractions.
        if (c == '\'' && i + 1 < n)
        {
            char a = Fold(r[i + 1].Value);
            if (a is 's' or 't' or 'm' or 'd') return 2;
            if (i + 2 < n)
            {
                char b = Fold(r[i + 2].Value);
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
            }
        }

        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if (k == Kind.Letter) return LetterRun(r, i) - i;
        if (k != Kind.Number && !IsLineBreak(c) && i + 1 < n && KindOf(r[i + 1].Value) == Kind.Letter)
            return 1 + LetterRun(r, i + 1) - (i + 1);

        // 3. \p{N}
        if (k == Kind.Number) return 1;

        // 4. " ?[^\s\p{L}\p{N}]+[\r\n]*"
        int j = -1;
        if (k == Kind.Other) j = i;
        else if (c == ' ' && i + 1 < n && KindOf(r[i + 1].Value) == Kind.Other) j = i + 1;
        if (j >= 0)
        {
            while (j < n && KindOf(r[j].Value) == Kind.Other) j++;
            while (j < n && IsLineBreak(r[j].Value)) j++;
            return j - i;
        }

        // Only whitespace is left (k == Space).
        int end = i;
        while (end < n && KindOf(r[end].Value) == Kind.Space) end++;

        // 5. \s*[\r\n]+ : up to and including the run's last line break.
        for (int m = end - 1; m >= i; m--)
            if (IsLineBreak(r[m].Value)) return m + 1 - i;

        // 6. \s+(?!\S) : the whole run at the end of the text, else all of it but its last character.
        if (end == n) return end - i;
        if (end - 1 > i) return end - 1 - i;

        // 7. \s+
        return end - i;
    }

    private static int LetterRun(List<(int Value, int Offset)> r, int i)
    {
        while (i < r.Count && KindOf(r[i].Value) == Kind.Letter) i++;
        return i;
    }
}
