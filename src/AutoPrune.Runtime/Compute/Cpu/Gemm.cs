using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace AutoPrune.Compute.Cpu;

/// <summary>Instruction-set level used by the GEMM micro-kernels.</summary>
internal enum GemmIsa
{
    /// <summary>Portable scalar kernel (no SIMD requirements).</summary>
    Scalar = 0,
    /// <summary>AVX2 + FMA, 6x16 Vector256 micro-kernel.</summary>
    Avx2 = 1,
    /// <summary>AVX-512F, 6x32 Vector512 micro-kernel.</summary>
    Avx512 = 2,
}

/// <summary>
/// Cache-blocked, register-tiled, multi-threaded fp32 GEMM for the CPU engine.
/// <para>
/// Conventions: all matrices are row-major. <c>MatMulTransB</c> computes
/// <c>C[m,n] = A[m,k] · W[n,k]^T (+ bias[n])</c>, where W is a PyTorch <c>Linear</c> weight
/// laid out <c>[out, in]</c>. <c>MatMul</c> computes <c>C[m,n] = A[m,k] · B[k,n]</c>.
/// With <c>accumulate: true</c> the product (and bias) is added to the existing contents of C,
/// otherwise C is overwritten. C must not overlap A, W/B or bias. m = 1 takes a streaming GEMV path
/// (no packing); everything else is packed into ArrayPool panels and run through a register-tiled
/// micro-kernel (AVX-512 6x32, AVX2+FMA 6x16, or scalar 4x8). Calls below
/// <see cref="ParallelThresholdMacs"/> run single-threaded.
/// </para>
/// <para>
/// Determinism: work is partitioned over rows of C (m) or columns of C (n) only; the reduction
/// over k is never split across threads and its order is fixed by the (global) k-blocking, so
/// results are bit-identical for the same inputs whatever the thread count. They are not
/// necessarily bit-identical across instruction sets (scalar vs AVX2 vs AVX-512).
/// </para>
/// </summary>
internal static partial class Gemm
{
    /// <summary>Instruction set chosen for this machine.</summary>
    public static readonly GemmIsa DetectedIsa =
        Avx512F.IsSupported && Vector512.IsHardwareAccelerated ? GemmIsa.Avx512
        : Avx2.IsSupported && Fma.IsSupported ? GemmIsa.Avx2
        : GemmIsa.Scalar;

    private static int s_maxThreads = Environment.ProcessorCount;

    /// <summary>Upper bound on threads used by one GEMM call (default: processor count). Set to 1 to disable threading.</summary>
    public static int MaxThreads
    {
        get => s_maxThreads;
        set => s_maxThreads = Math.Max(1, value);
    }

    /// <summary>Below this many multiply-adds (m·n·k) a call runs on the calling thread only.</summary>
    public const long ParallelThresholdMacs = 1L << 20;

    // ---------------------------------------------------------------- public API: A · W^T

