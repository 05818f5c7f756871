using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>AdaptPrune's greedy soft NMS (<see cref="SelectionKernels.AdaptiveNmsKernel"/>): sizes and the options.</summary>
internal readonly record struct NmsShape(int Grid, int Features, int K, int Heads, int Prefix, int Text, int Limit, double Limit2, double TwoSigmaD2, double TwoSigmaS2);

/// <summary>Sizes of the recycling kernels: V visual rows entering the prune, K kept, Selected dropped rows clustered into Groups.</summary>
internal readonly record struct RecycleShape(int V, int K, int Selected, int Groups, int Neighbours, int Dim, int Prefix);

/// <summary>
/// SparseVLM's selection outputs and scratch, as one kernel parameter: relevance [T] (double) and raters [T] scratch,
/// count [1] the rater count, scores [V], kept [V], keptLocal [K], plan, flags [V] and sel [Selected] as in
/// <see cref="SignalKernels.TopKPlan"/> and recycling's first step; ticket [1] the last-group counter (0 between launches).
/// </summary>
internal struct SparseVlmViews
{
    public ArrayView<double> Relevance;
    public ArrayView<int> Raters, Count, Kept, KeptLocal, Plan, Flags, Sel, Ticket;
    public ArrayView<float> Scores;
}

/// <summary>Sizes of VisionZip's selection: V patches, D dominant, C contextual, Keys the key width, Dim the feature width, Step the target spacing.</summary>
internal readonly record struct ZipShape(int V, int D, int C, int Heads, int Keys, int Dim, int Step);

/// <summary>
/// The method-specific selections that run on the device, each a port of its host code (AdaptiveNms, SparseVLM's raters,
/// TokenRecycler, VisionZipSelector) with the same arithmetic in the same order where it decides what is kept (double
/// sums, exp, ties to the lower index), so on ILGPU's CPU accelerator the decisions are bit-for-bit the host's on the
/// same inputs. Greedy loops run in one group (never as many launches).
/// </summary>
internal static class SelectionKernels
{
    // NaN ranks lowest; equal scores keep the lower index (as AdaptiveNms.Greater with an ascending scan).
    internal static bool Greater(float a, float b) => !XMath.IsNaN(a) && (XMath.IsNaN(b) || a > b);

    /// <summary>
    /// The group's best (index, value) from each thread's candidate (bi, bv; bi -1 for none) by <see cref="Greater"/>,
    /// ties to the lower index, reduced in shared memory; -1 when no thread had one. Every thread of the group calls it.
    /// </summary>
    internal static int GroupBest(ArrayView<float> shv, ArrayView<int> shi, int tid, int step, int bi, float bv)
    {
        shv[tid] = bv;
        shi[tid] = bi;
        Group.Barrier();
        for (int half = step / 2; half > 0; half >>= 1)
        {
            if (tid < half)
            {
                int oi = shi[tid + half], mi = shi[tid];
                float ov = shv[tid + half], mv = shv[tid];
                if (oi >= 0 && (mi < 0 || Greater(ov, mv) || (!Greater(mv, ov) && oi < mi))) { shv[tid] = ov; shi[tid] = oi; }
            }
            Group.Barrier();
        }
        int best = shi[0];
        Group.Barrier();
        return best;
    }

    /// <summary>
    /// Keeps the best not-yet-kept of <paramref name="n"/> candidates by value (<see cref="Greater"/>, ties to the lower
    /// index) and returns it; every thread of the group calls it and sees the flag set.
    /// </summary>
    internal static int KeepBest(ArrayView<float> values, ArrayView<int> kept, int n, ArrayView<float> shv, ArrayView<int> shi, int tid, int step)
    {
        int bi = -1;
        float bv = 0;
        for (int i = tid; i < n; i += step)
            if (kept[i] == 0 && (bi < 0 || Greater(values[i], bv))) { bi = i; bv = values[i]; }
        int best = GroupBest(shv, shi, tid, step, bi, bv);
        if (tid == 0) kept[best] = 1;
        Group.Barrier();
        return best;
    }

