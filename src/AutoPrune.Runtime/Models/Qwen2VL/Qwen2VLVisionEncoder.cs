using AutoPrune.Compute;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL's vision tower and PatchMerger (prefix <c>model.visual</c>), written once over a <see cref="Backend"/>'s ops:
/// <list type="number">
/// <item>The patch rows of <c>pixel_values</c> reordered window by window on the host (<see cref="Qwen2VLVisionGeometry.PatchOrder"/>:
/// a row permutation commutes with the patch embedding, so the reorder costs no launch) and uploaded as Half with their
/// 2D rotary positions (rows, columns: two position components).</item>
/// <item>The Conv3d patch embedding as a linear over the 1176-value rows (no bias).</item>
/// <item>Blocks: x += proj(attn(rope(qkv(RMSNorm(x))))) with attention per window (<see cref="Backend.SegmentAttention"/>
/// over <c>cu_window_seqlens</c>) or per image frame at <c>fullatt_block_indexes</c>; x += down(silu(gate) · up)(RMSNorm(x)),
/// every linear with a bias. The 2D rotary embedding is a <see cref="RotaryTable"/> with inverse frequencies
/// [f0..f(q-1), f0..f(q-1)] and sections [q, q], q = head_dim / 4: the first quarter of each head turns by the patch's
/// row, the second by its column (transformers' <c>VisionRotaryEmbedding(head_dim / 2)</c> tables, exactly).</item>
/// <item>The PatchMerger: RMSNorm, each merged token's m² consecutive rows read as one row of m²·hidden, Linear, GELU (erf),
/// Linear to the language model's width; then the reverse window permutation as a row gather, giving the merged tokens in
/// the processor's order, image after image.</item>
/// </list>
/// On request, the attention each merged token receives in the last full-attention block (<see cref="Backend.ReceivedAttention"/>:
/// the signal that stands in for [CLS] attention, which this tower does not have). RMSNorm eps is 1e-6 throughout.
/// </summary>
internal sealed class Qwen2VLVisionEncoder
{
    /// <summary>Largest patch-grid side the 2D rotary tables cover (114,688 pixels at patch 14).</summary>
    public const int DefaultMaxGridSide = 8192;

    private const float Eps = 1e-6f;

    private sealed class Block
    {
        public required NormWeight Norm1, Norm2;
        public required LinearWeight Qkv, Proj, GateUp, Down;
    }

    private readonly Backend _b;
    private readonly Qwen2VLVisionConfig _cfg;
    private readonly LinearWeight _patchEmbed;
    private readonly Block[] _blocks;
    private readonly NormWeight _mergerNorm;
    private readonly LinearWeight _merger0, _merger2;

    public Qwen2VLVisionEncoder(Backend backend, ITensorSource source, Qwen2VLVisionConfig cfg, int maxGridSide = DefaultMaxGridSide)
    {
        _b = backend;
        _cfg = cfg;
        int h = cfg.HiddenSize, inter = cfg.IntermediateSize;
        const string p = "model.visual.";
        _patchEmbed = backend.LoadLinear(source, p + "patch_embed.proj.weight", cfg.PatchValues, h,
            [h, cfg.InChannels, cfg.TemporalPatchSize, cfg.PatchSize, cfg.PatchSize]);
        _blocks = new Block[cfg.Depth];
        for (int i = 0; i < cfg.Depth; i++)
        {
            string b = $"{p}blocks.{i}.";
            _blocks[i] = new Block
            {
                Norm1 = backend.LoadNorm(source, b + "norm1", h, Eps, NormKind.RmsNorm),
                Norm2 = backend.LoadNorm(source, b + "norm2", h, Eps, NormKind.RmsNorm),
                Qkv = backend.LoadLinear(source, b + "attn.qkv", h, 3 * h, bias: true),
                Proj = backend.LoadLinear(source, b + "attn.proj", h, h, bias: true),
                GateUp = backend.LoadLinear(source, [(b + "mlp.gate_proj", inter), (b + "mlp.up_proj", inter)], h, bias: true),
                Down = backend.LoadLinear(source, b + "mlp.down_proj", inter, h, bias: true),
            };
        }
        int merged = h * cfg.MergeUnit;
        _mergerNorm = backend.LoadNorm(source, p + "merger.ln_q", h, Eps, NormKind.RmsNorm);
        _merger0 = backend.LoadLinear(source, p + "merger.mlp.0", merged, merged, bias: true);
        _merger2 = backend.LoadLinear(source, p + "merger.mlp.2", merged, cfg.OutHiddenSize, bias: true);
        Rope = backend.Rotary(RotaryInverseFrequencies(cfg.HeadDim), maxGridSide, [cfg.HeadDim / 4, cfg.HeadDim / 4]);
    }

