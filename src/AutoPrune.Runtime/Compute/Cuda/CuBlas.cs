using System.Reflection;
using System.Runtime.InteropServices;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Our own P/Invoke layer over cuBLAS (v2 API, CUDA 11 / 12 / 13): handle management and the two mixed-precision
/// GEMMs the decoder needs (fp16 inputs, fp32 compute and accumulation, tensor-core algorithm).
/// </summary>
/// <remarks>
/// NOT EXECUTED: the machine this was written on has no GPU and no cuBLAS, so none of the native calls below has
/// ever run. What is tested without a GPU is the library-name resolution (<see cref="ResolveLibraryName"/>) and the
/// row-major → column-major argument mapping (<see cref="DeviceBlas.MapTransB"/> and <see cref="DeviceBlas.MapNN"/>, checked against a column-major reference
/// GEMM in the tests). The enum values are those of cublas_api.h / library_types.h (CUDA 11+);
/// CUBLAS_GEMM_DEFAULT (-1) lets cuBLAS choose; with fp16 inputs and CUBLAS_COMPUTE_32F it uses tensor cores (the
/// older CUBLAS_GEMM_DEFAULT_TENSOR_OP is deprecated since CUDA 11; tensor cores are used for
/// fp16 inputs by default).
/// </remarks>
internal static class CuBlas
{
    /// <summary>The name used in the DllImport attributes; mapped to a real file by the resolver.</summary>
    private const string Lib = "autoprune-cublas";

    /// <summary>Library files tried, newest CUDA first.</summary>
    internal static readonly string[] LibraryNames = ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11"];

    // cublasOperation_t
    public const int OpN = 0, OpT = 1;
    // cudaDataType_t
    public const int CudaR32F = 0, CudaR16F = 2, CudaR16BF = 14;
    // cublasComputeType_t
    public const int ComputeType32F = 68;
    // cublasGemmAlgo_t
    public const int GemmDefault = -1;
    // cublasStatus_t
    public const int StatusSuccess = 0;

    private static readonly object ResolverLock = new();
    private static bool _resolverInstalled;
    private static string? _loadedName;

    /// <summary>First of <see cref="LibraryNames"/> that <paramref name="tryLoad"/> accepts, or null. Pure, for tests.</summary>
    internal static string? ResolveLibraryName(Func<string, bool> tryLoad)
    {
        foreach (var n in LibraryNames)
            if (tryLoad(n)) return n;
        return null;
    }

    /// <summary>
    /// Installs the DllImport resolver of this assembly that maps <see cref="Lib"/> to libcublas.so.13/12/11. Only one
    /// resolver per assembly is allowed by .NET: if another part of AutoPrune.Runtime ever installs one, it must
    /// delegate the name "autoprune-cublas" to <see cref="Resolve"/>.
    /// </summary>
    internal static void EnsureResolver()
    {
        lock (ResolverLock)
        {
            if (_resolverInstalled) return;
            NativeLibrary.SetDllImportResolver(typeof(CuBlas).Assembly, Resolve);
            _resolverInstalled = true;
        }
    }