    /// <summary>
    /// The soft-NMS step after a pick (candidate <paramref name="best"/> on cell <paramref name="pb"/> of a g × g grid, as
    /// <c>CoverageNms.Select</c>): every not-yet-kept candidate on a cell within grid distance √limit2 (the candidate
    /// at[cell] with useAt, else the cell itself) is damped by 1 - strength·exp(-d²/(2σd²))·exp(-(1 - cos)²/(2σs²)), the
    /// cosine of the feature rows summed in double (each row scaled by inv[row] first when normalize: unit rows on the fly).
    /// </summary>
    internal static void DampAround(ArrayView<float> s, ArrayView<int> kept, ArrayView<float> features, ArrayView<float> inv, int normalize,
        ArrayView<int> at, int useAt, int best, int pb, int g, int limit, double limit2, double twoSigmaD2, double twoSigmaS2, double strength, int D,
        int tid, int step)
    {
        int side = 2 * limit + 1, ri = pb / g, ci = pb % g;
        long fi = (long)best * D;
        for (int cell = tid; cell < side * side; cell += step)
        {
            int r = ri - limit + cell / side, c = ci - limit + cell % side;
            if (r < 0 || r >= g || c < 0 || c >= g) continue;
            int j = useAt != 0 ? at[r * g + c] : r * g + c;
            if (j < 0 || kept[j] != 0) continue;
            double d2 = (r - ri) * (r - ri) + (c - ci) * (c - ci);
            if (d2 > limit2) continue;
            long fj = (long)j * D;
            double cos = 0;
            if (normalize != 0)
            {
                float a = inv[best], b = inv[j];
                for (int t = 0; t < D; t++) cos += (double)(features[fi + t] * a) * (features[fj + t] * b);
            }
            else
                for (int t = 0; t < D; t++) cos += (double)features[fi + t] * features[fj + t];
            double dissim = 1 - cos;
            double factor = 1 - strength * XMath.Exp(-d2 / twoSigmaD2) * XMath.Exp(-dissim * dissim / twoSigmaS2);
            s[j] = (float)(s[j] * factor);
        }
    }

    /// <summary>
    /// AdaptPrune in one group: the last row's attention over the visual columns, head by head (as
    /// <see cref="SignalKernels.AttentionWindowKernel"/> computes it, window w of this layer's fp32 q and k, shape a) into
    /// attn [heads, V]; the keys ([V, Features]) scaled to unit features (as
    /// <see cref="SignalKernels.L2NormalizeRowsKernel"/>, no launch of their own); s = (head-mean of that attention)
    /// × prior; k times, the
    /// best not-yet-kept token by s is kept and every token within grid distance √Limit2 of it is damped by
    /// 1 - exp(-d²/(2σd²))·exp(-(1 - cos)²/(2σs²)) (cosine of the unit features, in double). Kept flags, the kept tokens
    /// in ascending order and the plan (prefix, kept, text) come out.
    /// </summary>
    internal static void AdaptiveNmsKernel(ArrayView<float> q, ArrayView<float> k, AttentionShape a, WindowShape w, ArrayView<float> attn, ArrayView<float> prior,
        ArrayView<float> keys, ArrayView<float> features, ArrayView<float> s, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, NmsShape p)
    {
        var shv = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var shi = SharedMemory.Allocate<int>(CudaKernels.MaxRowGroupSize);
        int tid = Group.IdxX, step = Group.DimX, g = p.Grid, V = g * g, D = p.Features;
        for (int h = 0; h < p.Heads; h++)
            SignalKernels.AttentionWindowRow(shv, q, k, attn, a, w, q, kept, q, q, 0, h, tid, step);
        Group.Barrier();
        for (int i = tid; i < V; i += step)
        {
            SignalKernels.NormalizeRow(keys, (long)i * D, features, (long)i * D, D);
            float sum = 0;
            for (int h = 0; h < p.Heads; h++) sum += attn[(long)h * V + i];
            s[i] = sum * (1f / p.Heads) * prior[i];
            kept[i] = 0;
        }
        Group.Barrier();
        for (int n = 0; n < p.K; n++)
        {
            int best = KeepBest(s, kept, V, shv, shi, tid, step);
            DampAround(s, kept, features, s, 0, kept, 0, best, best, g, p.Limit, p.Limit2, p.TwoSigmaD2, p.TwoSigmaS2, 1.0, D, tid, step);
            Group.Barrier();
        }
        WriteKeptPlan(kept, keptLocal, plan, V, p.K, p.Prefix, 0, p.Text, 1, tid, step);
    }

    /// <summary>
    /// From the kept flags (one thread of a group at a time over the tokens): the kept tokens in ascending order and,
    /// with writePlan, the new sequence's plan: prefix rows, kept rows, merged rows (-1, -2, ...), text rows.
    /// </summary>
    internal static void WriteKeptPlan(ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, int V, int K, int prefix, int merged, int text,
        int writePlan, int tid, int step)
    {
        for (int i = tid; i < V; i += step)
        {
            if (kept[i] == 0) continue;
            int slot = 0;
            for (int j = 0; j < i; j++) slot += kept[j];
            keptLocal[slot] = i;
            if (writePlan != 0) plan[prefix + slot] = prefix + i;
        }
        if (writePlan == 0) return;
        for (int r = tid; r < prefix; r += step) plan[r] = r;
        for (int m = tid; m < merged; m += step) plan[prefix + K + m] = -m - 1;
        for (int t = tid; t < text; t += step) plan[prefix + K + merged + t] = prefix + V + t;
    }

