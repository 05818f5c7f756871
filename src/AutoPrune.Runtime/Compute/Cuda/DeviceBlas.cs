using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// One column-major <c>cublasGemmStridedBatchedEx</c> call, exactly as cuBLAS receives it: for each batch b,
/// C_b = alpha·op(A_b)·op(B_b) + beta·C_b with op(A) m × k, op(B) k × n, C m × n (leading dimension ldc).
/// A and B are fp16; C is fp32 (<see cref="CuBlas.CudaR32F"/>) or fp16 (<see cref="CuBlas.CudaR16F"/>); compute is fp32.
/// Pointers are device pointers (host pointers on ILGPU's CPU accelerator).
/// </summary>
internal readonly record struct GemmCall(
    int TransA, int TransB, int M, int N, int K,
    IntPtr A, int Lda, long StrideA,
    IntPtr B, int Ldb, long StrideB,
    IntPtr C, int CType, int Ldc, long StrideC,
    int Batch, float Beta)
{
    /// <summary>Elements of A, B and C a call may touch (for bounds checks against the views it was built from).</summary>
    public long ExtentA => Extent(TransA == CuBlas.OpN ? M : K, TransA == CuBlas.OpN ? K : M, Lda, StrideA);
    public long ExtentB => Extent(TransB == CuBlas.OpN ? K : N, TransB == CuBlas.OpN ? N : K, Ldb, StrideB);
    public long ExtentC => Extent(M, N, Ldc, StrideC);

    /// <summary>Column-major rows × cols with leading dimension ld, <see cref="Batch"/> times.</summary>
    private long Extent(int rows, int cols, int ld, long stride) => (Batch - 1) * stride + (long)(cols - 1) * ld + rows;
}

/// <summary>Runs <see cref="GemmCall"/>s: cuBLAS on a GPU, a host reference on ILGPU's CPU accelerator.</summary>
internal interface IGemmExecutor : IDisposable
{
    void Run(in GemmCall call);
    /// <summary>"cuBLAS (libcublas.so.13)" or "host reference GEMM".</summary>
    string Name { get; }
}

/// <summary>
/// cuBLAS on the model's stream (so GEMMs and ILGPU kernels stay ordered without host synchronisation), with a fixed
/// workspace (<see cref="WorkspaceBytes"/>), so that no call allocates and the calls can be captured into a CUDA graph.
/// </summary>
internal sealed class CuBlasExecutor : IGemmExecutor
{
    /// <summary>Workspace given to cuBLAS: 32 MiB, what NVIDIA recommends for Hopper.</summary>
    public const long WorkspaceBytes = 32L << 20;

    private IntPtr _handle;

    /// <param name="stream">The native CUDA stream (<see cref="DeviceQueue.NativeStream"/>).</param>
    /// <param name="workspace">A device buffer of <see cref="WorkspaceBytes"/> bytes that lives as long as the executor.</param>
    public CuBlasExecutor(IntPtr stream, IntPtr workspace)
    {
        _handle = CuBlas.Create();
        try
        {
            CuBlas.SetStream(_handle, stream);
            CuBlas.SetWorkspace(_handle, workspace, WorkspaceBytes);
        }
        catch
        {
            CuBlas.Destroy(_handle);
            throw;
        }
        Name = $"cuBLAS ({CuBlas.LoadedLibrary})";
    }

    public string Name { get; }

    public void Run(in GemmCall c) => CuBlas.GemmStridedBatched(_handle, c);

    public void Dispose()
    {
        CuBlas.Destroy(_handle);
        _handle = IntPtr.Zero;
    }
}

/// <summary>
/// The cuBLAS contract computed on the host, for ILGPU's CPU accelerator (whose buffers are host memory): it receives
/// exactly the arguments cuBLAS would, so every row-major → column-major mapping in <see cref="DeviceBlas"/> is
/// exercised without a GPU. fp16 inputs are widened exactly; sums are fp32; an fp16 C is rounded to nearest even.
/// Calls with an untransposed B (every call the model makes) run through the CPU engine's tiled GEMM, so each element
/// is summed in the order the CPU backend sums it (<see cref="CpuPrecision.MatchDevice"/> then agrees bit for bit);
/// the rest are summed column by column.
/// </summary>
internal sealed unsafe class HostGemmExecutor : IGemmExecutor
{
    private readonly Accelerator _acc;

    public HostGemmExecutor(Accelerator accelerator)
    {
        if (accelerator.AcceleratorType != AcceleratorType.CPU)
            throw new ArgumentException("The host reference GEMM reads device memory directly and runs only on ILGPU's CPU accelerator.");
        _acc = accelerator;
    }