    public Qwen2VLVisionConfig Config => _cfg;
    public int Depth => _blocks.Length;

    /// <summary>The 2D rotary embedding: two position components (the patch's row and column).</summary>
    public RotaryTable Rope { get; }

    /// <summary>The last block with full attention (-1 when every block is windowed).</summary>
    public int LastFullAttentionBlock => _cfg.FullAttBlockIndexes is { Length: > 0 } f ? f.Max() : -1;

    /// <summary>The encoder's linear layers, for inspection.</summary>
    internal IEnumerable<LinearWeight> Linears => _blocks.SelectMany(b => new[] { b.Qkv, b.Proj, b.GateUp, b.Down }).Prepend(_patchEmbed).Append(_merger0).Append(_merger2);

    /// <summary>
    /// transformers' <c>VisionRotaryEmbedding(head_dim / 2)</c> frequencies 1 / 10000^(2j / (head_dim / 2)), j &lt; head_dim / 4,
    /// written twice: the row half and the column half of each head.
    /// </summary>
    internal static float[] RotaryInverseFrequencies(int headDim)
    {
        var quarter = Compute.Cpu.CpuOps.RopeInvFreq(headDim / 2, 10000.0);
        return [.. quarter, .. quarter];
    }

    /// <summary>
    /// The merged tokens of <paramref name="images"/> (in prompt order) kept on the backend, and with
    /// <paramref name="receivedAttention"/> the attention each receives in the last full-attention block.
    /// </summary>
    public Qwen2VLImageTokens Encode(IReadOnlyList<Qwen2VLImage> images, bool receivedAttention = false, CancellationToken ct = default)
    {
        using var run = Start(images);
        run.Blocks(ct, receivedAttention);
        return run.Merge();
    }

    /// <summary>A forward's state on the backend, in stages (the benchmark times them one by one).</summary>
    internal Run Start(IReadOnlyList<Qwen2VLImage> images) => new(this, images);

    /// <summary>One forward: its geometry, uploaded inputs and working buffers, freed on <see cref="Dispose"/>.</summary>
    internal sealed class Run : IDisposable
    {
        private readonly Qwen2VLVisionEncoder _e;
        private readonly Backend _b;
        private readonly IDisposable _scope;
        private readonly Workspace _w;
        private readonly RowSegments _windows, _frames;
        private readonly (int T, int H, int W)[] _grids;
        private Tensor? _received;

