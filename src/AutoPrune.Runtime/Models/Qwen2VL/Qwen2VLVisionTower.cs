using AutoPrune.Compute.Cpu;
using AutoPrune.Loading;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL's vision tower on the CPU, fp32 compute on the stored weights (prefix <c>model.visual</c>):
/// <list type="number">
/// <item><see cref="PatchEmbed"/>: the Conv3d (kernel = stride = temporal_patch × patch × patch, no bias) as a linear over
/// each flattened patch row of <c>pixel_values</c>.</item>
/// <item>The patches reordered window by window (<see cref="Qwen2VLVisionGeometry.PatchOrder"/>), and 2D rotary tables
/// (row frequencies in the first quarter of each head, column frequencies in the second) in the same order.</item>
/// <item><see cref="Block"/> × depth: x += proj(attn(rope(qkv(RMSNorm(x))))), x += down(silu(gate(n)) · up(n)) with n =
/// RMSNorm(x); attention within each window, or within each image at <c>fullatt_block_indexes</c>.</item>
/// <item><see cref="Merger"/>: RMSNorm, each merged token's m² consecutive patch rows concatenated, Linear, GELU (erf),
/// Linear to the language model's width; then the reverse window permutation, giving merged tokens in the processor's
/// order, image after image.</item>
/// </list>
/// </summary>
internal sealed class Qwen2VLVisionTower
{
    private sealed class BlockWeights
    {
        public required QwenNorm Norm1, Norm2;
        public required QwenLinear Qkv, Proj, Gate, Up, Down;
    }

    private readonly Qwen2VLVisionConfig _cfg;
    private readonly QwenLinear _patchEmbed;
    private readonly BlockWeights[] _blocks;
    private readonly QwenNorm _mergerNorm;
    private readonly QwenLinear _merger0, _merger2;
    private readonly float[] _invFreq; // head_dim / 4 frequencies, shared by rows and columns

    public Qwen2VLVisionTower(ITensorSource store, Qwen2VLVisionConfig cfg)
    {
        _cfg = cfg;
        int h = cfg.HiddenSize, inter = cfg.IntermediateSize;
        const string p = Qwen2VLTensorNames.Visual;
        var conv = store.ReadWeight(p + "patch_embed.proj.weight", h, cfg.InChannels, cfg.TemporalPatchSize, cfg.PatchSize, cfg.PatchSize);
        _patchEmbed = new QwenLinear(conv, null, cfg.PatchValues, h);
        _blocks = new BlockWeights[cfg.Depth];
        for (int i = 0; i < cfg.Depth; i++)
        {
            string b = $"{p}blocks.{i}.";
            _blocks[i] = new BlockWeights
            {
                Norm1 = QwenNorm.Load(store, b + "norm1.weight", h, 1e-6),
                Norm2 = QwenNorm.Load(store, b + "norm2.weight", h, 1e-6),
                Qkv = QwenLinear.Load(store, b + "attn.qkv", h, 3 * h, bias: true),
                Proj = QwenLinear.Load(store, b + "attn.proj", h, h, bias: true),
                Gate = QwenLinear.Load(store, b + "mlp.gate_proj", h, inter, bias: true),
                Up = QwenLinear.Load(store, b + "mlp.up_proj", h, inter, bias: true),
                Down = QwenLinear.Load(store, b + "mlp.down_proj", inter, h, bias: true),
            };
        }
        int merged = h * cfg.MergeUnit;
        _mergerNorm = QwenNorm.Load(store, p + "merger.ln_q.weight", h, 1e-6);
        _merger0 = QwenLinear.Load(store, p + "merger.mlp.0", merged, merged, bias: true);
        _merger2 = QwenLinear.Load(store, p + "merger.mlp.2", merged, cfg.OutHiddenSize, bias: true);
        // VisionRotaryEmbedding(head_dim / 2): frequencies 1 / 10000^(2j / (head_dim / 2)).
        _invFreq = QwenRope.InverseFrequencies(cfg.HeadDim / 2, 10000.0);
    }

    public Qwen2VLVisionConfig Config => _cfg;
    public int Depth => _blocks.Length;

