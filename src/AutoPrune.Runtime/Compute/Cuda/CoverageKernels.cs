using AutoPrune.Compute;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Sizes and constants of <see cref="CoverageKernels.CoverageNmsKernel"/>: N candidates with Features-wide unit rows, K
/// kept, on a Grid × Grid patch grid (Patches = Grid²). GridMode 0: candidate i sits on patch i; 1: on patch
/// visual[i] mod Patches (a negative visual index: no place). The plan (prefix, kept rows, text) is written when WritePlan.
/// </summary>
/// ScoreRows &gt; 0: the scores are the mean over Heads heads and ScoreRows rows of attention [heads, rows, N] (the text
/// rows' mean, as <c>AttentionScores.MeanOverHeadsAndRows</c>), computed in the kernel. Normalize 1: the features are raw
/// rows, scaled to unit length in the kernel (an in-order sum of squares, as the host's normalisation). Preselect 1
/// (with ScoreRows &gt; 0): the scores are AutoPrune's layer-0 pre-selection, the [CLS] head mean of the candidate's
/// patch plus TextWeight·MI0·that text mean (<see cref="CoverageKernels.Preselection"/>), [CLS] attention
/// [ClsHeads, ClsPatches] and MI's sum from the device.
internal readonly record struct CoverageShape(int N, int Features, int K, int Grid, int Limit, double Limit2, double TwoSigmaD2, double TwoSigmaS2,
    double Strength, int GridMode, int Prefix, int Text, int WritePlan, int ScoreRows = 0, int Heads = 0, int Normalize = 0,
    int Preselect = 0, int ClsHeads = 0, int ClsPatches = 0, float TextWeight = 0f);

/// <summary>
/// AutoPrune's selections on the device, each a port of its host code with the same arithmetic in the same order where
/// it decides what is kept (<c>CoverageNms.Select</c>: double cosines and factors, ties to the lower index; the [CLS]
/// mean and the layer-0 pre-selection score in float as the host computes them), so the decisions equal the host's on
/// the same inputs. The greedy loop runs in one group.
/// </summary>
internal static class CoverageKernels
{
    private static int Cell(ArrayView<int> visual, int i, CoverageShape p)
    {
        if (p.GridMode == 0) return i;
        int v = visual[i];
        return v >= 0 ? v % (p.Grid * p.Grid) : -1;
    }

    /// <summary>
    /// Greedy soft NMS in one group (<c>CoverageNms.Select</c>): K times, the best not-yet-kept candidate by s is kept and
    /// every candidate within grid distance √Limit2 of it is damped by 1 - strength·exp(-d²/(2σd²))·exp(-(1 - cos)²/(2σs²)).
    /// s starts as a copy of scores; at [Grid²] maps patches to candidates. Kept flags, the kept candidates ascending and
    /// the plan come out.
    /// </summary>
    internal static void CoverageNmsKernel(ArrayView<float> attn, ArrayView<float> scores, ArrayView<float> s, ArrayView<float> features, ArrayView<float> inv,
        ArrayView<int> visual, ArrayView<int> at, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, ArrayView<float> cls, ArrayView<float> mi,
        CoverageShape p)
    {
        var shv = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var shi = SharedMemory.Allocate<int>(CudaKernels.MaxRowGroupSize);
        int tid = Group.IdxX, step = Group.DimX, g = p.Grid, N = p.N, D = p.Features;
        for (int c = tid; c < g * g; c += step) at[c] = -1;
        float w = p.Preselect != 0 ? TextWeight(mi, p.ScoreRows, p.Heads, p.TextWeight) : 0f;
        for (int i = tid; i < N; i += step)
        {
            if (p.ScoreRows > 0)
            {
                float sum = 0;
                for (int hr = 0; hr < p.Heads * p.ScoreRows; hr++) sum += attn[(long)hr * N + i];
                float mean = sum * (1f / (p.Heads * p.ScoreRows));
                if (p.Preselect != 0)
                {
                    int v = visual[i];
                    mean = Preselection(v >= 0 ? ClsHeadMean(cls, p.ClsHeads, p.ClsPatches, v % (g * g)) : float.PositiveInfinity, w, mean);
                }
                s[i] = mean;
            }
            else s[i] = scores[i];
            kept[i] = 0;
            if (p.Normalize != 0)
            {
                float ss = 0;
                for (int t = 0; t < D; t++) { float x = features[(long)i * D + t]; ss += x * x; }
                float norm = XMath.Sqrt(ss);
                inv[i] = norm > 0 ? 1f / norm : 0f;
            }
        }
        Group.Barrier();
        for (int i = tid; i < N; i += step)
        {
            int cell = Cell(visual, i, p);
            if (cell >= 0) at[cell] = i;
        }
        Group.Barrier();
        for (int n = 0; n < p.K; n++)
        {
            int best = SelectionKernels.KeepBest(s, kept, N, shv, shi, tid, step);
            int pb = Cell(visual, best, p);
            if (pb >= 0 && p.Strength != 0)
                SelectionKernels.DampAround(s, kept, features, inv, p.Normalize, at, 1, best, pb, g, p.Limit, p.Limit2, p.TwoSigmaD2, p.TwoSigmaS2,
                    p.Strength, D, tid, step);
            Group.Barrier();
        }
        SelectionKernels.WriteKeptPlan(kept, keptLocal, plan, N, p.K, p.Prefix, 0, p.Text, p.WritePlan, tid, step);
    }