    /// <summary>C[m,n] = A[m,k] · W[n,k]^T (+ bias[n]) (+= if <paramref name="accumulate"/>). Dense (unstrided) operands.</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, int m, int k, ReadOnlySpan<float> w, int n, Span<float> c,
        ReadOnlySpan<float> bias = default, bool accumulate = false)
        => MatMulTransB(a, k, m, k, w, k, n, c, n, bias, accumulate);

    /// <summary>Strided C = A · W^T: row i of A starts at a[i*lda], row j of W at w[j*ldw], row i of C at c[i*ldc].</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<float> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias = default, bool accumulate = false)
        => MatMulTransBCore(a, lda, m, k, w, ldw, n, c, ldc, bias, accumulate, DetectedIsa, MaxThreads);

    /// <summary>C[m,n] = A[m,k] · W[n,k]^T with fp16 weights widened to fp32 per packed tile.</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, int m, int k, ReadOnlySpan<Half> w, int n, Span<float> c,
        ReadOnlySpan<float> bias = default, bool accumulate = false)
        => MatMulTransB(a, k, m, k, w, k, n, c, n, bias, accumulate);

    /// <summary>Strided C = A · W^T with fp16 weights.</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<Half> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias = default, bool accumulate = false)
        => MatMulTransBCore(a, lda, m, k, w, ldw, n, c, ldc, bias, accumulate, DetectedIsa, MaxThreads);

    /// <summary>C[m,n] = A[m,k] · W[n,k]^T with bf16 weights (raw bits) widened to fp32 per packed tile.</summary>
    public static void MatMulTransBBFloat16(ReadOnlySpan<float> a, int m, int k, ReadOnlySpan<ushort> w, int n, Span<float> c,
        ReadOnlySpan<float> bias = default, bool accumulate = false)
        => MatMulTransBBFloat16Core(a, k, m, k, w, k, n, c, n, bias, accumulate, DetectedIsa, MaxThreads);

    // ---------------------------------------------------------------- public API: A · B

    /// <summary>C[m,n] = A[m,k] · B[k,n] (+= if <paramref name="accumulate"/>), all row-major and dense.</summary>
    public static void MatMul(ReadOnlySpan<float> a, int m, int k, ReadOnlySpan<float> b, int n, Span<float> c, bool accumulate = false)
        => MatMul(a, k, m, k, b, n, n, c, n, accumulate);

    /// <summary>Strided C = A · B: row i of A at a[i*lda], row p of B at b[p*ldb], row i of C at c[i*ldc].</summary>
    public static void MatMul(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<float> b, int ldb, int n,
        Span<float> c, int ldc, bool accumulate = false)
        => MatMulCore(a, lda, m, k, b, ldb, n, c, ldc, accumulate, DetectedIsa, MaxThreads);

    // ---------------------------------------------------------------- cores (isa/threads explicit, for tests)

    internal static void MatMulTransBCore(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<float> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads, bool tiled = false)
        => TransBCore(BKind.TransFloat, a, lda, m, k, w, ldw, n, c, ldc, bias, accumulate, isa, threads, tiled);

    internal static void MatMulTransBCore(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<Half> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads, bool tiled = false)
        => TransBCore(BKind.TransHalf, a, lda, m, k, w, ldw, n, c, ldc, bias, accumulate, isa, threads, tiled);

    internal static void MatMulTransBBFloat16Core(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<ushort> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads)
        => TransBCore(BKind.TransBFloat16, a, lda, m, k, w, ldw, n, c, ldc, bias, accumulate, isa, threads);

    /// <summary>C = A · Wᵀ for W of element type <typeparamref name="TW"/> (fp32, or fp16/bf16 widened per tile as <paramref name="kind"/> says).</summary>
    private static unsafe void TransBCore<TW>(BKind kind, ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<TW> w, int ldw, int n,
        Span<float> c, int ldc, ReadOnlySpan<float> bias, bool accumulate, GemmIsa isa, int threads, bool tiled = false) where TW : unmanaged
    {
        Validate(a.Length, lda, m, k, c.Length, ldc, n, bias.Length);
        ValidateRows(w.Length, ldw, n, k, nameof(w));
        if (m == 0 || n == 0) return;
        fixed (float* pa = a) fixed (TW* pw = w) fixed (float* pc = c) fixed (float* pb = bias)
        {
            var job = new Job(isa, kind, pa, lda, m, k, pw, ldw, n, pc, ldc, bias.IsEmpty ? null : pb, accumulate);
            job.Execute(threads, tiled);
        }
    }

    internal static unsafe void MatMulCore(ReadOnlySpan<float> a, int lda, int m, int k, ReadOnlySpan<float> b, int ldb, int n,
        Span<float> c, int ldc, bool accumulate, GemmIsa isa, int threads, bool tiled = false)
    {
        Validate(a.Length, lda, m, k, c.Length, ldc, n, 0);
        ArgumentOutOfRangeException.ThrowIfNegative(ldb);
        if (k > 0 && n > 0)
        {
            if (ldb < n) throw new ArgumentOutOfRangeException(nameof(ldb), "ldb must be >= n.");
            if (b.Length < (long)(k - 1) * ldb + n) throw new ArgumentException("b is too short for k, n, ldb.", nameof(b));
        }
        if (m == 0 || n == 0) return;
        fixed (float* pa = a) fixed (float* pbm = b) fixed (float* pc = c)
        {
            var job = new Job(isa, BKind.NormalFloat, pa, lda, m, k, pbm, ldb, n, pc, ldc, null, accumulate);
            job.Execute(threads, tiled);
        }
    }

    private static void Validate(int aLen, int lda, int m, int k, int cLen, int ldc, int n, int biasLen)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfNegative(lda);
        ArgumentOutOfRangeException.ThrowIfNegative(ldc);
        ValidateRows(aLen, lda, m, k, "a");
        ValidateRows(cLen, ldc, m, n, "c");
        if (biasLen != 0 && biasLen < n) throw new ArgumentException("bias must be empty or have at least n elements.", "bias");
    }

    private static void ValidateRows(int len, int ld, int rows, int cols, string name)
    {
        if (rows == 0 || cols == 0) return;
        if (ld < cols) throw new ArgumentOutOfRangeException(name, $"Leading dimension of {name} ({ld}) must be >= {cols}.");
        if (len < (long)(rows - 1) * ld + cols) throw new ArgumentException($"{name} is too short: {len} < ({rows}-1)*{ld}+{cols}.", name);
    }

    internal enum BKind { TransFloat, TransHalf, TransBFloat16, NormalFloat }

    /// <summary>Blocking parameters for one instruction set.</summary>
    internal readonly record struct Blocking(int MR, int NR, int KC, int MC, int NC);

    internal static Blocking GetBlocking(GemmIsa isa) => isa switch
    {
        // Tuned on Zen 4 (1 MB L2): a deep KC (fewer C read-modify-writes) with a small MC beat the
        // "B micro-panel in L1" sizing; 7b 600x4096x4096 went from ~84 to ~94 GFLOP/s per core.
        GemmIsa.Avx512 => new Blocking(6, 32, 512, 72, 1024),
        GemmIsa.Avx2 => new Blocking(6, 16, 512, 72, 1024),
        _ => new Blocking(4, 8, 256, 64, 1024),
    };

    /// <summary>All arguments of one call, as raw pointers, so worker lambdas can share them.</summary>
    private sealed unsafe class Job
    {
        private readonly GemmIsa _isa;
        private readonly BKind _kind;
        private readonly float* _a; private readonly int _lda;
        private readonly int _m, _k, _n;
        private readonly void* _b; private readonly int _ldb;
        private readonly float* _c; private readonly int _ldc;
        private readonly float* _bias;
        private readonly bool _acc;
        private readonly Blocking _blk;
        // partition
        private bool _splitM;
        private int _parts, _unitsPerPart, _unit;

        public Job(GemmIsa isa, BKind kind, float* a, int lda, int m, int k, void* b, int ldb, int n, float* c, int ldc, float* bias, bool acc)
        {
            _isa = isa; _kind = kind; _a = a; _lda = lda; _m = m; _k = k; _b = b; _ldb = ldb; _n = n; _c = c; _ldc = ldc; _bias = bias; _acc = acc;
            _blk = GetBlocking(isa);
        }

        /// <param name="tiled">Use the packed micro-kernel even for one row (whose GEMV path sums in another order).</param>
        public void Execute(int maxThreads, bool tiled)
        {
            if (_k == 0)
            {
                for (int i = 0; i < _m; i++)
                {
                    var row = new Span<float>(_c + (nint)i * _ldc, _n);
                    if (!_acc) row.Clear();
                    if (_bias != null) for (int j = 0; j < _n; j++) row[j] += _bias[j];
                }
                return;
            }

            long macs = (long)_m * _n * _k;
            int threads = macs < ParallelThresholdMacs ? 1 : Math.Min(maxThreads, Environment.ProcessorCount);

            if (_m == 1 && !tiled)
            {
                // GEMV: stream the weights once; split over n only.
                _splitM = false; _unit = 16;
                PlanParts(threads, (_n + _unit - 1) / _unit);
                Run(GemvPart);
                return;
            }

            int mTiles = (_m + _blk.MR - 1) / _blk.MR;
            int nTiles = (_n + _blk.NR - 1) / _blk.NR;
            // Split the dimension with more tiles: splitting n duplicates packing of A (m*k), splitting m duplicates packing of B (n*k).
            _splitM = mTiles >= nTiles;
            _unit = _splitM ? _blk.MR : _blk.NR;
            PlanParts(threads, _splitM ? mTiles : nTiles);
            Run(GemmPart);
        }

        private void PlanParts(int threads, int units)
        {
            _parts = Math.Max(1, Math.Min(threads, units));
            _unitsPerPart = (units + _parts - 1) / _parts;
            _parts = (units + _unitsPerPart - 1) / _unitsPerPart;
        }

        private void Run(Action<int> body)
        {
            if (_parts == 1) body(0);
            else Parallel.For(0, _parts, ComputeScheduler.Options(_parts), body);
        }

        private (int lo, int hi) Range(int part, int total)
        {
            long lo = (long)part * _unitsPerPart * _unit;
            long hi = Math.Min(total, lo + (long)_unitsPerPart * _unit);
            return ((int)Math.Min(lo, total), (int)hi);
        }

        private void GemvPart(int part)
        {
            var (n0, n1) = Range(part, _n);
            if (n0 >= n1) return;
            switch (_kind)
            {
                case BKind.TransFloat: GemvTransB(_isa, _a, _k, (float*)_b, _ldb, n0, n1, _c, _bias, _acc); break;
                case BKind.TransHalf: GemvTransBWide<Half, HalfWidening>(_isa, _a, _k, (Half*)_b, _ldb, n0, n1, _c, _bias, _acc); break;
                case BKind.TransBFloat16: GemvTransBWide<ushort, BFloat16Widening>(_isa, _a, _k, (ushort*)_b, _ldb, n0, n1, _c, _bias, _acc); break;
                default: GemvNormal(_isa, _a, _k, (float*)_b, _ldb, n0, n1, _c, _acc); break;
            }
        }

        private void GemmPart(int part)
        {
            int m0 = 0, m1 = _m, n0 = 0, n1 = _n;
            if (_splitM) (m0, m1) = Range(part, _m); else (n0, n1) = Range(part, _n);
            if (m0 >= m1 || n0 >= n1) return;

            var blk = _blk;
            int MR = blk.MR, NR = blk.NR;
            int kcMax = Math.Min(blk.KC, _k);
            int mcMax = Math.Min(blk.MC, RoundUp(m1 - m0, MR));
            int ncMax = Math.Min(blk.NC, RoundUp(n1 - n0, NR));

            const int Align = 16; // floats = 64 bytes
            float[] aBuf = ArrayPool<float>.Shared.Rent(mcMax * kcMax + Align);
            float[] bBuf = ArrayPool<float>.Shared.Rent(ncMax * kcMax + Align);
            try
            {
                fixed (float* aRaw = aBuf) fixed (float* bRaw = bBuf)
                {
                    float* ap = AlignPtr(aRaw);
                    float* bp = AlignPtr(bRaw);
                    float* tile = stackalloc float[MR * NR + Align];
                    tile = AlignPtr(tile);

                    for (int jc = n0; jc < n1; jc += ncMax)
                    {
                        int nc = Math.Min(ncMax, n1 - jc);
                        for (int pc = 0; pc < _k; pc += kcMax)
                        {
                            int kc = Math.Min(kcMax, _k - pc);
                            bool first = pc == 0;
                            bool add = !first || _acc;
                            float* biasBlk = first && _bias != null ? _bias + jc : null;

                            switch (_kind)
                            {
                                case BKind.TransFloat: PackBTrans(_isa, (float*)_b, _ldb, jc, nc, pc, kc, NR, bp); break;
                                case BKind.TransHalf: PackBTransWide<Half, HalfWidening>(_isa, (Half*)_b, _ldb, jc, nc, pc, kc, NR, bp); break;
                                case BKind.TransBFloat16: PackBTransWide<ushort, BFloat16Widening>(_isa, (ushort*)_b, _ldb, jc, nc, pc, kc, NR, bp); break;
                                default: PackBNormal((float*)_b, _ldb, jc, nc, pc, kc, NR, bp); break;
                            }

                            for (int ic = m0; ic < m1; ic += mcMax)
                            {
                                int mc = Math.Min(mcMax, m1 - ic);
                                PackA(_a, _lda, ic, mc, pc, kc, MR, ap);

                                for (int jr = 0; jr < nc; jr += NR)
                                {
                                    int nr = Math.Min(NR, nc - jr);
                                    float* bPanel = bp + (nint)jr * kc;
                                    float* biasTile = biasBlk == null ? null : biasBlk + jr;
                                    for (int ir = 0; ir < mc; ir += MR)
                                    {
                                        int mr = Math.Min(MR, mc - ir);
                                        float* aPanel = ap + (nint)ir * kc;
                                        float* cTile = _c + (nint)(ic + ir) * _ldc + jc + jr;
                                        if (mr == MR && nr == NR)
                                        {
                                            Kernel(_isa, kc, aPanel, bPanel, cTile, _ldc, biasTile, add);
                                        }
                                        else
                                        {
                                            Kernel(_isa, kc, aPanel, bPanel, tile, NR, null, false);
                                            MergeTile(tile, NR, cTile, _ldc, mr, nr, biasTile, add);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(aBuf);
                ArrayPool<float>.Shared.Return(bBuf);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float* AlignPtr(float* p) => (float*)(((nint)p + 63) & ~(nint)63);

    /// <summary>Merge a partial micro-tile computed into <paramref name="tile"/> into C. Same operation order as the full-tile kernels: (acc + bias) + C.</summary>
    private static unsafe void MergeTile(float* tile, int ldt, float* c, int ldc, int mr, int nr, float* bias, bool add)
    {
        for (int i = 0; i < mr; i++)
        {
            float* t = tile + (nint)i * ldt;
            float* cr = c + (nint)i * ldc;
            for (int j = 0; j < nr; j++)
            {
                float v = t[j];
                if (bias != null) v += bias[j];
                if (add) v += cr[j];
                cr[j] = v;
            }
        }
    }
}