    /// <summary>
    /// SparseVLM at a pruning layer in one launch. Groups [0, heads·w.RowCount) compute the text rows' attention over the
    /// visual columns (<see cref="SignalKernels.AttentionWindowRow"/>, attn [heads, T, V]); the groups after them the
    /// relevance, one thread per visual row (<see cref="RelevanceRow"/>, contrib [V, T]). The last group to finish
    /// (a ticket taken after a device-level fence, as in the CUDA programming guide's memory-fence example) then makes
    /// the selection that needs all of it, where it was a launch of its own: the raters (<see cref="Raters"/>), the top
    /// k by the raters' mean attention with the plan (<see cref="SignalKernels.TopKPlan"/>, p.ScoreMode 1, p.UseMask 1),
    /// and when r.Selected &gt; 0 the dropped rows to recycle (<see cref="RecycleSelect"/>).
    /// </summary>
    internal static void SparseVlmKernel(ArrayView<float> hidden, ArrayView<double> contrib, ArrayView<float> q, ArrayView<float> k, ArrayView<float> attn,
        AttentionShape s, WindowShape w, SparseVlmViews o, PlanShape p, RecycleShape r)
    {
        var sh = SharedMemory.Allocate<float>(CudaKernels.MaxRowGroupSize);
        var last = SharedMemory.Allocate<int>(1);
        int windowGroups = s.QHeads * w.RowCount, g = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        if (g < windowGroups)
            SignalKernels.AttentionWindowRow(sh, q, k, attn, s, w, q, q.Cast<int>(), q, q, 0, g, tid, step);
        else
        {
            int v = (g - windowGroups) * step + tid;
            if (v < w.ColCount) RelevanceRow(hidden, contrib, w.ColStart, w.ColCount, w.RowStart, w.RowCount, r.Dim, v);
        }
        if (!LastGroup(o.Ticket, last)) return;
        Raters(contrib, o.Relevance, o.Raters, o.Count, p.V, p.Rows, tid, step);
        Group.Barrier();
        SignalKernels.TopKPlan(o.Scores, attn, o.Raters, o.Kept, o.KeptLocal, o.Plan, p, tid, step);
        if (r.Selected > 0)
        {
            Group.Barrier();
            RecycleSelect(o.Scores, o.Kept, o.Flags, o.Sel, r, tid, step);
        }
    }

    /// <summary>
    /// Whether the calling group is the last of the grid to get here: every thread fences its writes at device level, then
    /// one thread takes a ticket; the group that takes the last one may read what every other group wrote. The ticket
    /// must be 0 at the launch; the last group sets it back to 0 as it takes it (every other group has taken its own by
    /// then). last is a one-int shared buffer.
    /// </summary>
    internal static bool LastGroup(ArrayView<int> ticket, ArrayView<int> last)
    {
        MemoryFence.DeviceLevel();
        Group.Barrier();
        if (Group.IdxX == 0)
        {
            bool isLastTicket = Atomic.Add(ref ticket[0], 1) == Grid.DimX - 1;
            if (isLastTicket) ticket[0] = 0;
            last[0] = isLastTicket ? 1 : 0;
        }
        Group.Barrier();
        bool isLast = last[0] != 0;
        if (isLast) MemoryFence.DeviceLevel();
        return isLast;
    }

    /// <summary>
    /// SparseVLM relevance of visual row v: the logits visual_v · text_t in double, softmax over the text, and each text
    /// row's share e_t / z / V into contrib [V, T] (the sum over v follows in <see cref="Raters"/>, in the host's order).
    /// </summary>
    private static void RelevanceRow(ArrayView<float> hidden, ArrayView<double> contrib, int visualStart, int V, int textStart, int T, int dim, long v)
    {
        long vo = (visualStart + v) * dim, co = v * T;
        double max = double.NegativeInfinity;
        for (int t = 0; t < T; t++)
        {
            long to = (long)(textStart + t) * dim;
            double dot = 0;
            for (int i = 0; i < dim; i++) dot += (double)hidden[vo + i] * hidden[to + i];
            contrib[co + t] = dot;
            max = XMath.Max(max, dot);
        }
        double z = 0;
        for (int t = 0; t < T; t++)
        {
            double e = XMath.Exp(contrib[co + t] - max);
            contrib[co + t] = e;
            z += e;
        }
        for (int t = 0; t < T; t++) contrib[co + t] = contrib[co + t] / z / V;
    }