    /// <summary>
    /// (Σ_h cls[h·stride + patch] in head order) · (1/heads): AutoPrune's [CLS] term of a patch, as
    /// <c>AutoPrunePolicy.OnVision</c> (<see cref="ClsMeanKernel"/>, and the coverage kernel's pre-selection).
    /// </summary>
    internal static float ClsHeadMean(ArrayView<float> cls, int heads, int stride, int patch)
    {
        float sum = 0;
        for (int h = 0; h < heads; h++) sum += cls[(long)h * stride + patch];
        return sum * (1f / heads);
    }

    /// <summary>The pre-selection's text weight w·MI0, MI0 = mi[0] / T · 32 / heads in double (as <c>AttentionScores.AutoPrunePreselection</c>).</summary>
    internal static float TextWeight(ArrayView<float> mi, int T, int heads, float textWeight)
    {
        double mi0 = (double)mi[0] / T * 32.0 / heads;
        return textWeight * (float)mi0;
    }

    /// <summary>AutoPrune's layer-0 pre-selection score: the [CLS] term (+∞ for a row with no patch) plus w·text mean.</summary>
    internal static float Preselection(float cls, float w, float textMean) => cls + w * textMean;

    /// <summary>score[v] = (Σ_h cls[h, v] in head order) · (1/heads): AutoPrune's [CLS] term (as <c>AutoPrunePolicy.OnVision</c>).</summary>
    internal static void ClsMeanKernel(Index1D t, ArrayView<float> cls, ArrayView<float> score, int heads, int V, ElementRange range)
    {
        for (long v = t; v < range.Count; v += range.Stride) score[v] = ClsHeadMean(cls, heads, V, (int)v);
    }

    /// <summary>
    /// AutoPrune's layer-0 pre-selection score of each visual row (<c>AttentionScores.AutoPrunePreselection</c>):
    /// cls(patch) + w·MI0·textMean with MI0 = mi[0] / T · 32 / heads read from the device; a row with no patch scores +∞.
    /// </summary>
    internal static void PreselectionKernel(Index1D t, ArrayView<float> clsMean, ArrayView<float> textMean, ArrayView<int> visual, ArrayView<float> mi,
        ArrayView<float> score, int T, int heads, float textWeight, int patches, ElementRange range)
    {
        float w = TextWeight(mi, T, heads, textWeight);
        for (long i = t; i < range.Count; i += range.Stride)
        {
            int v = visual[i];
            score[i] = Preselection(v >= 0 ? clsMean[v % patches] : float.PositiveInfinity, w, textMean[i]);
        }
    }

