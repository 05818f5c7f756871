using System.Text.Json;
using AutoPrune.Loading;

namespace AutoPrune.Cli;

/// <summary>One usable evaluation row: <c>id</c>, <c>image</c> (resolved to a full path), <c>question</c>, <c>answer</c>, optional <c>type</c>.</summary>
public sealed record EvalRow(int Line, string Id, string ImagePath, string Question, string Answer, string? Type);

/// <summary>A data row that was skipped, with its 1-based line number and why.</summary>
public sealed record BadRow(int Line, string Reason);

/// <summary>Reads a VQA jsonl file (one object per line, as the fixture's <c>dev.jsonl</c>), keeping the good rows and reporting the bad ones.</summary>
public static class EvalData
{
    private static readonly string[] Required = ["id", "image", "question", "answer"];
    private static readonly string[] RequiredWithoutAnswer = ["id", "image", "question"];

    /// <summary>The error of a data file without one usable row: the file and how many rows were skipped.</summary>
    public static string NoUsableRows(string path, int skipped) =>
        $"No usable rows in '{Path.GetFullPath(path)}': {skipped} row(s) skipped (each is named with its line above); a row is a JSON object with id, image, question and answer, and its image a file under the images root.";

    /// <summary>One line counting what was used and skipped, e.g. <c>verify: 206 rows used, 2 skipped (lines 4, 9)</c>.</summary>
    public static string Summary(string command, int used, IReadOnlyList<BadRow> bad) =>
        $"{command}: {used} row(s) used, {bad.Count} skipped" + (bad.Count == 0 ? "" : $" (line{(bad.Count > 1 ? "s" : "")} {string.Join(", ", bad.Take(20).Select(b => b.Line))}{(bad.Count > 20 ? ", ..." : "")})");

    /// <summary>Answers are compared after trimming and case folding.</summary>
    public static string Normalize(string s) => s.Trim().ToLowerInvariant();

    public static bool IsCorrect(string prediction, string answer) => Normalize(prediction) == Normalize(answer);

    /// <summary>Largest data file read (it is streamed line by line, never held whole).</summary>
    public const long MaxDataBytes = 1L << 30;
    /// <summary>Longest line kept; a longer one is a bad row, skipped without being held in memory.</summary>
    public const int MaxLineChars = 1 << 20;
    /// <summary>Most non-blank lines read; a larger file is refused (split it, or use --limit).</summary>
    public const int MaxRows = 1_000_000;