    /// <summary>
    /// raters[t] = 1 when text row t's relevance (Σ over v of contrib, in order) is above the mean relevance + 1e-12
    /// (all rows when none is); count[0] = the number of raters. By one group (thread tid of step).
    /// </summary>
    private static void Raters(ArrayView<double> contrib, ArrayView<double> relevance, ArrayView<int> raters, ArrayView<int> count, int V, int T, int tid, int step)
    {
        for (int t = tid; t < T; t += step)
        {
            double r = 0;
            for (int v = 0; v < V; v++) r += contrib[(long)v * T + t];
            relevance[t] = r;
        }
        Group.Barrier();
        double sum = 0;
        for (int t = 0; t < T; t++) sum += relevance[t];
        double mean = sum / T;
        int above = 0;
        for (int t = 0; t < T; t++) if (relevance[t] > mean + 1e-12) above++;
        for (int t = tid; t < T; t += step) raters[t] = above == 0 || relevance[t] > mean + 1e-12 ? 1 : 0;
        if (tid == 0) count[0] = above == 0 ? T : above;
    }

    /// <summary>
    /// Recycling, step 1 (by one group): of the dropped rows (kept[i] == 0, ascending) the top p.Selected by score (ties
    /// to the lower row), ascending, into sel; flags [V] is scratch.
    /// </summary>
    private static void RecycleSelect(ArrayView<float> scores, ArrayView<int> kept, ArrayView<int> flags, ArrayView<int> sel, RecycleShape p, int tid, int step)
    {
        for (int i = tid; i < p.V; i += step)
        {
            flags[i] = 0;
            if (kept[i] != 0) continue;
            float si = scores[i];
            int rank = 0;
            for (int j = 0; j < p.V; j++)
                if (j != i && kept[j] == 0 && SignalKernels.Beats(scores[j], j, si, i)) rank++;
            flags[i] = rank < p.Selected ? 1 : 0;
        }
        Group.Barrier();
        for (int i = tid; i < p.V; i += step)
        {
            if (flags[i] == 0) continue;
            int slot = 0;
            for (int j = 0; j < i; j++) slot += flags[j];
            sel[slot] = i;
        }
    }

    /// <summary>Recycling, step 2: dist[i, j] = |h_i - h_j| / sqrt(dim) in double for the selected rows; one thread per pair.</summary>
    internal static void RecycleDistanceKernel(Index1D t0, ArrayView<float> hidden, ArrayView<int> sel, ArrayView<double> dist, RecycleShape p, ElementRange range)
    {
        int n = p.Selected;
        double scale = 1.0 / XMath.Sqrt((double)p.Dim);
        for (long e = t0; e < range.Count; e += range.Stride)
        {
            int i = (int)(e / n), j = (int)(e % n);
            if (i == j) { dist[e] = 0; continue; }
            int a = i < j ? i : j, b = i < j ? j : i;
            long ao = (long)(p.Prefix + sel[a]) * p.Dim, bo = (long)(p.Prefix + sel[b]) * p.Dim;
            double s = 0;
            for (int t = 0; t < p.Dim; t++) { double d = (double)hidden[ao + t] - hidden[bo + t]; s += d * d; }
            dist[e] = XMath.Sqrt(s) * scale;
        }
    }