    /// <summary>
    /// The rows a selection before the LLM lets in: index[i] the vision tower's row (the [CLS] rows first, then
    /// cls + keptLocal), visual[i] its visual index (<c>SequenceState.ClsToken</c> for a [CLS] row, else the patch).
    /// </summary>
    internal static void SelectedRowsKernel(Index1D t, ArrayView<int> keptLocal, ArrayView<int> index, ArrayView<int> visual, int cls, ElementRange range)
    {
        for (long i = t; i < range.Count; i += range.Stride)
        {
            bool isCls = i < cls;
            int patch = isCls ? -1 : keptLocal[i - cls];
            index[i] = isCls ? (int)i : cls + patch;
            visual[i] = isCls ? -4 : patch;
        }
    }

    /// <summary>
    /// Original RoPE positions of a prompt whose image run was cut to imageRows rows before the LLM
    /// (<c>PreLlmSelection.RestoreOriginalPositions</c>): the prefix as it is, a [CLS] row at the run's start, a patch at
    /// prefix + cls + its place in the full run, the text after at prefix + tokensPerImage + j. No merged rows.
    /// </summary>
    internal static void OriginalPositionsKernel(Index1D t, ArrayView<int> positions, ArrayView<int> visual, int prefix, int imageRows, int tokensPerImage,
        int clsRows, int patches, ElementRange range)
    {
        for (long r = t; r < range.Count; r += range.Stride)
        {
            int i = (int)r;
            if (i < prefix) positions[i] = i;
            else if (i < prefix + imageRows)
            {
                int v = visual[i];
                positions[i] = v >= 0 ? prefix + clsRows + v % patches : prefix;
            }
            else positions[i] = prefix + tokensPerImage + (i - prefix - imageRows);
        }
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, CoverageShape>? _coverageNms;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>? _clsMean;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, float, int, ElementRange>? _preselection;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, ElementRange>? _selectedRows;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, int, int, int, int, int, ElementRange>? _originalPositions;

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, CoverageShape> CoverageNmsK
        => _coverageNms ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, CoverageShape>(CoverageKernels.CoverageNmsKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange> ClsMeanK
        => _clsMean ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>(CoverageKernels.ClsMeanKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, float, int, ElementRange> PreselectionK
        => _preselection ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, float, int, ElementRange>(CoverageKernels.PreselectionKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, ElementRange> SelectedRowsK
        => _selectedRows ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, ElementRange>(CoverageKernels.SelectedRowsKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, int, int, int, int, int, ElementRange> OriginalPositionsK
        => _originalPositions ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<int>, int, int, int, int, int, ElementRange>(CoverageKernels.OriginalPositionsKernel);

    private object[] CoverageKernelsLoaded() => [CoverageNmsK, ClsMeanK, PreselectionK, SelectedRowsK, OriginalPositionsK, .. AttentionFreeKernelsLoaded()];

    /// <summary>AutoPrune's coverage selection and plan in one single-group launch (see <see cref="CoverageKernels.CoverageNmsKernel"/>).</summary>
    /// <param name="attn">[heads, ScoreRows, N] when the scores are its column means (ScoreRows &gt; 0), else unused.</param>
    /// <param name="inv">[N] scratch for the inverse norms when Normalize, else unused.</param>
    /// <param name="cls">The vision tower's [CLS] attention [ClsHeads, ClsPatches] when Preselect, else unused.</param>
    /// <param name="mi">MI's sum at layer 0 (mi[0]) on the device when Preselect, else unused.</param>
    public void CoverageNms(ArrayView<float> attn, ArrayView<float> scores, ArrayView<float> s, ArrayView<float> features, ArrayView<float> inv, ArrayView<int> visual,
        ArrayView<int> at, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, CoverageShape p, ArrayView<float> cls = default, ArrayView<float> mi = default)
    {
        Require(p.Preselect == 0 || (p.ScoreRows > 0 && p.GridMode == 1 && p.ClsHeads > 0 && p.ClsPatches >= p.Grid * p.Grid
            && cls.Length >= (long)p.ClsHeads * p.ClsPatches && mi.Length >= 1),
            "the pre-selection needs the text rows' attention, the visual indices, the [CLS] attention ([CLS] heads × patches) and MI's sum.");
        Require(p.K >= 0 && p.K <= p.N, $"k ({p.K}) must be within 0..{p.N}.");
        Require(p.ScoreRows > 0 ? p.Heads > 0 && attn.Length >= (long)p.Heads * p.ScoreRows * p.N : scores.Length >= p.N, "scores (or the attention they come from) too short.");
        Require(p.Normalize == 0 || inv.Length >= p.N, "inv too short.");
        Require(s.Length >= p.N && features.Length >= (long)p.N * p.Features && kept.Length >= p.N
            && at.Length >= (long)p.Grid * p.Grid && keptLocal.Length >= Math.Max(1, p.K), "a view is too short for the coverage selection.");
        Require(p.GridMode == 0 || visual.Length >= p.N, "the visual indices are shorter than the candidates.");
        Require(p.WritePlan == 0 || plan.Length >= p.Prefix + p.K + p.Text, $"plan ({plan.Length}) shorter than the new sequence.");
        if (p.GridMode == 0) visual = kept;
        if (p.WritePlan == 0) plan = kept;
        if (p.ScoreRows > 0) scores = s; else attn = s;
        if (p.Normalize == 0) inv = s;
        if (p.Preselect == 0) { cls = s; mi = s; }
        Counters.Launch();
        Queue.Enqueue(() => CoverageNmsK(Stream, OneGroup(), attn, scores, s, features, inv, visual, at, kept, keptLocal, plan, cls, mi, p));
    }

    /// <summary>score[v] = the head mean of the [CLS] attention [heads, V] (AutoPrune's [CLS] term).</summary>
    public void ClsMean(ArrayView<float> cls, int heads, int V, ArrayView<float> score)
    {
        Require(heads > 0 && cls.Length >= (long)heads * V && score.Length >= V, "cls or score too short.");
        if (V == 0) return;
        var r = Range(V);
        Counters.Launch();
        Queue.Enqueue(() => ClsMeanK(Stream, Extent(r.Stride), cls, score, heads, V, r));
    }

    /// <summary>AutoPrune's layer-0 pre-selection scores of V visual rows (see <see cref="CoverageKernels.PreselectionKernel"/>).</summary>
    public void Preselection(ArrayView<float> clsMean, ArrayView<float> textMean, ArrayView<int> visual, ArrayView<float> mi, ArrayView<float> score,
        int V, int T, int heads, float textWeight, int patches)
    {
        Require(T > 0 && heads > 0 && patches > 0, "T, heads and patches must be positive.");
        Require(clsMean.Length >= patches && textMean.Length >= V && visual.Length >= V && mi.Length >= 1 && score.Length >= V, "a view is too short for the pre-selection.");
        if (V == 0) return;
        var r = Range(V);
        Counters.Launch();
        Queue.Enqueue(() => PreselectionK(Stream, Extent(r.Stride), clsMean, textMean, visual, mi, score, T, heads, textWeight, patches, r));
    }

    /// <summary>The rows (and their visual indices) a selection before the LLM lets in: cls [CLS] rows, then the kept patches.</summary>
    public void SelectedRows(ArrayView<int> keptLocal, int cls, int k, ArrayView<int> index, ArrayView<int> visual)
    {
        Require(keptLocal.Length >= k && index.Length >= cls + k && visual.Length >= cls + k, "a view is too short for the selected rows.");
        if (cls + k == 0) return;
        var r = Range(cls + k);
        Counters.Launch();
        Queue.Enqueue(() => SelectedRowsK(Stream, Extent(r.Stride), keptLocal, index, visual, cls, r));
    }

    /// <summary>Original positions of an n-row prompt whose image run holds imageRows selected rows (see <see cref="CoverageKernels.OriginalPositionsKernel"/>).</summary>
    public void OriginalPositions(ArrayView<int> positions, ArrayView<int> visual, int n, int prefix, int imageRows, int tokensPerImage, int clsRows, int patches)
    {
        Require(positions.Length >= n && visual.Length >= n && prefix >= 0 && prefix + imageRows <= n && patches > 0, "bad sizes for the original positions.");
        var r = Range(n);
        Counters.Launch();
        Queue.Enqueue(() => OriginalPositionsK(Stream, Extent(r.Stride), positions, visual, prefix, imageRows, tokensPerImage, clsRows, patches, r));
    }
}
