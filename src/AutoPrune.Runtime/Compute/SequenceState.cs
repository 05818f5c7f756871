namespace AutoPrune.Compute;

/// <summary>
/// The token sequence flowing through the decoder during prefill. On a GPU backend the hidden states, positions and
/// visual indices live on the device (<see cref="Device"/>); the host knows the length and how many visual rows follow
/// the prefix, and copies the rest only when something reads it (each such read is a counted host synchronisation).
/// </summary>
internal sealed class SequenceState
{
    private float[]? _hidden;
    private Func<float[]>? _hiddenSource;
    private PositionIds? _positions;
    private int[]? _visual;
    private Func<(PositionIds Positions, int[] Visual)>? _indexSource;
    private readonly Dictionary<int, int[]> _visualHistory = [];
    private int _knownVisualRun = -1;

    /// <summary>
    /// Hidden states [Length, Hidden]. On a GPU backend they live on the device; the first read after a layer copies
    /// them to the host (only policies that need them, e.g. token merging, pay for that).
    /// </summary>
    public float[] Hidden
    {
        get => _hidden ??= _hiddenSource?.Invoke() ?? throw new InvalidOperationException("The sequence has no hidden states.");
        set { _hidden = value; _hiddenSource = null; }
    }

    /// <summary>Marks the host copy stale: the next read of <see cref="Hidden"/> calls <paramref name="download"/>.</summary>
    public void HiddenOnDevice(Func<float[]> download) { _hidden = null; _hiddenSource = download; }

    /// <summary>True when the hidden states are on the host (a CPU sequence, or one built on the host for a GPU).</summary>
    public bool HiddenOnHost => _hidden is not null;

    public required int Length;

    /// <summary>The rows' RoPE positions (one component per row for LLaVA; three for M-RoPE).</summary>
    public required PositionIds Positions
    {
        get => _positions ??= FetchIndices().Positions;
        set => _positions = value;
    }

    /// <summary>
    /// For each row: the original visual token index (&gt;= 0: 0..V-1 within its image, offset by the earlier images'
    /// counts; for LLaVA-NeXT an index into the image's token map's patches), <see cref="TextRow"/>,
    /// <see cref="MergedRow"/>, <see cref="NewlineRow"/> or <see cref="ClsToken"/>.
    /// </summary>
    public required int[] VisualIndex
    {
        get => _visual ??= FetchIndices().Visual;
        set { _visual = value; _visualHistory[Version] = value; }
    }

    /// <summary>The sequence's buffers on a GPU (null on the CPU backend, or when the host built it).</summary>
    public Cuda.DeviceSequence? Device { get; set; }

    /// <summary>The prompt's rows as the backend built them, until a decoder session takes them over.</summary>
    public BuiltSequence? Built { get; set; }

    /// <summary>Bumped by every prune; the report asks for the visual indices each layer saw by version.</summary>
    public int Version { get; private set; }

    /// <summary>True when the current positions and visual indices are on the host.</summary>
    public bool IndicesOnHost => _positions is not null && _visual is not null;

    /// <summary><see cref="VisualIndex"/> of a text token.</summary>
    public const int TextRow = -1;
    /// <summary><see cref="VisualIndex"/> of a token merged from several visual tokens (recycling, VisionZip's contextual tokens).</summary>
    public const int MergedRow = -2;
    /// <summary><see cref="VisualIndex"/> of a LLaVA-NeXT <c>image_newline</c> token: part of the image's run, but no patch.</summary>
    public const int NewlineRow = -3;
    /// <summary><see cref="VisualIndex"/> of the vision tower's [CLS] token (kept by <c>vision_feature_select_strategy: "full"</c>): a visual token with no patch of its own.</summary>
    public const int ClsToken = -4;

    private (PositionIds Positions, int[] Visual) FetchIndices()
    {
        var src = _indexSource ?? throw new InvalidOperationException("The sequence has no positions or visual indices.");
        var (p, v) = src();
        _positions ??= p;
        _visual ??= v;
        _indexSource = null;
        _visualHistory[Version] = _visual;
        return (_positions, _visual);
    }

    /// <summary>
    /// Visual rows (kept or merged) anywhere after <paramref name="prefix"/>: one run per image. Counted on the host when
    /// the indices are there, else as the last device prune declared it.
    /// </summary>
    public int VisualRows(int prefix)
    {
        if (_visual is null && _knownVisualRun >= 0) return _knownVisualRun;
        int c = 0;
        var vis = VisualIndex;
        for (int i = prefix; i < Length; i++)
            if (vis[i] != TextRow) c++;
        return c;
    }

    /// <summary>
    /// A prune made on the device: the new length and visual run are known; positions and visual indices stay there
    /// until <paramref name="download"/> is called (on first read) or <see cref="ResolveVisual"/> fills them in.
    /// </summary>
    public void AppliedOnDevice(int length, int visualRun, Func<(PositionIds Positions, int[] Visual)> download, bool newVersion = true)
    {
        if (!newVersion) _visualHistory.Remove(Version);
        Length = length;
        _positions = null;
        _visual = null;
        _indexSource = download;
        _knownVisualRun = visualRun;
        if (newVersion) Version++;
    }

    /// <summary>Hands in the visual indices of version <paramref name="version"/> read back from the device.</summary>
    public void ResolveVisual(int version, int[] visual)
    {
        _visualHistory[version] = visual;
        if (version == Version && _visual is null) _visual = visual;
    }

    /// <summary>True when the visual indices of <paramref name="version"/> are known on the host.</summary>
    public bool VisualKnown(int version) => _visualHistory.ContainsKey(version) || (version == Version && _visual is not null);

    /// <summary>The visual indices of every row as of <paramref name="version"/> (the current ones are fetched if needed).</summary>
    public int[] VisualIndexAt(int version)
    {
        if (_visualHistory.TryGetValue(version, out var v)) return v;
        if (version == Version) return VisualIndex;
        throw new InvalidOperationException($"The visual indices of sequence version {version} were not kept.");
    }

    /// <summary>
    /// Applies a prune to the row bookkeeping (positions, visual indices, length); the caller moves the hidden rows.
    /// Merged rows take the previous row's position (only renumbering policies merge).
    /// </summary>
    public void ApplyRows(PruneAction action)
    {
        int n = action.NewRows.Length;
        var vis = new int[n];
        var oldVis = VisualIndex;
        var pos = Positions.Gather(action.NewRows);
        _visualHistory[Version] = oldVis;
        for (int i = 0; i < n; i++)
        {
            int r = action.NewRows[i];
            vis[i] = r >= 0 ? oldVis[r] : MergedRow;
        }
        if (action.RenumberPositions) pos = pos.Renumbered();
        _positions = pos;
        _visual = vis;
        _indexSource = null;
        _knownVisualRun = -1;
        Length = n;
        Version++;
        _visualHistory[Version] = vis;
    }
}
