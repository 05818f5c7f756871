using System.Text.Json;

namespace AutoPrune.Cli;

/// <summary>One usable evaluation row: <c>id</c>, <c>image</c> (resolved to a full path), <c>question</c>, <c>answer</c>, optional <c>type</c>.</summary>
public sealed record EvalRow(int Line, string Id, string ImagePath, string Question, string Answer, string? Type);

/// <summary>A data row that was skipped, with its 1-based line number and why.</summary>
public sealed record BadRow(int Line, string Reason);

/// <summary>Reads a VQA jsonl file (one object per line, as the fixture's <c>dev.jsonl</c>), keeping the good rows and reporting the bad ones.</summary>
public static class EvalData
{
    private static readonly string[] Required = ["id", "image", "question", "answer"];

    /// <summary>Answers are compared after trimming and case folding.</summary>
    public static string Normalize(string s) => s.Trim().ToLowerInvariant();

    public static bool IsCorrect(string prediction, string answer) => Normalize(prediction) == Normalize(answer);

    /// <summary>
    /// Parses <paramref name="path"/>. Blank lines are ignored; a malformed JSON line, a missing or empty required field,
    /// or an image file that does not exist makes a <see cref="BadRow"/>. <paramref name="limit"/> caps the number of good rows.
    /// </summary>
    public static (List<EvalRow> Rows, List<BadRow> Bad) Read(string path, string? imagesRoot, int? limit = null)
    {
        if (!File.Exists(path)) throw new ArgumentException($"Data file '{Path.GetFullPath(path)}' does not exist.");
        string root = imagesRoot ?? Path.GetDirectoryName(Path.GetFullPath(path))!;
        var rows = new List<EvalRow>();
        var bad = new List<BadRow>();
        int lineNo = 0;
        foreach (var raw in File.ReadLines(path))
        {
            lineNo++;
            if (limit is int n && rows.Count >= n) break;
            if (string.IsNullOrWhiteSpace(raw)) continue;
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
                var missing = Required.Where(f => !o.TryGetProperty(f, out var v) || v.ValueKind is JsonValueKind.Null || Scalar(v).Length == 0).ToList();
                if (missing.Count > 0)
                {
                    bad.Add(new BadRow(lineNo, $"missing field{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(m => $"'{m}'"))}"));
                    continue;
                }
                string image = Scalar(o.GetProperty("image"));
                string full = Path.GetFullPath(Path.IsPathRooted(image) ? image : Path.Combine(root, image));
                if (!File.Exists(full))
                {
                    bad.Add(new BadRow(lineNo, $"image file '{image}' not found (looked at {full})"));
                    continue;
                }
                string? type = o.TryGetProperty("type", out var t) && t.ValueKind != JsonValueKind.Null ? Scalar(t) : null;
                rows.Add(new EvalRow(lineNo, Scalar(o.GetProperty("id")), full, Scalar(o.GetProperty("question")), Scalar(o.GetProperty("answer")),
                    string.IsNullOrEmpty(type) ? null : type));
            }
        }
        return (rows, bad);
    }

    private static string Scalar(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString() ?? "",
        JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => e.GetRawText(),
        _ => "",
    };
}
