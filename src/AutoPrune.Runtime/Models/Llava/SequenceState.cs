namespace AutoPrune.Models.Llava;

/// <summary>The token sequence flowing through the decoder during prefill.</summary>
internal sealed class SequenceState
{
    private float[]? _hidden;
    private Func<float[]>? _hiddenSource;

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

    public required int Length;
    /// <summary>RoPE position id of each row.</summary>
    public required int[] Positions;
    /// <summary>
    /// For each row: the original visual token index (&gt;= 0: 0..V-1 within its image, offset by the earlier images'
    /// counts; for LLaVA-NeXT an index into the image's <see cref="AnyResTokenMap.Patches"/>), <see cref="TextRow"/>,
    /// <see cref="MergedRow"/>, <see cref="NewlineRow"/> or <see cref="ClsToken"/>.
    /// </summary>
    public required int[] VisualIndex;

    /// <summary><see cref="VisualIndex"/> of a text token.</summary>
    public const int TextRow = -1;
    /// <summary><see cref="VisualIndex"/> of a token merged from several visual tokens (recycling, VisionZip's contextual tokens).</summary>
    public const int MergedRow = -2;
    /// <summary><see cref="VisualIndex"/> of a LLaVA-NeXT <c>image_newline</c> token: part of the image's run, but no patch.</summary>
    public const int NewlineRow = -3;
    /// <summary><see cref="VisualIndex"/> of the vision tower's [CLS] token (kept by <c>vision_feature_select_strategy: "full"</c>): a visual token with no patch of its own.</summary>
    public const int ClsToken = -4;

    /// <summary>
    /// Applies a prune to the row bookkeeping (positions, visual indices, length); the caller moves the hidden rows.
    /// Merged rows take the previous row's position (only renumbering policies merge).
    /// </summary>
    public void ApplyRows(PruneAction action)
    {
        int n = action.NewRows.Length;
        var pos = new int[n];
        var vis = new int[n];
        for (int i = 0; i < n; i++)
        {
            int r = action.NewRows[i];
            if (r >= 0) { pos[i] = Positions[r]; vis[i] = VisualIndex[r]; }
            else { pos[i] = i > 0 ? pos[i - 1] : 0; vis[i] = -2; }
        }
        if (action.RenumberPositions)
            for (int i = 0; i < n; i++) pos[i] = i;
        Positions = pos;
        VisualIndex = vis;
        Length = n;
    }
}