        public Run(Qwen2VLVisionEncoder encoder, IReadOnlyList<Qwen2VLImage> images)
        {
            ArgumentNullException.ThrowIfNull(images);
            if (images.Count == 0) throw new ArgumentException("No images to encode.", nameof(images));
            _e = encoder;
            _b = encoder._b;
            var cfg = encoder._cfg;
            _grids = images.Select(i => i.Grid).ToArray();
            Geometry = Qwen2VLVisionGeometry.Create(_grids, cfg.SpatialMergeSize, cfg.WindowMergedTokens);
            if (Geometry.MaxGridSide > encoder.Rope.MaxPositions)
                throw new ArgumentException($"An image's patch grid has a side of {Geometry.MaxGridSide} patches; the vision tower's rotary tables cover {encoder.Rope.MaxPositions}.", nameof(images));
            int n = Geometry.Patches, cols = cfg.PatchValues;
            // Patch rows in window order, and their (row, column) rotary positions, component-major [2, n].
            var order = Geometry.PatchOrder();
            var starts = new int[images.Count + 1];
            for (int i = 0; i < images.Count; i++)
            {
                var img = images[i];
                if (img.MergeSize != cfg.SpatialMergeSize)
                    throw new ArgumentException($"Image {i} was preprocessed for merge size {img.MergeSize}; the vision tower merges {cfg.SpatialMergeSize}×{cfg.SpatialMergeSize}.", nameof(images));
                if (img.PixelValues.Length != (long)img.Patches * cols)
                    throw new ArgumentException($"Image {i} has {img.PixelValues.Length} pixel values; its grid ({img.GridT}, {img.GridH}, {img.GridW}) needs {img.Patches} rows of {cols}.", nameof(images));
                starts[i + 1] = starts[i] + img.Patches;
            }
            var patches = new float[checked(n * cols)];
            var positions = new int[2 * n];
            for (int r = 0, image = 0; r < n; r++)
            {
                int src = order[r];
                while (src >= starts[image + 1]) image++;
                while (src < starts[image]) image--;
                images[image].PixelValues.AsSpan((src - starts[image]) * cols, cols).CopyTo(patches.AsSpan(r * cols, cols));
                positions[r] = Geometry.RotaryRows[src];
                positions[n + r] = Geometry.RotaryCols[src];
            }
            _scope = _b.Enter();
            _w = _b.CreateWorkspace();
            try
            {
                _b.Upload(patches, _w.Get("patches", patches.Length, TensorKind.Half));
                _b.Upload(positions, _w.Get("positions", positions.Length, TensorKind.Int));
                _b.Upload(Geometry.ReverseIndex, _w.Get("reverse", Geometry.MergedTokens, TensorKind.Int));
                _windows = _b.Segments(Geometry.CuWindowSeqlens);
                _frames = _b.Segments(Geometry.CuSeqlens);
            }
            catch
            {
                _windows?.Dispose();
                _w.Dispose();
                _scope.Dispose();
                throw;
            }
        }

        public Qwen2VLVisionGeometry Geometry { get; }

        /// <summary>The patch embedding and every block (received attention in the last full-attention block when asked).</summary>
        public void Blocks(CancellationToken ct, bool receivedAttention = false)
        {
            var cfg = _e._cfg;
            int n = Geometry.Patches, h = cfg.HiddenSize, heads = cfg.NumHeads, hd = cfg.HeadDim, inter = cfg.IntermediateSize;
            var x = _w.Get("x", (long)n * h, TensorKind.Float);
            var xn = _w.Get("xn", (long)n * h, TensorKind.Half);
            var qkv = _w.Get("qkv", (long)n * 3 * h, TensorKind.Float);
            var q = _w.Get("q", (long)n * h, TensorKind.Half);
            var k = _w.Get("k", (long)n * h, TensorKind.Half);
            var v = _w.Get("v", (long)n * h, TensorKind.Half);
            var att = _w.Get("att", (long)n * h, TensorKind.Half);
            var gateUp = _w.Get("gateUp", (long)n * 2 * inter, TensorKind.Float);
            var act = _w.Get("act", (long)n * inter, TensorKind.Half);
            var positions = _w.Get("positions", 2L * n, TensorKind.Int);
            var layout = new HeadLayout(heads, heads, hd);
            int lastFull = receivedAttention ? _e.LastFullAttentionBlock : -1;
            if (receivedAttention && lastFull < 0) throw new InvalidOperationException("The vision tower has no full-attention block: there is no received attention to report.");
            _b.Linear(_e._patchEmbed, _w.Get("patches", (long)n * cfg.PatchValues, TensorKind.Half), n, x);
            for (int bi = 0; bi < _e._blocks.Length; bi++)
            {
                ct.ThrowIfCancellationRequested();
                var B = _e._blocks[bi];
                bool signals = bi == lastFull;
                var q32 = signals ? _w.Get("q32", (long)n * h, TensorKind.Float) : null;
                var k32 = signals ? _w.Get("k32", (long)n * h, TensorKind.Float) : null;
                var segments = cfg.IsFullAttention(bi) ? _frames : _windows;
                _b.Norm(B.Norm1, x, xn, n);
                _b.Linear(B.Qkv, xn, n, qkv);
                _b.SplitHeads(qkv, n, layout, _e.Rope, positions, q32, k32, q, k, v, null);
                _b.SegmentAttention(q, k, v, att, heads, hd, segments, _w);
                if (signals)
                {
                    int groups = n / cfg.MergeUnit;
                    var inWindowOrder = _w.Get("received.window", groups, TensorKind.Float);
                    _b.ReceivedAttention(q32!, k32!, heads, hd, segments, cfg.MergeUnit, inWindowOrder, _w);
                    _received?.Dispose();
                    _received = _b.Allocate(groups, TensorKind.Float);
                    _b.GatherRows(inWindowOrder, _w.Get("reverse", groups, TensorKind.Int), groups, 1, _received);
                }
                _b.Linear(B.Proj, att, n, x, accumulate: true);
                _b.Norm(B.Norm2, x, xn, n);
                _b.Linear(B.GateUp, xn, n, gateUp);
                _b.SiluMul(gateUp, act, n, inter);
                _b.Linear(B.Down, act, n, x, accumulate: true);
            }
        }