    /// <summary>Resolver body: loads the first available cuBLAS for <see cref="Lib"/>, defers everything else to the default.</summary>
    internal static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Lib) return IntPtr.Zero;
        IntPtr handle = IntPtr.Zero;
        var name = ResolveLibraryName(n => NativeLibrary.TryLoad(n, assembly, searchPath, out handle));
        _loadedName = name;
        if (name is null)
            throw new DllNotFoundException($"No cuBLAS library found (tried {string.Join(", ", LibraryNames)}). Install the CUDA toolkit's cuBLAS or use Device = \"cpu\".");
        return handle;
    }

    /// <summary>The cuBLAS file the resolver loaded (null before the first call).</summary>
    public static string? LoadedLibrary => _loadedName;

    [DllImport(Lib, EntryPoint = "cublasCreate_v2")]
    private static extern int cublasCreate_v2(out IntPtr handle);

    [DllImport(Lib, EntryPoint = "cublasDestroy_v2")]
    private static extern int cublasDestroy_v2(IntPtr handle);

    [DllImport(Lib, EntryPoint = "cublasSetStream_v2")]
    private static extern int cublasSetStream_v2(IntPtr handle, IntPtr stream);

    [DllImport(Lib, EntryPoint = "cublasSetWorkspace_v2")]
    private static extern int cublasSetWorkspace_v2(IntPtr handle, IntPtr workspace, nuint bytes);

    [DllImport(Lib, EntryPoint = "cublasGemmEx")]
    private static extern unsafe int cublasGemmEx(IntPtr handle, int transa, int transb, int m, int n, int k,
        float* alpha, IntPtr a, int aType, int lda, IntPtr b, int bType, int ldb,
        float* beta, IntPtr c, int cType, int ldc, int computeType, int algo);

    [DllImport(Lib, EntryPoint = "cublasGemmStridedBatchedEx")]
    private static extern unsafe int cublasGemmStridedBatchedEx(IntPtr handle, int transa, int transb, int m, int n, int k,
        float* alpha, IntPtr a, int aType, int lda, long strideA, IntPtr b, int bType, int ldb, long strideB,
        float* beta, IntPtr c, int cType, int ldc, long strideC, int batchCount, int computeType, int algo);

    /// <summary>Creates a cuBLAS handle (untested on a GPU).</summary>
    public static IntPtr Create()
    {
        EnsureResolver();
        Check(cublasCreate_v2(out var h), "cublasCreate_v2");
        return h;
    }

    public static void Destroy(IntPtr handle)
    {
        if (handle != IntPtr.Zero) Check(cublasDestroy_v2(handle), "cublasDestroy_v2");
    }

    /// <summary>Binds the handle to a CUDA stream (e.g. ILGPU's <c>CudaStream.StreamPtr</c>) so GEMMs order with the kernels.</summary>
    public static void SetStream(IntPtr handle, IntPtr stream) => Check(cublasSetStream_v2(handle, stream), "cublasSetStream_v2");

    /// <summary>
    /// Gives the handle a fixed device workspace, so cuBLAS never allocates one itself (it must not while a CUDA graph is
    /// being captured). Throws <see cref="NotSupportedException"/> when this cuBLAS (before 11.2) lacks the call.
    /// </summary>
    public static void SetWorkspace(IntPtr handle, IntPtr workspace, long bytes)
    {
        try { Check(cublasSetWorkspace_v2(handle, workspace, (nuint)bytes), "cublasSetWorkspace_v2"); }
        catch (EntryPointNotFoundException e)
        {
            throw new NotSupportedException($"{LoadedLibrary} has no cublasSetWorkspace_v2 (cuBLAS 11.2 or newer is needed).", e);
        }
    }

    /// <summary>Runs one <see cref="GemmCall"/> (fp16 A and B, fp32 compute, fp32 or fp16 C) on the handle's stream.</summary>
    public static unsafe void GemmStridedBatched(IntPtr handle, in GemmCall c)
    {
        float alpha = 1f, beta = c.Beta;
        if (c.Batch == 1)
            Check(cublasGemmEx(handle, c.TransA, c.TransB, c.M, c.N, c.K, &alpha, c.A, CudaR16F, c.Lda, c.B, CudaR16F, c.Ldb,
                &beta, c.C, c.CType, c.Ldc, ComputeType32F, GemmDefault), "cublasGemmEx");
        else
            Check(cublasGemmStridedBatchedEx(handle, c.TransA, c.TransB, c.M, c.N, c.K, &alpha,
                c.A, CudaR16F, c.Lda, c.StrideA, c.B, CudaR16F, c.Ldb, c.StrideB,
                &beta, c.C, c.CType, c.Ldc, c.StrideC, c.Batch, ComputeType32F, GemmDefault), "cublasGemmStridedBatchedEx");
    }

    private static void Check(int status, string call)
    {
        if (status != StatusSuccess)
            throw new InvalidOperationException($"{call} failed with cublasStatus {status} ({StatusName(status)}).");
    }

    internal static string StatusName(int s) => s switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "unknown",
    };
}
