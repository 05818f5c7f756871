using System.Text;

namespace AutoPrune.Generation.Constraints;

/// <summary>
/// The bounds every constrained document stays within, so that it is finite and every value in it is one a JSON parser
/// reads without overflow. Generation also ends within the token budget whatever these are (see <see cref="ConstrainedDecoding"/>).
/// </summary>
internal sealed record GrammarLimits
{
    /// <summary>Objects and arrays nested in one another (a schema nesting deeper is refused; "any JSON" stops opening containers here).</summary>
    public int MaxDepth { get; init; } = 20;

    /// <summary>UTF-16 code units of a string value whose schema gives no (smaller) <c>maxLength</c>.</summary>
    public int MaxStringLength { get; init; } = 2048;

    /// <summary>UTF-16 code units of a key of an object whose keys are free (no <c>properties</c>: "any object", maps).</summary>
    public int MaxKeyLength { get; init; } = 128;

    /// <summary>Digits of an <c>integer</c> (9: every value fits a 32-bit int, the type schema generators map from).</summary>
    public int MaxIntegerDigits { get; init; } = 9;

    /// <summary>Digits before the decimal point of a <c>number</c> (15: every such integer is exact in a double).</summary>
    public int MaxNumberDigits { get; init; } = 15;

    /// <summary>Digits after the decimal point.</summary>
    public int MaxFractionDigits { get; init; } = 15;

    /// <summary>Digits of an exponent (1: at most 10^24 with 15 digits, within a float's range).</summary>
    public int MaxExponentDigits { get; init; } = 1;

    public static GrammarLimits Default { get; } = new();
}

/// <summary>
/// A compiled output grammar: a sequence of parts, each literal text or one JSON value of a <see cref="GrammarNode"/>
/// (a JSON schema compiles to one value; a tool call would be a literal prefix, an object and a literal suffix). Immutable
/// and shared by every request that uses it; <see cref="JsonRecognizer"/> runs it and <see cref="TokenMasker"/> turns it
/// into token masks.
/// </summary>
internal sealed class JsonGrammar
{
    /// <summary>Parts in order: a <c>byte[]</c> (literal UTF-8 text) or a <see cref="GrammarNode"/> (one JSON value).</summary>
    internal readonly object[] Parts;

    /// <summary>Bytes of the shortest complete output from part i on (<c>PartCost[Parts.Length]</c> = 0).</summary>
    internal readonly int[] PartCost;

    internal JsonGrammar(IReadOnlyList<object> parts, GrammarLimits limits, int nodeCount, string description)
    {
        if (parts.Count == 0) throw new ArgumentException("A grammar needs at least one part.", nameof(parts));
        Parts = parts.ToArray();
        for (int i = 0; i < Parts.Length; i++)
        {
            switch (Parts[i])
            {
                case byte[] { Length: 0 }: throw new ArgumentException($"Grammar part {i} is empty text.", nameof(parts));
                case byte[] text when i > 0 && Parts[i - 1] is GrammarNode && "0123456789+-.eE".Contains((char)text[0]):
                    // A number before it could go on with that byte: the end of the value would be ambiguous.
                    throw new ArgumentException($"Grammar part {i} starts with '{(char)text[0]}', which could continue a number of the value before it.", nameof(parts));
                case byte[] or GrammarNode: break;
                default: throw new ArgumentException($"Grammar part {i} is a {Parts[i]?.GetType().Name ?? "null"}; expected text bytes or a GrammarNode.", nameof(parts));
            }
        }
        PartCost = new int[Parts.Length + 1];
        for (int i = Parts.Length - 1; i >= 0; i--)
            PartCost[i] = Cost.Add(PartCost[i + 1], Parts[i] is byte[] b ? b.Length : ((GrammarNode)Parts[i]).MinBytes);
        Limits = limits;
        NodeCount = nodeCount;
        Description = description;
    }

    public GrammarLimits Limits { get; }

    /// <summary>Nodes of the grammar (their ids are 0..NodeCount-1).</summary>
    public int NodeCount { get; }

