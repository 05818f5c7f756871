using AutoPrune.Compute;
using AutoPrune.Loading;
using AutoPrune.Models.Qwen2VL;

namespace AutoPrune.Tests.Qwen;

/// <summary>
/// An independent float64 implementation of the Qwen2.5-VL forward pass for the tests, written as plainly as possible
/// and differently from the engine: patches stay in the processor's order and attention uses explicit masks (two patches
/// of one image frame see each other in a windowed block when their merged tokens fall in the same 4x4 window, in a
/// full-attention block always), so the window reorder and its reverse are not involved; the decoder recomputes the
/// whole sequence without a cache. Weights are the checkpoint's fp16 values widened exactly.
/// </summary>
internal sealed class Qwen2VLReference64
{
    private readonly SafeTensorStore _store;
    private readonly Qwen2VLConfig _c;

    public Qwen2VLReference64(SafeTensorStore store, Qwen2VLConfig config) { _store = store; _c = config; }

    private double[] W(string name) => _store.ReadFloat32(name).Select(v => (double)v).ToArray();

    /// <summary>y[n, out] = x[n, in] · Wᵀ + b.</summary>
    private static double[] Linear(double[] x, int n, double[] w, double[]? b, int @in, int @out)
    {
        var y = new double[n * @out];
        for (int r = 0; r < n; r++)
            for (int o = 0; o < @out; o++)
            {
                double s = b?[o] ?? 0;
                for (int i = 0; i < @in; i++) s += x[r * @in + i] * w[o * @in + i];
                y[r * @out + o] = s;
            }
        return y;
    }

    private static double[] RmsNorm(double[] x, int n, int d, double[] w, double eps)
    {
        var y = new double[x.Length];
        for (int r = 0; r < n; r++)
        {
            double ms = 0;
            for (int i = 0; i < d; i++) ms += x[r * d + i] * x[r * d + i];
            double inv = 1 / Math.Sqrt(ms / d + eps);
            for (int i = 0; i < d; i++) y[r * d + i] = w[i] * x[r * d + i] * inv;
        }
        return y;
    }

    private static double Silu(double v) => v / (1 + Math.Exp(-v));

    /// <summary>Rotate-half rotary embedding with per-row, per-frequency angles.</summary>
    private static void Rope(double[] x, int n, int heads, int hd, Func<int, int, double> angle)
    {
        int half = hd / 2;
        for (int r = 0; r < n; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    int a = (r * heads + h) * hd + i, b = a + half;
                    double t = angle(r, i), c = Math.Cos(t), s = Math.Sin(t);
                    (x[a], x[b]) = (x[a] * c - x[b] * s, x[b] * c + x[a] * s);
                }
    }

