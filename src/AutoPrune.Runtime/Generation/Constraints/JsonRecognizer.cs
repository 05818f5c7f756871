using System.Text;

namespace AutoPrune.Generation.Constraints;

/// <summary>What a stack frame of the recognizer is inside of.</summary>
internal enum FrameKind : byte { Root, Pending, Object, Map, Array, String, Key, Number, Literal }

/// <summary>
/// One frame of the recognizer's stack (a value type: the top frame is changed in place in a copied state, so stepping
/// through a string or a number allocates nothing).
/// </summary>
internal struct Frame
{
    public GrammarNode? Node;
    public FrameKind Kind;
    public byte Phase;
    /// <summary>Root: part index; Object: next property; Array: items so far; String/Key: UTF-16 units; Number: digits of the current part; Literal: trie node.</summary>
    public int A;
    /// <summary>Root: offset in a literal part; Object: key trie node or chosen property; String/Key: escape or UTF-8 state.</summary>
    public int B;
    /// <summary>Map: the keys written so far (<c>byte[][]</c>); Key: the key's bytes so far (<c>byte[]</c>).</summary>
    public object? X;
}

/// <summary>The frames below the top, immutable and shared between states (copy-on-write), with their summed completion cost.</summary>
internal sealed class FrameStack(Frame frame, FrameStack? below, int cost)
{
    public readonly Frame Frame = frame;
    public readonly FrameStack? Below = below;
    /// <summary>Bytes to finish this frame and every frame below it, once the frames above are done.</summary>
    public readonly int Cost = cost;
}

/// <summary>
/// A prefix of the output as the recognizer sees it: the top frame, the frames below, the container depth and whether a
/// first space would still be dropped by the tokenizer's decoder. A value: copying it forks the prefix.
/// </summary>
internal struct RecognizerState
{
    public Frame Top;
    public FrameStack? Below;
    public int Depth;
    public bool AtStart;
}

/// <summary>
/// The incremental recognizer of a <see cref="JsonGrammar"/>: a pushdown automaton over the output's UTF-8 bytes.
/// <see cref="Step"/> accepts a byte only if the output stays a prefix of some complete document the grammar allows
/// (and, inside free object keys, one whose keys stay distinct); <see cref="Cost"/> is the number of bytes of the shortest
/// completion (0 exactly when the prefix is complete), computed from per-frame costs so that it is O(1).
/// <para>
/// Canonical form: no whitespace outside strings; object properties in schema order; strings valid UTF-8 with control
/// characters escaped and no <c>\u</c> escape of a surrogate (parsers that decode escapes strictly accept every string);
/// free keys without escapes.
/// </para>
/// </summary>
internal sealed class JsonRecognizer(JsonGrammar grammar)
{
    private readonly object[] _parts = grammar.Parts;
    private readonly GrammarLimits _limits = grammar.Limits;

    public JsonGrammar Grammar { get; } = grammar;

    /// <summary>The empty prefix. <paramref name="dropsLeadingSpace"/>: the decoder drops one leading space of the answer
    /// (SentencePiece's Llama decoder), so a first space byte is accepted and means nothing.</summary>
    public RecognizerState Start(bool dropsLeadingSpace) => new() { Top = new Frame { Kind = FrameKind.Root }, AtStart = dropsLeadingSpace };

    /// <summary>Bytes of the shortest completion of <paramref name="s"/> (0: complete; <see cref="Cost.Infinite"/>: none).</summary>
    public int Cost(in RecognizerState s) => Constraints.Cost.Add(FrameCost(in s.Top, s.Below), s.Below?.Cost ?? 0);

    /// <summary>True when the prefix is a complete document.</summary>
    public bool IsComplete(in RecognizerState s) => Cost(in s) == 0;