    /// <summary>Bytes of the shortest complete output (one token per byte is always enough to finish it).</summary>
    public int MinBytes => PartCost[0];

    /// <summary>What the grammar is, for messages ("JSON schema 'person'", "any JSON object").</summary>
    public string Description { get; }

    /// <summary>
    /// This grammar with literal text before and after it: the shape of a tool call (<c>&lt;tool_call&gt;\n{...}\n&lt;/tool_call&gt;</c>),
    /// where the text may be an added token's content (the vocabulary gives it as its bytes).
    /// </summary>
    public JsonGrammar WithText(string? prefix, string? suffix)
    {
        var parts = new List<object>();
        if (!string.IsNullOrEmpty(prefix)) parts.Add(Encoding.UTF8.GetBytes(prefix));
        parts.AddRange(Parts);
        if (!string.IsNullOrEmpty(suffix)) parts.Add(Encoding.UTF8.GetBytes(suffix));
        return new JsonGrammar(parts, Limits, NodeCount, Description);
    }

    /// <summary>"Any JSON object" (OpenAI's <c>json_object</c>): keys free, values any JSON, nested up to <see cref="GrammarLimits.MaxDepth"/>.</summary>
    public static JsonGrammar AnyObject(GrammarLimits? limits = null)
    {
        var b = new GrammarBuilder(limits ?? GrammarLimits.Default);
        var root = b.Add(new MapNode(b.Any, b.Limits.MaxKeyLength));
        return b.Build(root, "any JSON object");
    }

    /// <summary>The masks of this grammar over each vocabulary it was used with (built on first use).</summary>
    internal readonly System.Runtime.CompilerServices.ConditionalWeakTable<TokenVocabulary, TokenMasker> Maskers = new();
}

/// <summary>Saturating byte counts: <see cref="Infinite"/> means "cannot be completed".</summary>
internal static class Cost
{
    public const int Infinite = 1 << 29;
    public static int Add(int a, int b) => (long)a + b >= Infinite ? Infinite : a + b;
    public static int Mul(int a, int b) => (long)a * b >= Infinite ? Infinite : a * b;
}

/// <summary>Builds a grammar's nodes (ids in creation order) and its shared "any JSON value" node.</summary>
internal sealed class GrammarBuilder(GrammarLimits limits)
{
    /// <summary>Nodes a single grammar may have (a schema compiling to more is refused).</summary>
    public const int MaxNodes = 20_000;

    private int _count;
    private AnyNode? _any;
    public GrammarLimits Limits { get; } = limits;

    public T Add<T>(T node) where T : GrammarNode
    {
        if (_count >= MaxNodes) throw new ArgumentException($"The schema compiles to more than {MaxNodes:N0} grammar nodes; simplify it.");
        node.Id = _count++;
        return node;
    }

    /// <summary>Any JSON value (objects with free keys, arrays, strings, numbers, true, false, null).</summary>
    public AnyNode Any
    {
        get
        {
            if (_any is not null) return _any;
            var any = Add(new AnyNode());
            var obj = Add(new MapNode(any, Limits.MaxKeyLength));
            var arr = Add(new ArrayNode(any, 0, int.MaxValue));
            var str = Add(new StringNode(Limits.MaxStringLength));
            var num = Add(new NumberNode(integer: false));
            var lit = Add(new LiteralNode([Encoding.ASCII.GetBytes("true"), Encoding.ASCII.GetBytes("false"), Encoding.ASCII.GetBytes("null")]));
            any.Set([obj, arr, str, num, lit]);
            return _any = any;
        }
    }

    public JsonGrammar Build(GrammarNode root, string description) => new([root], Limits, _count, description);
}

/// <summary>One kind of JSON value the grammar allows at some place. Nodes form a DAG (any-JSON refers to itself).</summary>
internal abstract class GrammarNode
{
    /// <summary>Index in the grammar (part of the mask cache's key).</summary>
    public int Id { get; internal set; }

    /// <summary>Bytes of the shortest value this node accepts.</summary>
    public int MinBytes { get; protected set; }

