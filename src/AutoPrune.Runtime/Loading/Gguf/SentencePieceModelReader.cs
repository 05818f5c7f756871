using System.Text;

namespace AutoPrune.Loading.Gguf;

/// <summary>
/// Reads the pieces of a SentencePiece <c>tokenizer.model</c> (a protobuf <c>ModelProto</c>): for each piece its text,
/// score and type (field 1, repeated <c>SentencePiece { string piece = 1; float score = 2; Type type = 3; }</c>). Everything
/// else (trainer and normalizer specs) is skipped. Bounded: lengths are checked against the bytes present.
/// </summary>
internal static class SentencePieceModelReader
{
    /// <summary>sentencepiece_model.proto's <c>SentencePiece.Type</c>.</summary>
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    public sealed record Piece(string Text, float Score, int Type);

    public static IReadOnlyList<Piece> Read(byte[] model, string path)
    {
        var pieces = new List<Piece>();
        int pos = 0;
        while (pos < model.Length)
        {
            ulong key = Varint(model, ref pos, path);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (field == 1 && wire == 2)
            {
                int len = Length(model, ref pos, path);
                pieces.Add(ReadPiece(model.AsSpan(pos, len), path, pieces.Count));
                pos += len;
            }
            else Skip(model, ref pos, wire, path);
        }
        if (pieces.Count == 0) throw new ModelLoadException($"SentencePiece model '{path}' has no pieces.", path);
        return pieces;
    }

    private static Piece ReadPiece(ReadOnlySpan<byte> m, string path, int index)
    {
        string text = "";
        float score = 0;
        int type = Normal;
        var buf = m.ToArray();
        int pos = 0;
        while (pos < buf.Length)
        {
            ulong key = Varint(buf, ref pos, path);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (field == 1 && wire == 2)
            {
                int len = Length(buf, ref pos, path);
                try { text = new UTF8Encoding(false, true).GetString(buf, pos, len); }
                catch (DecoderFallbackException) { throw new ModelLoadException($"SentencePiece model '{path}': piece {index} is not valid UTF-8.", path); }
                pos += len;
            }
            else if (field == 2 && wire == 5)
            {
                if (pos + 4 > buf.Length) throw Truncated(path);
                score = BitConverter.ToSingle(buf, pos);
                pos += 4;
            }
            else if (field == 3 && wire == 0) type = (int)Varint(buf, ref pos, path);
            else Skip(buf, ref pos, wire, path);
        }
        return new Piece(text, score, type);
    }

    private static ModelLoadException Truncated(string path) => new($"SentencePiece model '{path}' is truncated or not a protobuf ModelProto.", path);

    private static ulong Varint(byte[] b, ref int pos, string path)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (pos >= b.Length) throw Truncated(path);
            byte x = b[pos++];
            v |= (ulong)(x & 0x7F) << shift;
            if ((x & 0x80) == 0) return v;
        }
        throw Truncated(path);
    }

    private static int Length(byte[] b, ref int pos, string path)
    {
        ulong len = Varint(b, ref pos, path);
        if (len > (ulong)(b.Length - pos)) throw Truncated(path);
        return (int)len;
    }

    private static void Skip(byte[] b, ref int pos, int wire, string path)
    {
        switch (wire)
        {
            case 0: Varint(b, ref pos, path); break;
            case 1: if (pos + 8 > b.Length) throw Truncated(path); pos += 8; break;
            case 2: { int len = Length(b, ref pos, path); pos += len; break; }
            case 5: if (pos + 4 > b.Length) throw Truncated(path); pos += 4; break;
            default: throw Truncated(path);
        }
    }
}