    /// <summary>
    /// Recycling, step 3 (one group): density-peak clustering of the selected rows as TokenRecycler does it: density =
    /// exp(-mean of the k smallest squared distances), delta = distance to the nearest denser row (the farthest for
    /// the densest), the Groups largest density·delta are centres (ascending), every row joins its nearest centre;
    /// then the merged rows, merged [Groups, Dim]: each the mean of its members' hidden states (ascending, in double).
    /// The merge reads each member row once through per-group member lists (members [Selected], starts [Groups + 1]),
    /// so in one group it costs about what its own launch did.
    /// </summary>
    internal static void RecycleClusterMergeKernel(ArrayView<double> dist, ArrayView<double> density, ArrayView<float> gamma, ArrayView<int> centre, ArrayView<int> assign,
        ArrayView<int> members, ArrayView<int> starts, ArrayView<float> hidden, ArrayView<int> sel, ArrayView<float> merged, RecycleShape p)
    {
        int tid = Group.IdxX, step = Group.DimX, n = p.Selected;
        int kk = XMath.Min(XMath.Max(1, p.Neighbours), n - 1);
        for (int i = tid; i < n; i += step)
        {
            if (kk <= 0) { density[i] = 1; continue; }
            // The kk smallest distances to the others, in ascending order (ties in index order), squared and summed in that order.
            double m = 0;
            for (int q = 0; q < kk; q++)
            {
                for (int j = 0; j < n; j++)
                {
                    if (j == i) continue;
                    double v = dist[(long)i * n + j];
                    int rank = 0;
                    for (int o = 0; o < n; o++)
                    {
                        if (o == i || o == j) continue;
                        double w = dist[(long)i * n + o];
                        if (w < v || (w == v && o < j)) rank++;
                    }
                    if (rank == q) { m += v * v; break; }
                }
            }
            density[i] = XMath.Exp(-m / kk);
        }
        Group.Barrier();
        for (int i = tid; i < n; i += step)
        {
            double best = double.PositiveInfinity, far = 0;
            for (int j = 0; j < n; j++)
            {
                if (j == i) continue;
                double d = dist[(long)i * n + j];
                far = XMath.Max(far, d);
                bool denser = density[j] > density[i] || (density[j] == density[i] && j < i);
                if (denser) best = XMath.Min(best, d);
            }
            double delta = best == double.PositiveInfinity ? far : best;
            gamma[i] = (float)(density[i] * delta);
        }
        Group.Barrier();
        int groups = XMath.Min(XMath.Max(p.Groups, 1), n);
        for (int i = tid; i < n; i += step)
        {
            int rank = 0;
            for (int j = 0; j < n; j++)
                if (j != i && SignalKernels.Beats(gamma[j], j, gamma[i], i)) rank++;
            assign[i] = rank < groups ? 1 : 0; // centre flag for now
        }
        Group.Barrier();
        for (int i = tid; i < n; i += step)
        {
            if (assign[i] == 0) continue;
            int slot = 0;
            for (int j = 0; j < i; j++) slot += assign[j];
            centre[slot] = i;
        }
        Group.Barrier();
        for (int i = tid; i < n; i += step)
        {
            int own = -1;
            for (int c = 0; c < groups; c++) if (centre[c] == i) own = c;
            if (own < 0)
            {
                own = 0;
                for (int c = 1; c < groups; c++)
                    if (dist[(long)i * n + centre[c]] < dist[(long)i * n + centre[own]]) own = c;
            }
            density[i] = own; // reuse: the cluster of row i (written after every read of density above)
        }
        Group.Barrier();
        for (int i = tid; i < n; i += step) assign[i] = (int)density[i];
        Group.Barrier();
        // The members of each group in ascending order (members [n]) and where each group's run starts (starts [groups + 1]).
        if (tid == 0)
        {
            int at = 0;
            for (int c = 0; c < groups; c++)
            {
                starts[c] = at;
                for (int i = 0; i < n; i++) if (assign[i] == c) members[at++] = i;
            }
            starts[groups] = at;
        }
        Group.Barrier();
        // merged[c, t] = mean over the members of group c (ascending) of hidden[t], in double.
        long elements = (long)groups * p.Dim;
        for (long e = tid; e < elements; e += step)
        {
            int c = (int)(e / p.Dim), t = (int)(e % p.Dim);
            double acc = 0;
            for (int m = starts[c]; m < starts[c + 1]; m++) acc += hidden[(long)(p.Prefix + sel[members[m]]) * p.Dim + t];
            merged[e] = (float)(acc / (starts[c + 1] - starts[c]));
        }
    }

    /// <summary>VisionZip, step 1: score[v] = Σ_h cls[h, v] in head order; one thread per patch.</summary>
    internal static void ClsSumKernel(Index1D t0, ArrayView<float> cls, ArrayView<float> score, int heads, int V, ElementRange range)
    {
        for (long v = t0; v < range.Count; v += range.Stride)
        {
            float s = 0;
            for (int h = 0; h < heads; h++) s += cls[(long)h * V + v];
            score[v] = s;
        }
    }

    /// <summary>
    /// VisionZip, step 2 (one group): the non-dominant patches in order (rest), the targets rest[i·Step] for i &lt; C, and
    /// each rest patch's key norm sqrt(Σ k²) in double (at least 1e-12).
    /// </summary>
    internal static void ZipRestKernel(ArrayView<int> kept, ArrayView<float> keys, ArrayView<int> rest, ArrayView<int> targets, ArrayView<double> norms, ZipShape p)
    {
        int tid = Group.IdxX, step = Group.DimX;
        for (int v = tid; v < p.V; v += step)
        {
            if (kept[v] != 0) continue;
            int slot = 0;
            for (int j = 0; j < v; j++) slot += 1 - kept[j];
            rest[slot] = v;
            double s = 0;
            for (int t = 0; t < p.Keys; t++) s += (double)keys[(long)v * p.Keys + t] * keys[(long)v * p.Keys + t];
            norms[v] = XMath.Max(XMath.Sqrt(s), 1e-12);
        }
        Group.Barrier();
        for (int i = tid; i < p.C; i += step) targets[i] = rest[i * p.Step];
    }