    public string Name => "host reference GEMM (ILGPU CPU accelerator)";

    public void Run(in GemmCall c)
    {
        _acc.Synchronize(); // kernels queued before this call must have written A and B
        var call = c;
        var a = new ReadOnlySpan<System.Half>((void*)c.A, checked((int)c.ExtentA));
        var b = new ReadOnlySpan<System.Half>((void*)c.B, checked((int)c.ExtentB));
        var bw = new float[b.Length];
        TensorPrimitives.ConvertToSingle(b, bw);
        // A transposed A is an fp16 weight the tiled GEMM widens per tile itself; every other A is widened here, once.
        bool tiled = c.TransB == CuBlas.OpN && (c.Beta == 0f || (c.Beta == 1f && c.CType == CuBlas.CudaR32F));
        float[] aw = tiled && c.TransA == CuBlas.OpT ? [] : new float[a.Length];
        if (aw.Length > 0) TensorPrimitives.ConvertToSingle(a, aw);
        if (tiled)
        {
            for (int batch = 0; batch < c.Batch; batch++) Tiled(c, a, aw, bw, batch);
            return;
        }
        int columns = c.Batch * c.N;
        Parallel.For(0, columns, ComputeScheduler.Options(), () => new float[call.M], (job, _, acc) =>
        {
            int batch = job / call.N, j = job % call.N;
            Column(call, aw, bw, batch, j, acc);
            return acc;
        }, _ => { });
    }

    /// <summary>
    /// One batch through <see cref="AutoPrune.Compute.Cpu.Gemm"/>: column-major C (M × N) = op(A) · B is row-major
    /// C (N × M) = B_rm (N × K) · op(A)_rm, i.e. X · Wᵀ when A is transposed (A an fp16 [M, K] weight) and X · A_rm otherwise.
    /// </summary>
    private static void Tiled(in GemmCall c, ReadOnlySpan<System.Half> a, float[] aw, float[] bw, int batch)
    {
        long cBase = batch * c.StrideC;
        int cLen = checked((int)((long)(c.N - 1) * c.Ldc + c.M));
        var sum = new float[cLen];
        var c32 = c.CType == CuBlas.CudaR32F ? new Span<float>((float*)c.C + cBase, cLen) : default;
        bool accumulate = c.Beta == 1f;
        if (accumulate) c32.CopyTo(sum);
        var x = bw.AsSpan((int)(batch * c.StrideB));
        var isa = AutoPrune.Compute.Cpu.Gemm.DetectedIsa;
        int threads = AutoPrune.Compute.Cpu.Gemm.MaxThreads;
        if (c.TransA == CuBlas.OpT)
            AutoPrune.Compute.Cpu.Gemm.MatMulTransBCore(x, c.Ldb, c.N, c.K, a.Slice((int)(batch * c.StrideA)), c.Lda, c.M, sum, c.Ldc, default, accumulate, isa, threads, tiled: true);
        else
            AutoPrune.Compute.Cpu.Gemm.MatMulCore(x, c.Ldb, c.N, c.K, aw.AsSpan((int)(batch * c.StrideA)), c.Lda, c.M, sum, c.Ldc, accumulate, isa, threads, tiled: true);
        for (int j = 0; j < c.N; j++)
        {
            var row = sum.AsSpan(j * c.Ldc, c.M);
            if (c.CType == CuBlas.CudaR32F) row.CopyTo(c32.Slice(j * c.Ldc, c.M));
            else TensorPrimitives.ConvertToHalf(row, new Span<System.Half>((System.Half*)c.C + cBase + (long)j * c.Ldc, c.M));
        }
    }

    /// <summary>Computes column j of C for one batch into <paramref name="acc"/> and stores it.</summary>
    private static void Column(in GemmCall c, float[] aw, float[] bw, int batch, int j, float[] acc)
    {
        var a = aw.AsSpan((int)(batch * c.StrideA));
        var b = bw.AsSpan((int)(batch * c.StrideB));
        var col = acc.AsSpan(0, c.M);
        if (c.TransA == CuBlas.OpT && c.TransB == CuBlas.OpN)
        {
            var bj = b.Slice(j * c.Ldb, c.K);
            for (int i = 0; i < c.M; i++) col[i] = TensorPrimitives.Dot(a.Slice(i * c.Lda, c.K), bj);
        }
        else if (c.TransA == CuBlas.OpN)
        {
            col.Clear();
            for (int l = 0; l < c.K; l++)
            {
                float blj = c.TransB == CuBlas.OpN ? b[l + j * c.Ldb] : b[j + l * c.Ldb];
                if (blj != 0f) TensorPrimitives.MultiplyAdd(a.Slice(l * c.Lda, c.M), blj, col, col);
            }
        }
        else // A transposed, B transposed
        {
            for (int i = 0; i < c.M; i++)
            {
                float s = 0;
                for (int l = 0; l < c.K; l++) s += a[l + i * c.Lda] * b[j + l * c.Ldb];
                col[i] = s;
            }
        }
        long cBase = batch * c.StrideC + (long)j * c.Ldc;
        if (c.CType == CuBlas.CudaR32F)
        {
            var dst = new Span<float>((float*)c.C + cBase, c.M);
            if (c.Beta != 0f) TensorPrimitives.MultiplyAdd(dst, c.Beta, col, dst);
            else col.CopyTo(dst);
        }
        else
        {
            var dst = new Span<System.Half>((System.Half*)c.C + cBase, c.M);
            if (c.Beta != 0f)
                for (int i = 0; i < c.M; i++) col[i] += c.Beta * (float)dst[i];
            TensorPrimitives.ConvertToHalf(col, dst);
        }
    }