    /// <summary>Merged tokens after the tower for all images ([Σ merged, out_hidden_size]) in the processor's order.</summary>
    public float[] Forward(IReadOnlyList<Qwen2VLImage> images, CancellationToken ct = default) => Run(images, false, ct).Embeddings;

    /// <summary>
    /// The merged tokens and, with <paramref name="receivedAttention"/>, the attention each merged token receives in the last
    /// full-attention block (see <see cref="Qwen2VLVisionOutput.ReceivedAttention"/>).
    /// </summary>
    public Qwen2VLVisionOutput Run(IReadOnlyList<Qwen2VLImage> images, bool receivedAttention, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(images);
        var grids = images.Select(i => i.Grid).ToArray();
        var geometry = Qwen2VLVisionGeometry.Create(grids, _cfg.SpatialMergeSize, _cfg.WindowMergedTokens);
        int n = geometry.Patches, cols = _cfg.PatchValues;
        var pixels = new float[checked(n * cols)];
        int at = 0;
        foreach (var img in images)
        {
            if (img.PixelValues.Length != img.Patches * cols)
                throw new ArgumentException($"An image has {img.PixelValues.Length} pixel values; its grid ({img.GridT}, {img.GridH}, {img.GridW}) needs {img.Patches} rows of {cols}.", nameof(images));
            img.PixelValues.CopyTo(pixels, at);
            at += img.PixelValues.Length;
        }
        return Run(pixels, geometry, receivedAttention, ct);
    }

    /// <summary>The tower on <c>pixel_values</c> ([patches, in·tp·p²]) laid out as <paramref name="geometry"/> says.</summary>
    public Qwen2VLVisionOutput Run(ReadOnlySpan<float> pixelValues, Qwen2VLVisionGeometry geometry, bool receivedAttention = false, CancellationToken ct = default)
    {
        int n = geometry.Patches, h = _cfg.HiddenSize;
        var embedded = PatchEmbed(pixelValues, n);
        var order = geometry.PatchOrder();
        var x = new float[n * h];
        for (int i = 0; i < n; i++) embedded.AsSpan(order[i] * h, h).CopyTo(x.AsSpan(i * h, h));
        var (cos, sin) = RotaryTables(geometry, order);
        int lastFull = LastFullAttentionBlock;
        float[]? received = receivedAttention && lastFull >= 0 ? new float[n] : null;
        for (int b = 0; b < _blocks.Length; b++)
        {
            ct.ThrowIfCancellationRequested();
            Block(b, x, n, cos, sin, _cfg.IsFullAttention(b) ? geometry.CuSeqlens : geometry.CuWindowSeqlens, b == lastFull ? received : null);
        }
        var merged = Merger(x, n);
        int tokens = geometry.MergedTokens, outDim = _cfg.OutHiddenSize, unit = _cfg.MergeUnit;
        var result = new float[tokens * outDim];
        for (int t = 0; t < tokens; t++)
            merged.AsSpan(geometry.ReverseIndex[t] * outDim, outDim).CopyTo(result.AsSpan(t * outDim, outDim));
        float[]? perToken = null;
        if (received is not null)
        {
            // Patch rows are in window order: row r belongs to merged token WindowIndex[r / m²] of the processor's order.
            perToken = new float[tokens];
            for (int r = 0; r < n; r++) perToken[geometry.WindowIndex[r / unit]] += received[r];
        }
        return new Qwen2VLVisionOutput(result, perToken);
    }

    /// <summary>The last block with full attention (-1 when every block is windowed).</summary>
    public int LastFullAttentionBlock => _cfg.FullAttBlockIndexes is { Length: > 0 } f ? f.Max() : -1;

    /// <summary>[n, in·tp·p²] patch rows → [n, hidden].</summary>
    public float[] PatchEmbed(ReadOnlySpan<float> pixelValues, int n)
    {
        if (pixelValues.Length != n * _cfg.PatchValues)
            throw new ArgumentException($"pixel_values has {pixelValues.Length} values; {n} patches need {n * _cfg.PatchValues}.", nameof(pixelValues));
        return _patchEmbed.Forward(pixelValues, n);
    }