    /// <summary>VisionZip, step 3: each rest patch that is not a target joins the target of highest key cosine (double, first wins); targets get -1.</summary>
    internal static void ZipAssignKernel(Index1D t0, ArrayView<float> keys, ArrayView<int> rest, ArrayView<int> targets, ArrayView<double> norms, ArrayView<int> assign, ZipShape p, ElementRange range)
    {
        for (long e = t0; e < range.Count; e += range.Stride)
        {
            int v = rest[e];
            bool isTarget = false;
            for (int i = 0; i < p.C; i++) if (targets[i] == v) isTarget = true;
            if (isTarget) { assign[e] = -1; continue; }
            int best = 0;
            double bestSim = double.NegativeInfinity;
            for (int i = 0; i < p.C; i++)
            {
                int t0v = targets[i];
                double s = 0;
                for (int t = 0; t < p.Keys; t++) s += (double)keys[(long)v * p.Keys + t] * keys[(long)t0v * p.Keys + t];
                s /= norms[v] * norms[t0v];
                if (s > bestSim) { bestSim = s; best = i; }
            }
            assign[e] = best;
        }
    }

    /// <summary>
    /// VisionZip, step 4: output row i &lt; D is dominant patch dom[i]; row D + c is target c plus the mean of its members
    /// (double, ascending); visual[i] = dom[i] or -2. One thread per output element.
    /// </summary>
    internal static void ZipMergeKernel(Index1D t0, ArrayView<float> hidden, ArrayView<int> dom, ArrayView<int> rest, ArrayView<int> targets,
        ArrayView<int> assign, ArrayView<float> output, ArrayView<int> visual, ZipShape p, ElementRange range)
    {
        int restCount = p.V - p.D;
        for (long e = t0; e < range.Count; e += range.Stride)
        {
            int i = (int)(e / p.Dim), t = (int)(e % p.Dim);
            if (i < p.D)
            {
                output[e] = hidden[(long)dom[i] * p.Dim + t];
                if (t == 0) visual[i] = dom[i];
                continue;
            }
            int c = i - p.D;
            double acc = 0;
            int count = 0;
            for (int r = 0; r < restCount; r++)
                if (assign[r] == c) { acc += hidden[(long)rest[r] * p.Dim + t]; count++; }
            output[e] = (float)(hidden[(long)targets[c] * p.Dim + t] + (count == 0 ? 0 : acc / count));
            if (t == 0) visual[i] = -2;
        }
    }
}