    public void Dispose() { }
}

/// <summary>
/// Row-major GEMMs on device buffers, mapped to column-major <see cref="GemmCall"/>s. A row-major [r, c] matrix with
/// row stride s is the column-major [c, r] matrix with leading dimension s, so row-major C = X·Y is column-major
/// Cᵀ = Yᵀ·Xᵀ: the operands swap places and no data moves.
/// </summary>
internal sealed class DeviceBlas : IDisposable
{
    private readonly IGemmExecutor _exec;
    private readonly DeviceQueue? _queue;

    /// <param name="executor">cuBLAS, or the host reference GEMM.</param>
    /// <param name="queue">
    /// The model's stream: calls go through <see cref="DeviceQueue.Enqueue"/>, so that an emulated graph records them, and
    /// are counted in its counters. Null runs them at once and counts them apart.
    /// </param>
    public DeviceBlas(IGemmExecutor executor, DeviceQueue? queue = null)
    {
        _exec = executor;
        _queue = queue;
        Counters = queue?.Counters ?? new Diagnostics.DeviceCounterSet();
    }

    /// <summary>Where cuBLAS calls are counted.</summary>
    public Diagnostics.DeviceCounterSet Counters { get; }

    public string Name => _exec.Name;

    /// <summary>c[m, n] (+)= a[m, k] · w[n, k]ᵀ with fp16 a and w; c fp32 (a linear layer without bias).</summary>
    public void Linear(ArrayView<ushort> a, int m, int k, ArrayView<ushort> w, int n, ArrayView<float> c, bool accumulate = false)
        => Linear(a, m, k, w, n, c, CuBlas.CudaR32F, accumulate ? 1f : 0f);

    /// <summary>c[m, n] = a[m, k] · w[n, k]ᵀ rounded to fp16 (for an output the next kernel reads in fp16).</summary>
    public void LinearToHalf(ArrayView<ushort> a, int m, int k, ArrayView<ushort> w, int n, ArrayView<ushort> c)
        => Linear(a, m, k, w, n, c, CuBlas.CudaR16F, 0f);

    private void Linear<TC>(ArrayView<ushort> a, int m, int k, ArrayView<ushort> w, int n, ArrayView<TC> c, int cType, float beta) where TC : unmanaged
    {
        if (m == 0) return;
        Check(a, (long)m * k, "input");
        Check(w, (long)n * k, "weight");
        Check(c, (long)m * n, "output");
        var g = MapTransB(m, k, n, aRowStride: k, wRowStride: k, cRowStride: n);
        Run(g with { A = Ptr(w), B = Ptr(a), C = Ptr(c), CType = cType, Beta = beta });
    }

    /// <summary>
    /// Batched c_b[m, n] = a_b[m, k] · w_b[n, k]ᵀ (fp32 c), operands given by offset, row stride and batch stride in
    /// elements (e.g. per-head attention scores q·kᵀ).
    /// </summary>
    public void BatchedTransB(int m, int k, int n, int batch,
        ArrayView<ushort> a, int aRowStride, long aBatchStride,
        ArrayView<ushort> w, int wRowStride, long wBatchStride,
        ArrayView<float> c, int cRowStride, long cBatchStride)
    {
        if (m == 0 || n == 0 || batch == 0) return;
        var g = MapTransB(m, k, n, aRowStride, wRowStride, cRowStride) with
        {
            StrideA = wBatchStride, StrideB = aBatchStride, StrideC = cBatchStride, Batch = batch, CType = CuBlas.CudaR32F,
        };
        RunBatched(g, w, "W", a, "A", c);
    }