    /// <summary>Objects and arrays nested in the deepest value the schema describes (any-JSON counts 0: it stops at the limit itself).</summary>
    public int Depth { get; protected set; }

    /// <summary>Marks every byte a value of this node can start with.</summary>
    public abstract void FirstBytes(bool[] set);
}

/// <summary>An object with declared properties, written in schema order; required ones must appear, others may.</summary>
internal sealed class ObjectNode : GrammarNode
{
    internal readonly record struct Property(string Name, byte[] Key, GrammarNode Value, bool Required);

    internal readonly Property[] Props;
    /// <summary>The keys (quotes included) of every property; a terminal's value is the property index.</summary>
    internal readonly ByteTrie Keys;
    /// <summary>[i]: no required property has index ≥ i (the object may close after property i-1).</summary>
    internal readonly bool[] CanCloseAt;
    /// <summary>[i]: the last property a key may name when the next is i (the first required one at or after i, or the last).</summary>
    internal readonly int[] CandidateEnd;
    /// <summary>[i]: bytes to close the object after a value when the next property is i.</summary>
    internal readonly int[] AfterValueCost;
    /// <summary>Bytes to close the object right after its <c>{</c>.</summary>
    internal readonly int OpenCost;

    public ObjectNode(IReadOnlyList<Property> props)
    {
        Props = props.ToArray();
        int n = Props.Length;
        Keys = new ByteTrie(Props.Select(p => p.Key).ToArray());
        CanCloseAt = new bool[n + 1];
        CandidateEnd = new int[n + 1];
        AfterValueCost = new int[n + 1];
        CanCloseAt[n] = true;
        CandidateEnd[n] = n - 1;
        AfterValueCost[n] = 1;
        int requiredSum = 0; // Σ over required j ≥ i of ',' + key + ':' + value
        for (int i = n - 1; i >= 0; i--)
        {
            var p = Props[i];
            CanCloseAt[i] = CanCloseAt[i + 1] && !p.Required;
            CandidateEnd[i] = p.Required ? i : CandidateEnd[i + 1];
            if (p.Required) requiredSum = Cost.Add(requiredSum, Cost.Add(p.Key.Length + 2, p.Value.MinBytes));
            AfterValueCost[i] = Cost.Add(requiredSum, 1);
        }
        OpenCost = CanCloseAt[0] ? 1 : AfterValueCost[0] - 1; // no comma before the first property
        MinBytes = Cost.Add(1, OpenCost);
        Depth = 1 + Props.Select(p => p.Value.Depth).DefaultIfEmpty(0).Max();
    }

    /// <summary>Bytes to finish the object after choosing property j's key (its <c>:</c>, value and what must follow).</summary>
    internal int AfterKeyCost(int j) => Cost.Add(1, Cost.Add(Props[j].Value.MinBytes, AfterValueCost[j + 1]));

    public override void FirstBytes(bool[] set) => set['{'] = true;
}

/// <summary>An object whose keys are free (no declared properties): "any object" or a map whose values share one schema.</summary>
internal sealed class MapNode : GrammarNode
{
    /// <param name="value">The values' node; null allows only <c>{}</c>.</param>
    /// <param name="maxKeyLength">UTF-16 units of a key.</param>
    public MapNode(GrammarNode? value, int maxKeyLength)
    {
        Value = value;
        MaxKeyLength = maxKeyLength;
        MinBytes = 2;
        Depth = 1 + (value is AnyNode or null ? 0 : value.Depth);
    }

    public GrammarNode? Value { get; }
    public int MaxKeyLength { get; }

    /// <summary>Bytes after the key: <c>:</c>, the shortest value, <c>}</c>.</summary>
    internal int AfterKeyCost => Value is null ? Cost.Infinite : Cost.Add(2, Value.MinBytes);

    public override void FirstBytes(bool[] set) => set['{'] = true;
}