    /// <summary>cos and sin tables [n, head_dim / 2] for the patches in <paramref name="order"/>: (row, column) frequencies.</summary>
    public (float[] Cos, float[] Sin) RotaryTables(Qwen2VLVisionGeometry geometry, int[] order)
    {
        int n = order.Length, half = _cfg.HeadDim / 2, q = _invFreq.Length; // q = head_dim / 4
        var cos = new float[n * half];
        var sin = new float[n * half];
        for (int i = 0; i < n; i++)
        {
            int src = order[i];
            float row = geometry.RotaryRows[src], col = geometry.RotaryCols[src];
            for (int j = 0; j < q; j++)
            {
                float a = row * _invFreq[j], b = col * _invFreq[j];
                cos[i * half + j] = MathF.Cos(a); sin[i * half + j] = MathF.Sin(a);
                cos[i * half + q + j] = MathF.Cos(b); sin[i * half + q + j] = MathF.Sin(b);
            }
        }
        return (cos, sin);
    }

    /// <summary>
    /// One vision block on x ([n, hidden], window order) in place; attention within the segments of <paramref name="cu"/>.
    /// With <paramref name="received"/> ([n]), also the attention each patch receives (<see cref="SegmentAttention.Received"/>).
    /// </summary>
    public void Block(int index, float[] x, int n, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, ReadOnlySpan<int> cu, float[]? received = null)
    {
        var w = _blocks[index];
        int h = _cfg.HiddenSize, heads = _cfg.NumHeads, hd = _cfg.HeadDim;
        var xn = new float[n * h];
        w.Norm1.Forward(x, xn, n);
        var qkv = w.Qkv.Forward(xn, n); // [n, 3, heads, hd]
        var q = new float[n * h];
        var k = new float[n * h];
        var v = new float[n * h];
        for (int r = 0; r < n; r++)
        {
            qkv.AsSpan(r * 3 * h, h).CopyTo(q.AsSpan(r * h, h));
            qkv.AsSpan(r * 3 * h + h, h).CopyTo(k.AsSpan(r * h, h));
            qkv.AsSpan(r * 3 * h + 2 * h, h).CopyTo(v.AsSpan(r * h, h));
        }
        QwenRope.Apply(q, n, heads, hd, cos, sin);
        QwenRope.Apply(k, n, heads, hd, cos, sin);
        var att = new float[n * h];
        SegmentAttention.Forward(q, k, v, att, heads, hd, cu);
        if (received is not null) SegmentAttention.Received(q, k, heads, hd, cu, received);
        var proj = w.Proj.Forward(att, n);
        QwenMath.AddInPlace(x, proj);

        w.Norm2.Forward(x, xn, n);
        var gate = w.Gate.Forward(xn, n);
        var up = w.Up.Forward(xn, n);
        CpuOps.SiluMul(gate, up);
        var down = new float[n * h];
        w.Down.Forward(gate, n, down);
        QwenMath.AddInPlace(x, down);
    }

    /// <summary>PatchMerger: RMSNorm → [n / m², m²·hidden] → Linear → GELU → Linear; [n / m², out_hidden_size].</summary>
    public float[] Merger(ReadOnlySpan<float> x, int n)
    {
        int h = _cfg.HiddenSize, unit = _cfg.MergeUnit, tokens = n / unit;
        var xn = new float[n * h];
        _mergerNorm.Forward(x, xn, n);
        var hidden = _merger0.Forward(xn, tokens); // rows of m² consecutive patches, read as [tokens, m²·hidden]
        CpuOps.Gelu(hidden);
        return _merger2.Forward(hidden, tokens);
    }
}

/// <summary>The vision tower's output.</summary>
/// <param name="Embeddings">Merged tokens, [Σ merged, out_hidden_size], in the processor's order, image after image.</param>
/// <param name="ReceivedAttention">
/// Per merged token (same order), the attention it receives in the last full-attention block: the softmax probability
/// landing on its m² patches, averaged over the heads and over every query patch of its image frame. Each frame's values
/// sum to 1. The tower has no [CLS] token; this is the signal that stands in for [CLS] attention. Null unless asked for.
/// </param>
internal sealed record Qwen2VLVisionOutput(float[] Embeddings, float[]? ReceivedAttention);