    /// <summary>
    /// Masked attention: query r sees key j when <paramref name="visible"/>(r, j). With <paramref name="received"/>, adds
    /// each probability p(r, j) / (heads · <paramref name="weightOf"/>(r)) to received[j].
    /// </summary>
    private static double[] Attend(double[] q, double[] k, double[] v, int n, int heads, int kvHeads, int hd, Func<int, int, bool> visible,
        double[]? received = null, Func<int, double>? weightOf = null)
    {
        var o = new double[n * heads * hd];
        var s = new double[n];
        int group = heads / kvHeads;
        for (int h = 0; h < heads; h++)
        {
            int kh = h / group;
            for (int r = 0; r < n; r++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < n; j++)
                {
                    if (!visible(r, j)) { s[j] = double.NegativeInfinity; continue; }
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[(r * heads + h) * hd + i] * k[(j * kvHeads + kh) * hd + i];
                    s[j] = d / Math.Sqrt(hd);
                    max = Math.Max(max, s[j]);
                }
                double sum = 0;
                for (int j = 0; j < n; j++) { s[j] = double.IsNegativeInfinity(s[j]) ? 0 : Math.Exp(s[j] - max); sum += s[j]; }
                for (int j = 0; j < n; j++)
                {
                    if (s[j] == 0) continue;
                    double p = s[j] / sum;
                    if (received is not null) received[j] += p / (heads * weightOf!(r));
                    for (int i = 0; i < hd; i++) o[(r * heads + h) * hd + i] += p * v[(j * kvHeads + kh) * hd + i];
                }
            }
        }
        return o;
    }

    /// <summary>The vision tower's merged tokens ([Σ merged, out]) for images given as (pixel_values, grid).</summary>
    public double[] Vision(IReadOnlyList<Qwen2VLImage> images) => Vision(images, out _);

    /// <summary>
    /// As <see cref="Vision(IReadOnlyList{Qwen2VLImage})"/>, and per merged token the attention its patches receive in the
    /// last full-attention block, averaged over heads and over the query patches of its image.
    /// </summary>
    public double[] Vision(IReadOnlyList<Qwen2VLImage> images, out double[] receivedPerToken)
    {
        var vc = _c.Vision;
        int hid = vc.HiddenSize, heads = vc.NumHeads, hd = vc.HeadDim, inter = vc.IntermediateSize, m = vc.SpatialMergeSize;
        int window = vc.WindowMergedTokens * m; // window side in patches
        // Per patch: image, frame, row, column (processor order: merged token blocks of m x m, row-major).
        var (img, row, col) = (new List<int>(), new List<int>(), new List<int>());
        var pixels = new List<double>();
        for (int k = 0; k < images.Count; k++)
        {
            var im = images[k];
            pixels.AddRange(im.PixelValues.Select(v => (double)v));
            for (int bh = 0; bh < im.GridH / m; bh++)
                for (int bw = 0; bw < im.GridW / m; bw++)
                    for (int mh = 0; mh < m; mh++)
                        for (int mw = 0; mw < m; mw++) { img.Add(k); row.Add(bh * m + mh); col.Add(bw * m + mw); }
        }
        int n = img.Count;
        var received = new double[n];
        int lastFull = vc.FullAttBlockIndexes!.Max();
        var x = Linear(pixels.ToArray(), n, W("model.visual.patch_embed.proj.weight"), null, vc.PatchValues, hid);
        int quarter = hd / 4;
        double Angle(int r, int i) => (i < quarter ? row[r] : col[r]) / Math.Pow(10000, 2.0 * (i % quarter) / (hd / 2));
        for (int b = 0; b < vc.Depth; b++)
        {
            string p = $"model.visual.blocks.{b}.";
            bool full = vc.IsFullAttention(b);
            bool Visible(int r, int j) => img[r] == img[j] && (full || (row[r] / window == row[j] / window && col[r] / window == col[j] / window));
            var xn = RmsNorm(x, n, hid, W(p + "norm1.weight"), 1e-6);
            var qkv = Linear(xn, n, W(p + "attn.qkv.weight"), W(p + "attn.qkv.bias"), hid, 3 * hid);
            double[] q = new double[n * hid], k = new double[n * hid], v = new double[n * hid];
            for (int r = 0; r < n; r++)
            {
                Array.Copy(qkv, r * 3 * hid, q, r * hid, hid);
                Array.Copy(qkv, r * 3 * hid + hid, k, r * hid, hid);
                Array.Copy(qkv, r * 3 * hid + 2 * hid, v, r * hid, hid);
            }
            Rope(q, n, heads, hd, Angle);
            Rope(k, n, heads, hd, Angle);
            var att = Linear(Attend(q, k, v, n, heads, heads, hd, Visible, b == lastFull ? received : null, r => images[img[r]].Patches), n, W(p + "attn.proj.weight"), W(p + "attn.proj.bias"), hid, hid);
            for (int i = 0; i < x.Length; i++) x[i] += att[i];
            xn = RmsNorm(x, n, hid, W(p + "norm2.weight"), 1e-6);
            var g = Linear(xn, n, W(p + "mlp.gate_proj.weight"), W(p + "mlp.gate_proj.bias"), hid, inter);
            var u = Linear(xn, n, W(p + "mlp.up_proj.weight"), W(p + "mlp.up_proj.bias"), hid, inter);
            for (int i = 0; i < g.Length; i++) g[i] = Silu(g[i]) * u[i];
            var d = Linear(g, n, W(p + "mlp.down_proj.weight"), W(p + "mlp.down_proj.bias"), inter, hid);
            for (int i = 0; i < x.Length; i++) x[i] += d[i];
        }
        int unit = m * m, tokens = n / unit;
        receivedPerToken = new double[tokens];
        for (int r = 0; r < n; r++) receivedPerToken[r / unit] += received[r];
        var h1 = Linear(RmsNorm(x, n, hid, W("model.visual.merger.ln_q.weight"), 1e-6), tokens, W("model.visual.merger.mlp.0.weight"), W("model.visual.merger.mlp.0.bias"), hid * unit, hid * unit);
        for (int i = 0; i < h1.Length; i++) h1[i] = 0.5 * h1[i] * (1 + Erf(h1[i] / Math.Sqrt(2)));
        return Linear(h1, tokens, W("model.visual.merger.mlp.2.weight"), W("model.visual.merger.mlp.2.bias"), hid * unit, vc.OutHiddenSize);
    }

    /// <summary>Last-position logits of the whole prompt, recomputed without a cache.</summary>
    public double[] LastLogits(int[] ids, IReadOnlyList<Qwen2VLImage> images, PositionIds positions)
    {
        var tc = _c.Text;
        int hid = tc.HiddenSize, heads = tc.NumAttentionHeads, kv = tc.NumKeyValueHeads, hd = tc.HeadDim, inter = tc.IntermediateSize, n = ids.Length;
        const string p = "model.language_model.";
        var embed = W(p + "embed_tokens.weight");
        var x = new double[n * hid];
        var visual = images.Count > 0 ? Vision(images) : [];
        int vrow = 0;
        for (int t = 0; t < n; t++)
        {
            if (ids[t] == _c.ImageTokenId) Array.Copy(visual, vrow++ * hid, x, t * hid, hid);
            else Array.Copy(embed, ids[t] * hid, x, t * hid, hid);
        }
        var sec = tc.MropeSection;
        int Comp(int i) => i < sec[0] ? 0 : i < sec[0] + sec[1] ? 1 : 2;
        double Angle(int r, int i) => positions[Comp(i), r] / Math.Pow(tc.RopeTheta, 2.0 * i / hd);
        for (int l = 0; l < tc.NumHiddenLayers; l++)
        {
            string lp = $"{p}layers.{l}.";
            var xn = RmsNorm(x, n, hid, W(lp + "input_layernorm.weight"), tc.RmsNormEps);
            var q = Linear(xn, n, W(lp + "self_attn.q_proj.weight"), W(lp + "self_attn.q_proj.bias"), hid, heads * hd);
            var k = Linear(xn, n, W(lp + "self_attn.k_proj.weight"), W(lp + "self_attn.k_proj.bias"), hid, kv * hd);
            var v = Linear(xn, n, W(lp + "self_attn.v_proj.weight"), W(lp + "self_attn.v_proj.bias"), hid, kv * hd);
            Rope(q, n, heads, hd, Angle);
            Rope(k, n, kv, hd, Angle);
            var o = Linear(Attend(q, k, v, n, heads, kv, hd, (r, j) => j <= r), n, W(lp + "self_attn.o_proj.weight"), null, heads * hd, hid);
            for (int i = 0; i < x.Length; i++) x[i] += o[i];
            xn = RmsNorm(x, n, hid, W(lp + "post_attention_layernorm.weight"), tc.RmsNormEps);
            var g = Linear(xn, n, W(lp + "mlp.gate_proj.weight"), null, hid, inter);
            var u = Linear(xn, n, W(lp + "mlp.up_proj.weight"), null, hid, inter);
            for (int i = 0; i < g.Length; i++) g[i] = Silu(g[i]) * u[i];
            var d = Linear(g, n, W(lp + "mlp.down_proj.weight"), null, inter, hid);
            for (int i = 0; i < x.Length; i++) x[i] += d[i];
        }
        var last = RmsNorm(x[((n - 1) * hid)..], 1, hid, W(p + "norm.weight"), tc.RmsNormEps);
        var head = tc.TieWordEmbeddings ? embed : W("lm_head.weight");
        return Linear(last, 1, head, null, hid, tc.VocabSize);
    }

    /// <summary>erf to double precision (Abramowitz-Stegun 7.1.26 is too coarse here): series for |x| &lt; 3, else continued fraction.</summary>
    private static double Erf(double x)
    {
        double ax = Math.Abs(x);
        if (ax < 3)
        {
            double sum = 0, term = ax;
            for (int k = 0; k < 200; k++)
            {
                double t = term / (2 * k + 1);
                sum += t;
                if (Math.Abs(t) < 1e-17 * Math.Abs(sum)) break;
                term *= -ax * ax / (k + 1);
            }
            return Math.Sign(x) * 2 / Math.Sqrt(Math.PI) * sum;
        }
        // erfc by Lentz's continued fraction.
        double f = ax, c = ax, d = 0;
        for (int k = 1; k < 200; k++)
        {
            double a = k / 2.0;
            d = ax + a * d; d = 1 / d;
            c = ax + a / c;
            double delta = c * d;
            f *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        double erfc = Math.Exp(-ax * ax) / Math.Sqrt(Math.PI) / f;
        return Math.Sign(x) * (1 - erfc);
    }
}