/// <summary>An array of items of one node, with <c>minItems</c>/<c>maxItems</c>.</summary>
internal sealed class ArrayNode : GrammarNode
{
    /// <param name="item">The items' node; null (<c>items: false</c>) allows only <c>[]</c>.</param>
    /// <param name="min">minItems.</param>
    /// <param name="max">maxItems (int.MaxValue: none).</param>
    public ArrayNode(GrammarNode? item, int min, int max)
    {
        if (item is null && min > 0) throw new ArgumentException("An array without items cannot have minItems > 0.");
        Item = item;
        Min = min;
        Max = item is null ? 0 : max;
        MinBytes = Cost.Add(1, OpenCost);
        Depth = 1 + (item is AnyNode or null ? 0 : item.Depth);
    }

    public GrammarNode? Item { get; }
    public int Min { get; }
    public int Max { get; }

    /// <summary>Bytes to close the array right after its <c>[</c>.</summary>
    internal int OpenCost => Min == 0 ? 1 : Cost.Add(Cost.Mul(Min, Item!.MinBytes), Min); // items, commas and ']'

    /// <summary>Bytes to close the array after <paramref name="count"/> items.</summary>
    internal int AfterItemCost(int count) => count >= Min ? 1 : Cost.Add(Cost.Mul(Min - count, Cost.Add(1, Item!.MinBytes)), 1);

    public override void FirstBytes(bool[] set) => set['['] = true;
}

/// <summary>A string of at most <see cref="MaxLength"/> UTF-16 code units (so within any reading of <c>maxLength</c>), valid UTF-8.</summary>
internal sealed class StringNode : GrammarNode
{
    public StringNode(int maxLength) { MaxLength = maxLength; MinBytes = 2; }
    public int MaxLength { get; }
    public override void FirstBytes(bool[] set) => set['"'] = true;
}

/// <summary>A number (<c>-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?</c>, digits bounded by <see cref="GrammarLimits"/>) or an integer (no fraction or exponent).</summary>
internal sealed class NumberNode : GrammarNode
{
    public NumberNode(bool integer) { Integer = integer; MinBytes = 1; }
    public bool Integer { get; }
    public override void FirstBytes(bool[] set)
    {
        set['-'] = true;
        for (char c = '0'; c <= '9'; c++) set[c] = true;
    }
}

/// <summary>One of a set of literal JSON texts (<c>enum</c>, <c>const</c>, <c>true</c>/<c>false</c>/<c>null</c>).</summary>
internal sealed class LiteralNode : GrammarNode
{
    internal readonly ByteTrie Trie;
    internal readonly byte[][] Literals;
    /// <summary>[trie node]: bytes to the nearest literal end below it.</summary>
    internal readonly int[] MinRemaining;

    public LiteralNode(IReadOnlyList<byte[]> literals)
    {
        Literals = literals.Distinct(ByteArrayComparer.Instance).ToArray();
        if (Literals.Length == 0 || Literals.Any(l => l.Length == 0)) throw new ArgumentException("A literal node needs non-empty literals.");
        Trie = new ByteTrie(Literals);
        MinRemaining = new int[Trie.NodeCount];
        for (int k = 0; k < Trie.NodeCount; k++) MinRemaining[k] = Trie.Through(k).Min(t => t.Remaining);
        MinBytes = MinRemaining[0];
    }

    public override void FirstBytes(bool[] set)
    {
        foreach (var l in Literals) set[l[0]] = true;
    }
}

/// <summary>One of several nodes, told apart by the value's first byte (type unions, <c>anyOf</c> of different kinds).</summary>
internal class ChoiceNode : GrammarNode
{
    /// <summary>[first byte]: the alternative a value starting with it belongs to.</summary>
    internal GrammarNode?[] Dispatch = new GrammarNode?[256];
    internal GrammarNode[] Alternatives = [];

    protected ChoiceNode() { }

    /// <exception cref="ArgumentException">Two alternatives can start with the same byte (the message names the byte).</exception>
    public ChoiceNode(IReadOnlyList<GrammarNode> alternatives) => Set(alternatives);