    /// <summary>
    /// Parses <paramref name="path"/>, a regular file streamed line by line. Blank lines are ignored; a malformed JSON line,
    /// a line longer than <see cref="MaxLineChars"/>, a missing or empty required field, an image path that leaves the
    /// images root (or is absolute, unless <paramref name="allowAbsolutePaths"/>), or an image file that does not exist
    /// makes a <see cref="BadRow"/>; the message of a path outside the root never says whether it exists.
    /// <paramref name="limit"/> caps the number of good rows.
    /// </summary>
    /// <param name="requireAnswer">False for uses that only ask (calibration): rows without an answer are kept.</param>
    public static (List<EvalRow> Rows, List<BadRow> Bad) Read(string path, string? imagesRoot, int? limit = null, bool allowAbsolutePaths = false, bool requireAnswer = true)
    {
        var required = requireAnswer ? Required : RequiredWithoutAnswer;
        string full = Path.GetFullPath(path);
        var lines = InputFile.ReadLines(full, MaxDataBytes, MaxLineChars, "Data file"); // a FIFO, a device or a folder fails here
        string root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(imagesRoot ?? Path.GetDirectoryName(full)!));
        var rows = new List<EvalRow>();
        var bad = new List<BadRow>();
        int seen = 0;
        foreach (var (lineNo, raw) in lines)
        {
            if (limit is int n && rows.Count >= n) break;
            if (raw is not null && string.IsNullOrWhiteSpace(raw)) continue;
            if (++seen > MaxRows)
                throw new ArgumentException($"Data file '{full}' has more than {MaxRows:N0} rows; split it, or use --limit.");
            if (raw is null)
            {
                bad.Add(new BadRow(lineNo, $"line is longer than {MaxLineChars:N0} characters"));
                continue;
            }
            JsonDocument doc;
            try { doc = JsonDocument.Parse(raw); }
            catch (JsonException e)
            {
                bad.Add(new BadRow(lineNo, $"malformed JSON: {e.Message}"));
                continue;
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    bad.Add(new BadRow(lineNo, $"expected a JSON object, got {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}"));
                    continue;
                }
                var o = doc.RootElement;
                // JSON may escape a lone UTF-16 surrogate ("q\ud800?"), which is no text: the row is bad, not the run.
                if (BadText(o) is { } badField)
                {
                    bad.Add(new BadRow(lineNo, $"field '{badField}' is not valid text (a lone UTF-16 surrogate such as \\ud800)"));
                    continue;
                }
                var missing = required.Where(f => !o.TryGetProperty(f, out var v) || v.ValueKind is JsonValueKind.Null || Scalar(v).Length == 0).ToList();
                if (missing.Count > 0)
                {
                    bad.Add(new BadRow(lineNo, $"missing field{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(m => $"'{m}'"))}"));
                    continue;
                }
                string image = Scalar(o.GetProperty("image"));
                if (ResolveImage(image, root, allowAbsolutePaths, out string? reason) is not string imagePath)
                {
                    bad.Add(new BadRow(lineNo, reason!));
                    continue;
                }
                string? type = o.TryGetProperty("type", out var t) && t.ValueKind != JsonValueKind.Null ? Scalar(t) : null;
                rows.Add(new EvalRow(lineNo, Scalar(o.GetProperty("id")), imagePath, Scalar(o.GetProperty("question")), o.TryGetProperty("answer", out var ans) ? Scalar(ans) : "",
                    string.IsNullOrEmpty(type) ? null : type));
            }
        }
        return (rows, bad);
    }

    /// <summary>
    /// The full path of a row's image: relative paths must stay inside <paramref name="root"/> (checked on the path, before
    /// the file system is asked anything), absolute ones only when allowed. Null with the reason otherwise.
    /// </summary>
    private static string? ResolveImage(string image, string root, bool allowAbsolute, out string? reason)
    {
        reason = null;
        string full;
        try
        {
            if (image.IndexOf('\0') >= 0) { reason = "image path contains a NUL character"; return null; }
            if (Path.IsPathRooted(image))
            {
                if (!allowAbsolute)
                {
                    reason = $"image path '{image}' is absolute; image paths are relative to the images root (--allow-absolute-image-paths allows absolute ones)";
                    return null;
                }
                full = Path.GetFullPath(image);
            }
            else
            {
                full = Path.GetFullPath(Path.Combine(root, image));
                if (!full.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                {
                    reason = $"image path '{image}' leaves the images root";
                    return null;
                }
            }
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            reason = $"image path '{image}' is not a valid path";
            return null;
        }
        if (!File.Exists(full))
        {
            reason = Path.IsPathRooted(image) ? $"image file '{image}' not found" : $"image file '{image}' not found under the images root";
            return null;
        }
        return full;
    }

    /// <summary>The first field whose string value cannot be read as text (an escaped lone surrogate), or null.</summary>
    private static string? BadText(JsonElement row)
    {
        int index = 0;
        foreach (var p in row.EnumerateObject())
        {
            string name;
            try { name = p.Name; }
            catch (InvalidOperationException) { return $"#{index + 1} (its name)"; }
            index++;
            if (p.Value.ValueKind != JsonValueKind.String) continue;
            try { _ = p.Value.GetString(); }
            catch (InvalidOperationException) { return name; }
        }
        return null;
    }

    private static string Scalar(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString() ?? "",
        JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => e.GetRawText(),
        _ => "",
    };
}