    /// <summary>Feeds every byte; false (and <paramref name="s"/> unspecified) at the first one rejected.</summary>
    public bool Feed(ref RecognizerState s, ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes) if (!Step(ref s, b)) return false;
        return true;
    }

    /// <summary>Feeds one byte; false if no complete document starts with the prefix and it (then <paramref name="s"/> is unspecified).</summary>
    public bool Step(ref RecognizerState s, byte b)
    {
        if (s.AtStart)
        {
            s.AtStart = false;
            if (b == (byte)' ') return true;
        }
        while (true)
        {
            switch (s.Top.Kind)
            {
                case FrameKind.Root:
                {
                    ref var t = ref s.Top;
                    if (t.A >= _parts.Length) return false;
                    if (_parts[t.A] is byte[] text)
                    {
                        if (text[t.B] != b) return false;
                        if (++t.B == text.Length) { t.A++; t.B = 0; }
                        return true;
                    }
                    var node = (GrammarNode)_parts[t.A];
                    t.A++;
                    t.B = 0;
                    Push(ref s, new Frame { Kind = FrameKind.Pending, Node = node });
                    continue;
                }
                case FrameKind.Pending:
                    return Begin(ref s, s.Top.Node!, b);
                case FrameKind.Object:
                    return ObjectStep(ref s, b);
                case FrameKind.Map:
                    return MapStep(ref s, b);
                case FrameKind.Array:
                {
                    var a = (ArrayNode)s.Top.Node!;
                    if (s.Top.Phase == 0)
                    {
                        if (b == (byte)']' && a.Min == 0) { PopContainer(ref s); return true; }
                        if (a.Max == 0) return false;
                        s.Top.Phase = 1;
                        s.Top.A = 1;
                        Push(ref s, new Frame { Kind = FrameKind.Pending, Node = a.Item });
                        continue; // the byte starts the first item
                    }
                    if (b == (byte)',' && s.Top.A < a.Max)
                    {
                        s.Top.A++;
                        Push(ref s, new Frame { Kind = FrameKind.Pending, Node = a.Item });
                        return true;
                    }
                    if (b == (byte)']' && s.Top.A >= a.Min) { PopContainer(ref s); return true; }
                    return false;
                }
                case FrameKind.String:
                    return StringStep(ref s, b);
                case FrameKind.Key:
                    return KeyStep(ref s, b);
                case FrameKind.Number:
                {
                    int r = NumberStep(ref s.Top, b);
                    if (r > 0) return true;
                    if (r < 0) return false;
                    Pop(ref s); // the number ended before this byte: the frame below takes it
                    continue;
                }
                case FrameKind.Literal:
                {
                    var l = (LiteralNode)s.Top.Node!;
                    int c = l.Trie.Child(s.Top.A, b);
                    if (c >= 0)
                    {
                        if (l.Trie.Terminal(c) >= 0 && !l.Trie.HasChildren(c)) Pop(ref s);
                        else s.Top.A = c;
                        return true;
                    }
                    if (l.Trie.Terminal(s.Top.A) < 0) return false;
                    Pop(ref s); // a number literal that could have gone on ended here
                    continue;
                }
                default:
                    return false;
            }
        }
    }

    /// <summary>Starts a value of <paramref name="node"/> with its first byte, replacing the pending frame on top.</summary>
    private bool Begin(ref RecognizerState s, GrammarNode node, byte b)
    {
        while (node is ChoiceNode choice)
        {
            if (choice.Dispatch[b] is not { } alt) return false;
            node = alt;
        }
        switch (node)
        {
            case ObjectNode:
                if (b != (byte)'{' || s.Depth >= _limits.MaxDepth) return false;
                s.Top = new Frame { Kind = FrameKind.Object, Node = node };
                s.Depth++;
                return true;
            case MapNode:
                if (b != (byte)'{' || s.Depth >= _limits.MaxDepth) return false;
                s.Top = new Frame { Kind = FrameKind.Map, Node = node, X = Array.Empty<byte[]>() };
                s.Depth++;
                return true;
            case ArrayNode:
                if (b != (byte)'[' || s.Depth >= _limits.MaxDepth) return false;
                s.Top = new Frame { Kind = FrameKind.Array, Node = node };
                s.Depth++;
                return true;
            case StringNode:
                if (b != (byte)'"') return false;
                s.Top = new Frame { Kind = FrameKind.String, Node = node };
                return true;
            case NumberNode:
                s.Top = new Frame { Kind = FrameKind.Number, Node = node };
                if (b == (byte)'-') s.Top.Phase = NumSign;
                else if (b == (byte)'0') s.Top.Phase = NumZero;
                else if (b is >= (byte)'1' and <= (byte)'9') { s.Top.Phase = NumInt; s.Top.A = 1; }
                else return false;
                return true;
            case LiteralNode l:
            {
                int c = l.Trie.Child(0, b);
                if (c < 0) return false;
                if (l.Trie.Terminal(c) >= 0 && !l.Trie.HasChildren(c)) Pop(ref s);
                else s.Top = new Frame { Kind = FrameKind.Literal, Node = node, A = c };
                return true;
            }
            default:
                return false;
        }
    }

    // ------------------------------------------------------------------ objects

    private const byte ObjOpen = 0, ObjKey = 1, ObjAfterKey = 2, ObjAfterValue = 3;

    private bool ObjectStep(ref RecognizerState s, byte b)
    {
        ref var t = ref s.Top;
        var o = (ObjectNode)t.Node!;
        switch (t.Phase)
        {
            case ObjOpen:
                if (b == (byte)'}' && o.CanCloseAt[0]) { PopContainer(ref s); return true; }
                return KeyByte(ref t, o, 0, b);
            case ObjKey:
                return KeyByte(ref t, o, t.B, b);
            case ObjAfterKey:
            {
                if (b != (byte)':') return false;
                int j = t.B;
                t.Phase = ObjAfterValue;
                t.A = j + 1;
                Push(ref s, new Frame { Kind = FrameKind.Pending, Node = o.Props[j].Value });
                return true;
            }
            default: // after a value
                if (b == (byte)',' && t.A < o.Props.Length) { t.Phase = ObjKey; t.B = 0; return true; }
                if (b == (byte)'}' && o.CanCloseAt[t.A]) { PopContainer(ref s); return true; }
                return false;
        }
    }

    /// <summary>One byte of a declared key: it must lead to a property the object may name next.</summary>
    private static bool KeyByte(ref Frame t, ObjectNode o, int node, byte b)
    {
        int child = o.Keys.Child(node, b);
        if (child < 0) return false;
        int lo = t.A, hi = o.CandidateEnd[t.A];
        bool any = false;
        foreach (var (j, _) in o.Keys.Through(child)) if (j >= lo && j <= hi) { any = true; break; }
        if (!any) return false;
        int done = o.Keys.Terminal(child);
        if (done >= 0) { t.Phase = ObjAfterKey; t.B = done; }
        else { t.Phase = ObjKey; t.B = child; }
        return true;
    }

    private static int ObjectCost(in Frame t)
    {
        var o = (ObjectNode)t.Node!;
        switch (t.Phase)
        {
            case ObjOpen: return o.OpenCost;
            case ObjAfterKey: return o.AfterKeyCost(t.B);
            case ObjAfterValue: return o.AfterValueCost[t.A];
            default:
            {
                int best = Constraints.Cost.Infinite, lo = t.A, hi = o.CandidateEnd[t.A];
                foreach (var (j, rem) in o.Keys.Through(t.B))
                    if (j >= lo && j <= hi) best = Math.Min(best, Constraints.Cost.Add(rem, o.AfterKeyCost(j)));
                return best;
            }
        }
    }

    // ------------------------------------------------------------------ maps (free keys)

    private const byte MapOpen = 0, MapAfterKey = 1, MapAfterValue = 2, MapExpectKey = 3;

    private bool MapStep(ref RecognizerState s, byte b)
    {
        ref var t = ref s.Top;
        var m = (MapNode)t.Node!;
        switch (t.Phase)
        {
            case MapOpen:
            case MapExpectKey:
                if (t.Phase == MapOpen && b == (byte)'}') { PopContainer(ref s); return true; }
                if (b != (byte)'"' || m.Value is null) return false;
                t.Phase = MapAfterKey;
                Push(ref s, new Frame { Kind = FrameKind.Key, Node = m, X = Array.Empty<byte>() });
                return KeyCost(in s.Top, s.Below) < Constraints.Cost.Infinite;
            case MapAfterKey:
                if (b != (byte)':') return false;
                t.Phase = MapAfterValue;
                Push(ref s, new Frame { Kind = FrameKind.Pending, Node = m.Value });
                return true;
            default:
                if (b == (byte)',') { t.Phase = MapExpectKey; return true; }
                if (b == (byte)'}') { PopContainer(ref s); return true; }
                return false;
        }
    }

    private static int MapCost(in Frame t)
    {
        var m = (MapNode)t.Node!;
        return t.Phase switch
        {
            MapOpen => 1,
            MapAfterKey => m.AfterKeyCost,
            MapAfterValue => 1,
            // '"', the shortest unused key, '"', ':', the shortest value, '}'
            _ => Constraints.Cost.Add(Constraints.Cost.Add(2, ShortestNewKey((byte[][])t.X!, [], 0, m.MaxKeyLength)), m.AfterKeyCost),
        };
    }

    /// <summary>
    /// Bytes to append to <paramref name="acc"/> (a key of <paramref name="units"/> UTF-16 units so far) so that it is
    /// none of <paramref name="seen"/>: 0, 1 (some ASCII letter) or 2, or <see cref="Cost.Infinite"/> when it is at its
    /// length limit and taken.
    /// </summary>
    private static int ShortestNewKey(byte[][] seen, ReadOnlySpan<byte> acc, int units, int maxUnits)
    {
        if (!Contains(seen, acc)) return 0;
        if (units >= maxUnits) return Constraints.Cost.Infinite;
        // Some one-byte extension is free unless every one of the 62 letters and digits is taken.
        int taken = 0;
        foreach (var k in seen)
            if (k.Length == acc.Length + 1 && k.AsSpan().StartsWith(acc) && char.IsAsciiLetterOrDigit((char)k[^1])) taken++;
        if (taken < 62) return 1;
        return units + 1 < maxUnits ? 2 : Constraints.Cost.Infinite; // 62² two-letter keys cannot all be taken within any token budget
    }

    private static bool Contains(byte[][] seen, ReadOnlySpan<byte> key)
    {
        foreach (var k in seen) if (k.AsSpan().SequenceEqual(key)) return true;
        return false;
    }

    /// <summary>A free key's cost: the bytes to finish its character and make it new, and its closing quote (the map below counts the rest).</summary>
    private static int KeyCost(in Frame t, FrameStack? below)
    {
        var m = (MapNode)t.Node!;
        var seen = (byte[][])below!.Frame.X!;
        var acc = (byte[])t.X!;
        if (t.Phase != StrUtf8) return Constraints.Cost.Add(ShortestNewKey(seen, acc, t.A, m.MaxKeyLength), 1);
        // Inside a multi-byte character: each continuation byte has at least 16 values, so unless 16 written keys are this
        // key with one of its completions, some completion is new.
        int need = t.B & 0xFF, blocking = 0;
        foreach (var k in seen) if (k.Length == acc.Length + need && k.AsSpan().StartsWith(acc)) blocking++;
        if (blocking < 16) return need + 1;
        return t.A < m.MaxKeyLength ? need + 2 : Constraints.Cost.Infinite;
    }

    private bool KeyStep(ref RecognizerState s, byte b)
    {
        ref var t = ref s.Top;
        var m = (MapNode)t.Node!;
        var acc = (byte[])t.X!;
        if (t.Phase == StrNormal)
        {
            if (b == (byte)'"')
            {
                var seen = (byte[][])s.Below!.Frame.X!;
                if (Contains(seen, acc)) return false;
                Pop(ref s);
                s.Top.X = (byte[][])[.. seen, acc]; // the map below records the key
                return true;
            }
            if (b < 0x20 || b == (byte)'\\') return false; // free keys are written without escapes
            if (b < 0x80)
            {
                if (t.A + 1 > m.MaxKeyLength) return false;
                t.A++;
            }
            else if (!Utf8Lead(ref t, b, m.MaxKeyLength)) return false;
        }
        else if (!Utf8Continuation(ref t, b)) return false;
        t.X = (byte[])[.. acc, b];
        return KeyCost(in s.Top, s.Below) < Constraints.Cost.Infinite;
    }

    // ------------------------------------------------------------------ strings

    private const byte StrNormal = 0, StrEscape = 1, StrHex = 2, StrHexD = 3, StrUtf8 = 4;

    private static bool StringStep(ref RecognizerState s, byte b)
    {
        ref var t = ref s.Top;
        int max = ((StringNode)t.Node!).MaxLength;
        switch (t.Phase)
        {
            case StrNormal:
                if (b == (byte)'"') { Pop(ref s); return true; }
                if (b < 0x20) return false;
                if (b < 0x80)
                {
                    if (t.A + 1 > max) return false;
                    t.A++;
                    if (b == (byte)'\\') t.Phase = StrEscape;
                    return true;
                }
                return Utf8Lead(ref t, b, max);
            case StrEscape:
                if (b == (byte)'u') { t.Phase = StrHex; t.B = 0; return true; }
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { t.Phase = StrNormal; return true; }
                return false;
            case StrHex:
                if (!char.IsAsciiHexDigit((char)b)) return false;
                if (t.B == 0 && b is (byte)'d' or (byte)'D') { t.Phase = StrHexD; t.B = 1; return true; }
                if (++t.B == 4) { t.Phase = StrNormal; t.B = 0; }
                return true;
            case StrHexD: // \uD8xx..\uDFxx would be a surrogate: the second digit must be 0-7
                if (b is < (byte)'0' or > (byte)'7') return false;
                t.Phase = StrHex;
                t.B = 2;
                return true;
            default:
                return Utf8Continuation(ref t, b);
        }
    }

    private static int StringCost(in Frame t) => t.Phase switch
    {
        StrNormal => 1,
        StrEscape => 2,
        StrHex => 4 - t.B + 1,
        StrHexD => 4,
        _ => (t.B & 0xFF) + 1,
    };

    /// <summary>A UTF-8 lead byte: how many continuation bytes follow and the range of the next one (no overlongs, surrogates or values past U+10FFFF).</summary>
    private static bool Utf8Lead(ref Frame t, byte b, int maxUnits)
    {
        int need, lo = 0x80, hi = 0xBF, units = 1;
        if (b is >= 0xC2 and <= 0xDF) need = 1;
        else if (b == 0xE0) { need = 2; lo = 0xA0; }
        else if (b is >= 0xE1 and <= 0xEC or 0xEE or 0xEF) need = 2;
        else if (b == 0xED) { need = 2; hi = 0x9F; }
        else if (b == 0xF0) { need = 3; lo = 0x90; units = 2; }
        else if (b is >= 0xF1 and <= 0xF3) { need = 3; units = 2; }
        else if (b == 0xF4) { need = 3; hi = 0x8F; units = 2; }
        else return false;
        if (t.A + units > maxUnits) return false;
        t.A += units;
        t.Phase = StrUtf8;
        t.B = need | lo << 8 | hi << 16;
        return true;
    }

    private static bool Utf8Continuation(ref Frame t, byte b)
    {
        int need = t.B & 0xFF, lo = (t.B >> 8) & 0xFF, hi = (t.B >> 16) & 0xFF;
        if (b < lo || b > hi) return false;
        if (--need == 0) { t.Phase = StrNormal; t.B = 0; }
        else t.B = need | 0x80 << 8 | 0xBF << 16;
        return true;
    }

    // ------------------------------------------------------------------ numbers

    private const byte NumSign = 1, NumZero = 2, NumInt = 3, NumFracStart = 4, NumFrac = 5, NumExpStart = 6, NumExpSign = 7, NumExp = 8;

    /// <summary>1: taken; -1: rejected; 0: the number is complete and ends before this byte.</summary>
    private int NumberStep(ref Frame t, byte b)
    {
        bool integer = ((NumberNode)t.Node!).Integer;
        bool digit = b is >= (byte)'0' and <= (byte)'9';
        switch (t.Phase)
        {
            case NumSign:
                if (b == (byte)'0') { t.Phase = NumZero; return 1; }
                if (digit) { t.Phase = NumInt; t.A = 1; return 1; }
                return -1;
            case NumZero:
            case NumInt:
                if (digit && t.Phase == NumInt && t.A < (integer ? _limits.MaxIntegerDigits : _limits.MaxNumberDigits)) { t.A++; return 1; }
                if (!integer && b == (byte)'.') { t.Phase = NumFracStart; t.A = 0; return 1; }
                if (!integer && b is (byte)'e' or (byte)'E') { t.Phase = NumExpStart; t.A = 0; return 1; }
                return digit ? -1 : 0;
            case NumFracStart:
                if (digit) { t.Phase = NumFrac; t.A = 1; return 1; }
                return -1;
            case NumFrac:
                if (digit) { if (t.A >= _limits.MaxFractionDigits) return -1; t.A++; return 1; }
                if (b is (byte)'e' or (byte)'E') { t.Phase = NumExpStart; t.A = 0; return 1; }
                return 0;
            case NumExpStart:
                if (b is (byte)'+' or (byte)'-') { t.Phase = NumExpSign; return 1; }
                if (digit) { t.Phase = NumExp; t.A = 1; return 1; }
                return -1;
            case NumExpSign:
                if (digit) { t.Phase = NumExp; t.A = 1; return 1; }
                return -1;
            default: // exponent digits
                if (digit) { if (t.A >= _limits.MaxExponentDigits) return -1; t.A++; return 1; }
                return 0;
        }
    }

    private static int NumberCost(in Frame t) => t.Phase is NumSign or NumFracStart or NumExpStart or NumExpSign ? 1 : 0;

    // ------------------------------------------------------------------ stack

    private int FrameCost(in Frame t, FrameStack? below) => t.Kind switch
    {
        FrameKind.Root => t.A >= _parts.Length ? 0
            : _parts[t.A] is byte[] text ? Constraints.Cost.Add(text.Length - t.B, Grammar.PartCost[t.A + 1]) : Grammar.PartCost[t.A],
        FrameKind.Pending => t.Node!.MinBytes,
        FrameKind.Object => ObjectCost(in t),
        FrameKind.Map => MapCost(in t),
        FrameKind.Array => t.Phase == 0 ? ((ArrayNode)t.Node!).OpenCost : ((ArrayNode)t.Node!).AfterItemCost(t.A),
        FrameKind.String => StringCost(in t),
        FrameKind.Key => KeyCost(in t, below),
        FrameKind.Number => NumberCost(in t),
        FrameKind.Literal => ((LiteralNode)t.Node!).MinRemaining[t.A],
        _ => Constraints.Cost.Infinite,
    };

    private void Push(ref RecognizerState s, Frame frame)
    {
        s.Below = new FrameStack(s.Top, s.Below, Constraints.Cost.Add(FrameCost(in s.Top, s.Below), s.Below?.Cost ?? 0));
        s.Top = frame;
    }

    private static void Pop(ref RecognizerState s)
    {
        s.Top = s.Below!.Frame;
        s.Below = s.Below.Below;
    }

    private static void PopContainer(ref RecognizerState s)
    {
        Pop(ref s);
        s.Depth--;
    }

    // ------------------------------------------------------------------ cache key

    /// <summary>
    /// A key that is equal for two states whenever every byte string of at most <paramref name="reach"/> bytes is accepted by
    /// both or neither and leaves both at the same cost: exact, except that a string's length and an array's item count
    /// are clamped to what a string of <paramref name="reach"/> bytes could use up.
    /// </summary>
    public string Key(in RecognizerState s, int reach)
    {
        var sb = new StringBuilder(64);
        sb.Append(s.AtStart ? 'S' : 's');
        AppendFrame(sb, in s.Top, reach);
        for (var f = s.Below; f is not null; f = f.Below) AppendFrame(sb, in f.Frame, reach);
        return sb.ToString();
    }

    private static void AppendFrame(StringBuilder sb, in Frame t, int reach)
    {
        sb.Append((char)('a' + (int)t.Kind)).Append((char)t.Phase);
        AppendInt(sb, t.Node?.Id ?? -1);
        int a = t.A;
        switch (t.Kind)
        {
            case FrameKind.String:
                a = Math.Min(((StringNode)t.Node!).MaxLength - t.A, reach); // room left, as far as one token can use it
                break;
            case FrameKind.Array:
                var arr = (ArrayNode)t.Node!;
                if (t.A >= arr.Min) a = -1 - Math.Min(arr.Max - t.A, reach); // past minItems only the room to maxItems matters
                break;
        }
        AppendInt(sb, a);
        AppendInt(sb, t.B);
        switch (t.X)
        {
            case byte[] bytes:
                AppendBytes(sb, bytes);
                break;
            case byte[][] keys:
                AppendInt(sb, keys.Length);
                foreach (var k in keys) AppendBytes(sb, k);
                break;
        }
        sb.Append('|');
    }

    private static void AppendInt(StringBuilder sb, int v) => sb.Append((char)(v & 0xFFFF)).Append((char)((v >> 16) & 0xFFFF));

    private static void AppendBytes(StringBuilder sb, byte[] bytes)
    {
        AppendInt(sb, bytes.Length);
        foreach (byte b in bytes) sb.Append((char)b);
    }
}