    internal void Set(IReadOnlyList<GrammarNode> alternatives)
    {
        Alternatives = alternatives.ToArray();
        var first = new bool[256];
        foreach (var alt in Alternatives)
        {
            Array.Clear(first);
            alt.FirstBytes(first);
            for (int b = 0; b < 256; b++)
            {
                if (!first[b]) continue;
                if (Dispatch[b] is not null) throw new ChoiceOverlapException((byte)b);
                Dispatch[b] = alt;
            }
        }
        MinBytes = Alternatives.Min(a => a.MinBytes);
        Depth = Alternatives.Max(a => a is AnyNode ? 0 : a.Depth);
    }

    public override void FirstBytes(bool[] set)
    {
        for (int b = 0; b < 256; b++) if (Dispatch[b] is not null) set[b] = true;
    }
}

/// <summary>Any JSON value; containers stop at <see cref="GrammarLimits.MaxDepth"/>, where scalars still complete it.</summary>
internal sealed class AnyNode : ChoiceNode
{
    internal AnyNode() { }

    internal new void Set(IReadOnlyList<GrammarNode> alternatives)
    {
        base.Set(alternatives);
        Depth = 0;
    }
}

/// <summary>Thrown by <see cref="ChoiceNode"/> when two alternatives share a first byte.</summary>
internal sealed class ChoiceOverlapException(byte b) : Exception($"Two alternatives can start with '{(char)b}'.")
{
    public byte Byte { get; } = b;
}

/// <summary>A trie over byte strings (property keys, literals); each node knows every string passing through it.</summary>
internal sealed class ByteTrie
{
    private readonly List<(byte[] Bytes, int[] Nodes)> _children = [];
    private readonly List<int> _terminal = [];
    private readonly List<List<(int Value, int Remaining)>> _through = [];
    private readonly (int Value, int Remaining)[][] _throughFrozen;

    /// <summary>Builds the trie of <paramref name="strings"/>; string i's terminal carries value i (the first of duplicates).</summary>
    public ByteTrie(IReadOnlyList<byte[]> strings)
    {
        NewNode();
        for (int i = 0; i < strings.Count; i++)
        {
            var s = strings[i];
            int node = 0;
            _through[0].Add((i, s.Length));
            for (int k = 0; k < s.Length; k++)
            {
                int next = Child(node, s[k]);
                if (next < 0)
                {
                    next = NewNode();
                    var (bytes, nodes) = _children[node];
                    _children[node] = ([.. bytes, s[k]], [.. nodes, next]);
                }
                node = next;
                _through[node].Add((i, s.Length - k - 1));
            }
            if (_terminal[node] < 0) _terminal[node] = i;
        }
        _throughFrozen = _through.Select(t => t.ToArray()).ToArray();
    }

    private int NewNode()
    {
        _children.Add(([], []));
        _terminal.Add(-1);
        _through.Add([]);
        return _children.Count - 1;
    }

    public int NodeCount => _children.Count;

    /// <summary>The child of <paramref name="node"/> along byte <paramref name="b"/>, or -1.</summary>
    public int Child(int node, byte b)
    {
        var (bytes, nodes) = _children[node];
        for (int i = 0; i < bytes.Length; i++) if (bytes[i] == b) return nodes[i];
        return -1;
    }

    public bool HasChildren(int node) => _children[node].Bytes.Length > 0;

    /// <summary>The value of the string ending at <paramref name="node"/>, or -1.</summary>
    public int Terminal(int node) => _terminal[node];

    /// <summary>Every string through <paramref name="node"/>: its value and the bytes left after the node.</summary>
    public (int Value, int Remaining)[] Through(int node) => _throughFrozen[node];
}

internal sealed class ByteArrayComparer : IEqualityComparer<byte[]>, IComparer<byte[]>
{
    public static ByteArrayComparer Instance { get; } = new();
    public bool Equals(byte[]? x, byte[]? y) => x is null ? y is null : y is not null && x.AsSpan().SequenceEqual(y);
    public int GetHashCode(byte[] obj)
    {
        var h = new HashCode();
        h.AddBytes(obj);
        return h.ToHashCode();
    }
    public int Compare(byte[]? x, byte[]? y) => x.AsSpan().SequenceCompareTo(y);
}