internal sealed partial class CudaOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NmsShape>? _nms;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<double>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape,
        SparseVlmViews, PlanShape, RecycleShape>? _sparseVlm;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<double>, RecycleShape, ElementRange>? _recycleDistance;
    private Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<double>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<int>, ArrayView<float>, RecycleShape>? _recycleClusterMerge;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>? _clsSum;
    private Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ZipShape>? _zipRest;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ArrayView<int>, ZipShape, ElementRange>? _zipAssign;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ZipShape, ElementRange>? _zipMerge;

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NmsShape> NmsK
        => _nms ??= _acc.LoadKernel<ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, NmsShape>(SelectionKernels.AdaptiveNmsKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<double>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape,
        SparseVlmViews, PlanShape, RecycleShape> SparseVlmK
        => _sparseVlm ??= _acc.LoadKernel<ArrayView<float>, ArrayView<double>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, WindowShape,
            SparseVlmViews, PlanShape, RecycleShape>(SelectionKernels.SparseVlmKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<double>, RecycleShape, ElementRange> RecycleDistanceK
        => _recycleDistance ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<double>, RecycleShape, ElementRange>(SelectionKernels.RecycleDistanceKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<double>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<int>, ArrayView<float>, RecycleShape> RecycleClusterMergeK
        => _recycleClusterMerge ??= _acc.LoadKernel<ArrayView<double>, ArrayView<double>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<float>, ArrayView<int>, ArrayView<float>, RecycleShape>(SelectionKernels.RecycleClusterMergeKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange> ClsSumK
        => _clsSum ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, ElementRange>(SelectionKernels.ClsSumKernel);
    private Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ZipShape> ZipRestK
        => _zipRest ??= _acc.LoadKernel<ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ZipShape>(SelectionKernels.ZipRestKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ArrayView<int>, ZipShape, ElementRange> ZipAssignK
        => _zipAssign ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<double>, ArrayView<int>, ZipShape, ElementRange>(SelectionKernels.ZipAssignKernel);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ZipShape, ElementRange> ZipMergeK
        => _zipMerge ??= _acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ZipShape, ElementRange>(SelectionKernels.ZipMergeKernel);

    private object[] SelectionKernelsLoaded() =>
        [NmsK, SparseVlmK, RecycleDistanceK, RecycleClusterMergeK, ClsSumK, ZipRestK, ZipAssignK, ZipMergeK];

    /// <summary>
    /// AdaptPrune's last-row attention (window w: one row, V columns, of this layer's fp32 q and k in shape a, into attn
    /// [heads, V]), selection and plan in one single-group launch (see <see cref="SelectionKernels.AdaptiveNmsKernel"/>).
    /// </summary>
    public void AdaptiveNms(ArrayView<float> q, ArrayView<float> k, AttentionShape a, WindowShape w, ArrayView<float> attn, ArrayView<float> prior,
        ArrayView<float> keys, ArrayView<float> features, ArrayView<float> s, ArrayView<int> kept, ArrayView<int> keptLocal, ArrayView<int> plan, NmsShape p)
    {
        int V = p.Grid * p.Grid;
        Require(p.K >= 0 && p.K <= V, $"k ({p.K}) must be within 0..{V}.");
        Require(w.RowCount == 1 && w.ColCount == V && a.QHeads == p.Heads, $"the window must be one row over the {V} visual columns, of {p.Heads} heads.");
        Require(q.Length >= (long)a.Nq * a.QStride && k.Length >= (long)a.Nk * a.KvStride, "q or k too short for the attention shape.");
        Require(attn.Length >= (long)p.Heads * V && prior.Length >= V && keys.Length >= (long)V * p.Features && features.Length >= (long)V * p.Features && s.Length >= V && kept.Length >= V
            && keptLocal.Length >= Math.Max(1, p.K) && plan.Length >= p.Prefix + p.K + p.Text, "a view is too short for the NMS.");
        Counters.Launch();
        Queue.Enqueue(() => NmsK(Stream, OneGroup(), q, k, a, w, attn, prior, keys, features, s, kept, keptLocal, plan, p));
    }

    /// <summary>
    /// SparseVLM at a pruning layer in one launch (<see cref="SelectionKernels.SparseVlmKernel"/>): the relevance of text
    /// rows [textStart, +T) to visual rows [visualStart, +V) of the hidden states into contrib [V·T] (double), the text
    /// rows' attention over the visual columns from this layer's fp32 q and k (shape) into attn [heads, T, V], then in
    /// the last group to finish the raters, top k and plan, and the rows to recycle (o; p.Rows = T, p.V = V,
    /// p.Prefix = visualStart; flags and sel only when r.Selected &gt; 0).
    /// </summary>
    public void SparseVlm(ArrayView<float> hidden, ArrayView<double> contrib, ArrayView<float> q, ArrayView<float> k, ArrayView<float> attn, AttentionShape shape,
        int textStart, SparseVlmViews o, PlanShape p, RecycleShape r)
    {
        int V = p.V, T = p.Rows, visualStart = p.Prefix;
        Require(V > 0 && T > 0, $"V ({V}) and T ({T}) must be positive.");
        Require(p.ScoreMode == 1 && p.UseMask == 1 && p.WritePlan == 1, "SparseVLM scores by the raters' mean attention and writes the plan.");
        Require(p.K >= 0 && p.K <= V, $"k ({p.K}) must be within 0..{V}.");
        Require(visualStart >= 0 && visualStart + V <= shape.Nk && textStart >= 0 && textStart + T <= shape.Nq,
            $"visual rows [{visualStart}, +{V}) or text rows [{textStart}, +{T}) outside the {shape.Nq} rows.");
        Require(q.Length >= (long)shape.Nq * shape.QStride && k.Length >= (long)shape.Nk * shape.KvStride, "q or k too short for the attention shape.");
        Require(hidden.Length >= (long)(textStart + T) * r.Dim && contrib.Length >= (long)V * T && attn.Length >= (long)shape.QHeads * T * V,
            "hidden, contrib or attn too short for SparseVLM's signals.");
        Require(o.Relevance.Length >= T && o.Raters.Length >= T && o.Count.Length >= 1 && o.Scores.Length >= V && o.Kept.Length >= V
            && o.KeptLocal.Length >= Math.Max(1, p.K) && o.Plan.Length >= p.Prefix + p.K + p.Merged + p.Text, "a view is too short for SparseVLM's selection.");
        Require(r.Selected == 0 || (o.Flags.Length >= V && o.Sel.Length >= r.Selected), "flags or sel too short for recycling.");
        if (r.Selected == 0) (o.Flags, o.Sel) = (o.Kept, o.Kept); // unused
        o.Ticket = _ticket.View;
        int windowGroups = shape.QHeads * T, relevanceGroups = (V + RowGroupSize - 1) / RowGroupSize;
        Counters.Launch();
        Queue.Enqueue(() => SparseVlmK(Stream, RowConfig(windowGroups + relevanceGroups), hidden, contrib, q, k, attn, shape, new WindowShape(textStart, T, visualStart, V), o, p, r));
    }

    /// <summary>The last-group ticket itself (tests).</summary>
    internal ArrayView1D<int, Stride1D.Dense> LastGroupTicket => _ticket.View;

    /// <summary>
    /// After a failure with launches in flight: waits for the stream (ignoring its error) and sets the last-group ticket
    /// (<see cref="SelectionKernels.LastGroup"/>) back to 0, so that a launch stopped part-way does not leave it counting.
    /// </summary>
    public void ResetLastGroupTicket()
    {
        try { Stream.Synchronize(); } catch (Exception) { /* the failure being handled already reports it */ }
        _ticket.View.CopyFromCPU(new int[1]);
    }

    /// <summary>
    /// Recycling of the selected dropped rows sel (<see cref="SparseVlm"/>) into p.Groups merged rows (see
    /// <see cref="SelectionKernels"/>): two launches, the distances and then the clustering with the merge. dist [Selected²],
    /// density [Selected], gamma [Selected], centre [Groups], assign [Selected] and members [Selected + Groups + 1] are scratch.
    /// </summary>
    public void Recycle(ArrayView<float> hidden, ArrayView<int> sel, ArrayView<double> dist,
        ArrayView<double> density, ArrayView<float> gamma, ArrayView<int> centre, ArrayView<int> assign, ArrayView<int> members, ArrayView<float> merged, RecycleShape p)
    {
        int n = p.Selected;
        Require(n > 0 && p.Groups > 0 && p.Groups <= n, $"{n} selected rows into {p.Groups} groups.");
        Require(sel.Length >= n && dist.Length >= (long)n * n && density.Length >= n && gamma.Length >= n && centre.Length >= p.Groups && assign.Length >= n
            && members.Length >= n + p.Groups + 1 && merged.Length >= (long)p.Groups * p.Dim, "a view is too short for recycling.");
        var rd = Range((long)n * n);
        Counters.Launch(2);
        Queue.Enqueue(() => RecycleDistanceK(Stream, Extent(rd.Stride), hidden, sel, dist, p, rd));
        Queue.Enqueue(() => RecycleClusterMergeK(Stream, OneGroup(), dist, density, gamma, centre, assign, members.SubView(0, n), members.SubView(n, p.Groups + 1), hidden, sel, merged, p));
    }

    /// <summary>score[v] = Σ_h cls[h, v] (VisionZip's dominance score).</summary>
    public void ClsSum(ArrayView<float> cls, int heads, int V, ArrayView<float> score)
    {
        Require(cls.Length >= (long)heads * V && score.Length >= V, "cls or score too short.");
        var r = Range(V);
        Counters.Launch();
        Queue.Enqueue(() => ClsSumK(Stream, Extent(r.Stride), cls, score, heads, V, r));
    }

    /// <summary>
    /// VisionZip's contextual tokens after the dominant ones are flagged in kept: rest, targets and norms (one group), the
    /// assignment (one thread per rest patch), then the output rows and their visual indices. Three launches.
    /// </summary>
    public void VisionZipMerge(ArrayView<int> kept, ArrayView<int> dom, ArrayView<float> keys, ArrayView<float> hidden, ArrayView<int> rest, ArrayView<int> targets,
        ArrayView<double> norms, ArrayView<int> assign, ArrayView<float> output, ArrayView<int> visual, ZipShape p)
    {
        int restCount = p.V - p.D;
        Require(restCount >= 0 && p.C <= restCount && p.Step >= 1, $"{p.C} targets among {restCount} patches.");
        Require(rest.Length >= Math.Max(1, restCount) && targets.Length >= Math.Max(1, p.C) && norms.Length >= p.V && assign.Length >= Math.Max(1, restCount)
            && output.Length >= (long)(p.D + p.C) * p.Dim && visual.Length >= p.D + p.C, "a view is too short for VisionZip.");
        var ra = Range(Math.Max(1, restCount));
        var rm = Range((long)(p.D + p.C) * p.Dim);
        if (restCount > 0)
        {
            Counters.Launch();
            Queue.Enqueue(() => ZipRestK(Stream, OneGroup(), kept, keys, rest, targets, norms, p));
            if (p.C > 0)
            {
                Counters.Launch();
                Queue.Enqueue(() => ZipAssignK(Stream, Extent(ra.Stride), keys, rest, targets, norms, assign, p, new ElementRange(restCount, ra.Stride)));
            }
        }
        Counters.Launch();
        Queue.Enqueue(() => ZipMergeK(Stream, Extent(rm.Stride), hidden, dom, rest, targets, assign, output, visual, p, rm));
    }
}
