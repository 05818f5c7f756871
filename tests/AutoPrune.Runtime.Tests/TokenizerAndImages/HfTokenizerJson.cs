using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AutoPrune.Tests.TokenizerAndImages;

/// <summary>
/// Writes a Hugging Face style tokenizer.json (BPE, byte fallback, merges) from a SentencePiece model,
/// the way transformers' LlamaConverter does: a merge for every pair of pieces whose concatenation is
/// a piece, ordered by that piece's score.
/// </summary>
internal static class HfTokenizerJson
{
    public static string FromSentencePieceModel(string modelPath, Dictionary<string, int> added)
    {
        var pieces = ReadPieces(File.ReadAllBytes(modelPath));
        var vocab = new JsonObject();
        var index = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++) { vocab[pieces[i].Piece] = i; index[pieces[i].Piece] = i; }
        var merges = new List<(string L, string R, float Score, int Id)>();
        for (int i = 0; i < pieces.Count; i++)
        {
            var (piece, score, type) = pieces[i];
            if (type != 1 || piece.Length < 2) continue;
            for (int k = 1; k < piece.Length; k++)
            {
                string l = piece[..k], r = piece[k..];
                if (index.TryGetValue(l, out int li) && index.TryGetValue(r, out int ri) && pieces[li].Type == 1 && pieces[ri].Type == 1)
                    merges.Add((l, r, score, i));
            }
        }
        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.Id).ThenBy(m => index[m.L]).Select(m => (JsonNode)JsonValue.Create(m.L + " " + m.R)!).ToArray();
        var addedTokens = new JsonArray();
        for (int i = 0; i < pieces.Count; i++)
            if (pieces[i].Type is 2 or 3)
                addedTokens.Add(new JsonObject { ["id"] = i, ["content"] = pieces[i].Piece, ["special"] = true });
        foreach (var (c, id) in added) addedTokens.Add(new JsonObject { ["id"] = id, ["content"] = c, ["special"] = true });
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = addedTokens,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = true,
                ["vocab"] = vocab, ["merges"] = new JsonArray(ordered),
            },
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = false });
    }

    // Minimal protobuf reading of ModelProto.pieces (field 1): piece (1), score (2), type (3).
    private static List<(string Piece, float Score, int Type)> ReadPieces(byte[] data)
    {
        var list = new List<(string, float, int)>();
        int pos = 0;
        while (pos < data.Length)
        {
            ulong key = Varint(data, ref pos);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (wire == 2)
            {
                int len = (int)Varint(data, ref pos);
                if (field == 1) list.Add(ReadPiece(data.AsSpan(pos, len).ToArray()));
                pos += len;
            }
            else if (wire == 0) Varint(data, ref pos);
            else if (wire == 5) pos += 4;
            else if (wire == 1) pos += 8;
            else throw new InvalidDataException("wire type " + wire);
        }
        return list;
    }

    private static (string, float, int) ReadPiece(byte[] d)
    {
        string piece = ""; float score = 0; int type = 1; int pos = 0;
        while (pos < d.Length)
        {
            ulong key = Varint(d, ref pos);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (field == 1 && wire == 2) { int len = (int)Varint(d, ref pos); piece = Encoding.UTF8.GetString(d, pos, len); pos += len; }
            else if (field == 2 && wire == 5) { score = BitConverter.ToSingle(d, pos); pos += 4; }
            else if (field == 3 && wire == 0) type = (int)Varint(d, ref pos);
            else if (wire == 0) Varint(d, ref pos);
            else if (wire == 2) { int len = (int)Varint(d, ref pos); pos += len; }
            else if (wire == 5) pos += 4;
            else pos += 8;
        }
        return (piece, score, type);
    }

    private static ulong Varint(byte[] d, ref int pos)
    {
        ulong v = 0; int shift = 0;
        while (true) { byte b = d[pos++]; v |= (ulong)(b & 0x7F) << shift; if (b < 0x80) return v; shift += 7; }
    }
}