        /// <summary>The PatchMerger on the blocks' output and the reverse window order: the merged tokens (the caller owns them).</summary>
        public Qwen2VLImageTokens Merge()
        {
            var cfg = _e._cfg;
            int n = Geometry.Patches, h = cfg.HiddenSize, tokens = Geometry.MergedTokens, merged = h * cfg.MergeUnit, outDim = cfg.OutHiddenSize;
            var x = _w.Get("x", (long)n * h, TensorKind.Float);
            var xn = _w.Get("xn", (long)n * h, TensorKind.Half);
            var m0 = _w.Get("m0", (long)tokens * merged, TensorKind.Float);
            var m0h = _w.Get("m0h", (long)tokens * merged, TensorKind.Half);
            var m2 = _w.Get("m2", (long)tokens * outDim, TensorKind.Float);
            _b.Norm(_e._mergerNorm, x, xn, n);
            _b.Linear(_e._merger0, xn, tokens, m0); // m² consecutive rows read as one row of m²·hidden
            _b.Activation(ActivationFunction.Gelu, m0);
            _b.ToHalf(m0, m0h);
            _b.Linear(_e._merger2, m0h, tokens, m2);
            var result = _b.Allocate((long)tokens * outDim, TensorKind.Float);
            try
            {
                _b.GatherRows(m2, _w.Get("reverse", tokens, TensorKind.Int), tokens, outDim, result);
            }
            catch
            {
                result.Dispose();
                throw;
            }
            var received = _received;
            _received = null;
            return new Qwen2VLImageTokens(_b, result, received, tokens, outDim, _grids, cfg.MergeUnit);
        }

        public void Dispose()
        {
            _received?.Dispose();
            _windows.Dispose();
            _frames.Dispose();
            _w.Dispose();
            _scope.Dispose();
        }
    }
}

/// <summary>
/// The merged visual tokens of one or more images where the backend computes: Float [Count, Hidden] in the processor's
/// order, image after image, and optionally the attention each received in the tower's last full-attention block (Float
/// [Count]; each image frame's values sum to 1). Disposing gives the buffers back.
/// </summary>
internal sealed class Qwen2VLImageTokens(Backend backend, Tensor tokens, Tensor? received, int count, int hidden, (int T, int H, int W)[] grids, int mergeUnit)
    : IDisposable
{
    public Backend Backend { get; } = backend;
    public Tensor Tokens { get; } = tokens;
    public Tensor? ReceivedAttention { get; } = received;
    public int Count { get; } = count;
    public int Hidden { get; } = hidden;

    /// <summary>Each image's <c>image_grid_thw</c>, in prompt order.</summary>
    public IReadOnlyList<(int T, int H, int W)> Grids { get; } = grids;

    /// <summary>Merged tokens of each image.</summary>
    public int[] TokensPerImage { get; } = grids.Select(g => g.T * g.H * g.W / mergeUnit).ToArray();

    /// <summary>The tokens on the host (a counted download on a GPU).</summary>
    public float[] ToHost()
    {
        using var scope = Backend.Enter();
        return Backend.Download(Tokens).AsSpan(0, Count * Hidden).ToArray();
    }

    /// <summary>The received attention on the host (null when not computed).</summary>
    public float[]? ReceivedToHost()
    {
        if (ReceivedAttention is null) return null;
        using var scope = Backend.Enter();
        return Backend.Download(ReceivedAttention).AsSpan(0, Count).ToArray();
    }

    public void Dispose()
    {
        Tokens.Dispose();
        ReceivedAttention?.Dispose();
    }
}
