namespace AutoPrune.Generation.Constraints;

/// <summary>
/// A tokenizer's vocabulary as the bytes each id adds to the decoded text (special tokens have none), in a trie over those
/// bytes, which <see cref="TokenMasker"/> walks against the recognizer: a subtree whose prefix is rejected is skipped whole.
/// Built once per loaded model; immutable and thread-safe.
/// </summary>
internal sealed class TokenVocabulary
{
    private readonly byte[]?[] _bytes;

    // The trie, nodes in depth-first order; node 0 is the empty prefix. Children are linked through NextSibling in byte order.
    internal readonly byte[] NodeByte;
    internal readonly int[] FirstChild, NextSibling, TokenStart, TokenCount;
    /// <summary>Ids sorted by their bytes: the ids ending at node n are <c>SortedIds[TokenStart[n] .. + TokenCount[n]]</c>.</summary>
    internal readonly int[] SortedIds;

    /// <param name="tokenBytes">[id]: the bytes the id decodes to, or null for ids that are never generated as text (special tokens).</param>
    /// <param name="eosIds">The ids that end the answer (allowed only when the document is complete).</param>
    /// <param name="dropsLeadingSpace">The decoder drops one leading space of the answer (SentencePiece Llama decoding).</param>
    /// <param name="size">Ids the model scores (its logits' length), at least the tokenizer's; ids past the tokenizer's are never allowed.</param>
    public TokenVocabulary(IReadOnlyList<byte[]?> tokenBytes, IReadOnlyList<int> eosIds, bool dropsLeadingSpace, int? size = null)
    {
        ArgumentNullException.ThrowIfNull(tokenBytes);
        ArgumentNullException.ThrowIfNull(eosIds);
        Size = Math.Max(tokenBytes.Count, size ?? 0);
        foreach (int e in eosIds)
            if ((uint)e >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(eosIds), e, $"End token id {e} is outside the vocabulary (0..{Size - 1}).");
        EosIds = eosIds.Distinct().ToArray();
        DropsLeadingSpace = dropsLeadingSpace;
        _bytes = new byte[]?[Size];
        var ids = new List<int>(tokenBytes.Count);
        for (int id = 0; id < tokenBytes.Count; id++)
        {
            if (tokenBytes[id] is not { Length: > 0 } b || EosIds.Contains(id)) continue;
            _bytes[id] = b;
            ids.Add(id);
        }
        SortedIds = ids.ToArray();
        Array.Sort(SortedIds, (x, y) => { int c = _bytes[x].AsSpan().SequenceCompareTo(_bytes[y]); return c != 0 ? c : x.CompareTo(y); });
        TextTokens = SortedIds.Length;
        MaxTokenBytes = ids.Count == 0 ? 0 : ids.Max(i => _bytes[i]!.Length);

        // Sorted strings give the trie in depth-first order: each string shares its longest common prefix with the one before.
        var nodeByte = new List<byte> { 0 };
        var first = new List<int> { -1 };
        var next = new List<int> { -1 };
        var last = new List<int> { -1 };
        var start = new List<int> { 0 };
        var count = new List<int> { 0 };
        var path = new List<int> { 0 }; // path[k]: the node of the previous string's first k bytes
        byte[] previous = [];
        for (int i = 0; i < SortedIds.Length; i++)
        {
            var s = _bytes[SortedIds[i]]!;
            int common = s.AsSpan().CommonPrefixLength(previous);
            path.RemoveRange(common + 1, path.Count - common - 1);
            for (int k = common; k < s.Length; k++)
            {
                int parent = path[^1], node = nodeByte.Count;
                nodeByte.Add(s[k]); first.Add(-1); next.Add(-1); last.Add(-1); start.Add(0); count.Add(0);
                if (last[parent] < 0) first[parent] = node; else next[last[parent]] = node;
                last[parent] = node;
                path.Add(node);
            }
            int end = path[^1];
            if (count[end] == 0) start[end] = i;
            count[end]++;
            previous = s;
        }
        NodeByte = nodeByte.ToArray();
        FirstChild = first.ToArray();
        NextSibling = next.ToArray();
        TokenStart = start.ToArray();
        TokenCount = count.ToArray();
        var singles = new bool[256];
        foreach (int id in SortedIds) if (_bytes[id]!.Length == 1) singles[_bytes[id]![0]] = true;
        MissingSingleBytes = Enumerable.Range(0, 256).Where(b => !singles[b]).Select(b => (byte)b).ToArray();
    }

    /// <summary>Ids of the mask (the model's vocabulary size).</summary>
    public int Size { get; }

    /// <summary>Ids that decode to text.</summary>
    public int TextTokens { get; }

    public IReadOnlyList<int> EosIds { get; }
    public bool DropsLeadingSpace { get; }

    /// <summary>Bytes of the longest token: how far one token can reach into the output.</summary>
    public int MaxTokenBytes { get; }

    /// <summary>Trie nodes (the empty prefix included).</summary>
    public int NodeCount => NodeByte.Length;

    /// <summary>
    /// Bytes no single token stands for. When every byte has one (both tokenizers here: SentencePiece byte fallback and the
    /// byte-level alphabet), a document whose shortest completion is n bytes can always be finished in n tokens.
    /// </summary>
    public IReadOnlyList<byte> MissingSingleBytes { get; }

    /// <summary>The bytes of an id, or null when it has none (special, end or padding ids).</summary>
    public byte[]? Bytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id] : null;
}