    /// <summary>
    /// Batched c_b[m, n] = a_b[m, k] · b_b[k, n] with fp16 a, b and an fp16 c (e.g. attention probabilities · values).
    /// </summary>
    public void BatchedNN(int m, int k, int n, int batch,
        ArrayView<ushort> a, int aRowStride, long aBatchStride,
        ArrayView<ushort> b, int bRowStride, long bBatchStride,
        ArrayView<ushort> c, int cRowStride, long cBatchStride)
    {
        if (m == 0 || n == 0 || batch == 0) return;
        var g = MapNN(m, k, n, aRowStride, bRowStride, cRowStride) with
        {
            StrideA = bBatchStride, StrideB = aBatchStride, StrideC = cBatchStride, Batch = batch, CType = CuBlas.CudaR16F,
        };
        RunBatched(g, b, "B", a, "A", c);
    }

    /// <summary>
    /// Checks that the views hold everything the call reaches, fills in the pointers (cuBLAS "A" is the second row-major
    /// operand, cuBLAS "B" the first) and runs it.
    /// </summary>
    private void RunBatched<TC>(GemmCall g, ArrayView<ushort> cublasA, string nameA, ArrayView<ushort> cublasB, string nameB, ArrayView<TC> c)
        where TC : unmanaged
    {
        Check(cublasA, g.ExtentA, "batched " + nameA);
        Check(cublasB, g.ExtentB, "batched " + nameB);
        Check(c, g.ExtentC, "batched C");
        Run(g with { A = Ptr(cublasA), B = Ptr(cublasB), C = Ptr(c) });
    }

    private void Run(GemmCall call)
    {
        Counters.Blas();
        if (_queue is null) _exec.Run(call);
        else _queue.Enqueue(() => _exec.Run(call));
    }

    /// <summary>
    /// Row-major C[m, n] = A[m, k]·W[n, k]ᵀ as column-major Cᵀ(n × m) = op_T(W as k × n)·A(as k × m). Pointers left
    /// empty; the caller fills them (cuBLAS "A" is W, cuBLAS "B" is A). Pure, for tests.
    /// </summary>
    internal static GemmCall MapTransB(int m, int k, int n, int aRowStride, int wRowStride, int cRowStride)
    {
        if (m <= 0 || k <= 0 || n <= 0) throw new ArgumentOutOfRangeException(nameof(m), $"GEMM sizes must be positive: m {m}, k {k}, n {n}.");
        if (aRowStride < k || wRowStride < k || cRowStride < n)
            throw new ArgumentOutOfRangeException(nameof(aRowStride), $"Row strides ({aRowStride}, {wRowStride}, {cRowStride}) must be at least the row lengths ({k}, {k}, {n}).");
        return new GemmCall(CuBlas.OpT, CuBlas.OpN, n, m, k, IntPtr.Zero, wRowStride, 0, IntPtr.Zero, aRowStride, 0,
            IntPtr.Zero, CuBlas.CudaR32F, cRowStride, 0, 1, 0f);
    }

    /// <summary>
    /// Row-major C[m, n] = A[m, k]·B[k, n] as column-major Cᵀ(n × m) = (B as n × k)·(A as k × m), both untransposed.
    /// cuBLAS "A" is B, cuBLAS "B" is A. Pure, for tests.
    /// </summary>
    internal static GemmCall MapNN(int m, int k, int n, int aRowStride, int bRowStride, int cRowStride)
    {
        if (m <= 0 || k <= 0 || n <= 0) throw new ArgumentOutOfRangeException(nameof(m), $"GEMM sizes must be positive: m {m}, k {k}, n {n}.");
        if (aRowStride < k || bRowStride < n || cRowStride < n)
            throw new ArgumentOutOfRangeException(nameof(aRowStride), $"Row strides ({aRowStride}, {bRowStride}, {cRowStride}) must be at least the row lengths ({k}, {n}, {n}).");
        return new GemmCall(CuBlas.OpN, CuBlas.OpN, n, m, k, IntPtr.Zero, bRowStride, 0, IntPtr.Zero, aRowStride, 0,
            IntPtr.Zero, CuBlas.CudaR32F, cRowStride, 0, 1, 0f);
    }

    private static void Check<T>(ArrayView<T> v, long needed, string what) where T : unmanaged
    {
        if (v.Length < needed)
            throw new ArgumentException($"GEMM {what} view holds {v.Length} elements but the call reaches {needed}.");
    }

    internal static IntPtr Ptr<T>(ArrayView<T> v) where T : unmanaged
            {
        var contiguous = (IContiguousArrayView)v;
        return contiguous.Buffer.NativePtr + (nint)(contiguous.Index * Unsafe.SizeOf<T>());
    }

    public void Dispose() => _exec.Dispose();
}
