using System.Runtime.InteropServices;

namespace AutoPrune.Compute.Cuda;

/// <summary>
/// Our own P/Invoke layer over the few CUDA driver calls that ILGPU does not expose: stream capture into a CUDA graph,
/// instantiation and launch (for the decode step and the vision tower, whose shapes are static). The driver library is
/// loaded by name (<see cref="CudaDevice.DriverLibraryNames"/>) and the entry points are looked up on first use.
/// </summary>
/// <remarks>
/// NOT EXECUTED on a GPU yet: the machines this was written on have none. Without a GPU nothing here is called (a graph
/// cannot be captured on ILGPU's CPU accelerator; asking for one there is a clear error). Enum values are those of
/// cuda.h (CUDA 11+): CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1.
/// </remarks>
internal static unsafe class CudaDriver
{
    public const int CaptureModeThreadLocal = 1;
    public const int Success = 0;

    private static readonly object Lock = new();
    private static IntPtr _lib;
    private static delegate* unmanaged<IntPtr, int, int> _beginCapture;
    private static delegate* unmanaged<IntPtr, IntPtr*, int> _endCapture;
    private static delegate* unmanaged<IntPtr*, IntPtr, ulong, int> _instantiate;
    private static delegate* unmanaged<IntPtr, IntPtr, int> _launch;
    private static delegate* unmanaged<IntPtr, int> _destroyExec;
    private static delegate* unmanaged<IntPtr, int> _destroyGraph;
    private static delegate* unmanaged<int, IntPtr*, int> _errorName;

    /// <summary>Loads the driver and the graph entry points; a clear <see cref="NotSupportedException"/> when either is missing.</summary>
    private static void EnsureLoaded()
    {
        lock (Lock)
        {
            if (_lib != IntPtr.Zero) return;
            IntPtr lib = IntPtr.Zero;
            foreach (var name in CudaDevice.DriverLibraryNames)
                if (NativeLibrary.TryLoad(name, out lib)) break;
            if (lib == IntPtr.Zero)
                throw new NotSupportedException($"CUDA graphs need the NVIDIA driver (none of {string.Join(", ", CudaDevice.DriverLibraryNames)} could be loaded).");
            IntPtr Get(params string[] names)
            {
                foreach (var n in names)
                    if (NativeLibrary.TryGetExport(lib, n, out var p)) return p;
                throw new NotSupportedException($"CUDA graphs need {names[0]}, which this NVIDIA driver does not export (CUDA 11.4 or newer is needed).");
            }
            _beginCapture = (delegate* unmanaged<IntPtr, int, int>)Get("cuStreamBeginCapture_v2", "cuStreamBeginCapture_ptsz");
            _endCapture = (delegate* unmanaged<IntPtr, IntPtr*, int>)Get("cuStreamEndCapture");
            _instantiate = (delegate* unmanaged<IntPtr*, IntPtr, ulong, int>)Get("cuGraphInstantiateWithFlags");
            _launch = (delegate* unmanaged<IntPtr, IntPtr, int>)Get("cuGraphLaunch");
            _destroyExec = (delegate* unmanaged<IntPtr, int>)Get("cuGraphExecDestroy");
            _destroyGraph = (delegate* unmanaged<IntPtr, int>)Get("cuGraphDestroy");
            _errorName = NativeLibrary.TryGetExport(lib, "cuGetErrorName", out var en) ? (delegate* unmanaged<int, IntPtr*, int>)en : null;
            _lib = lib;
        }
    }

    public static void BeginCapture(IntPtr stream)
    {
        EnsureLoaded();
        Check(_beginCapture(stream, CaptureModeThreadLocal), "cuStreamBeginCapture");
    }

    /// <summary>Ends the capture and returns the graph (the caller instantiates and destroys it).</summary>
    public static IntPtr EndCapture(IntPtr stream)
    {
        EnsureLoaded();
        IntPtr graph;
        Check(_endCapture(stream, &graph), "cuStreamEndCapture");
        return graph;
    }

    public static IntPtr Instantiate(IntPtr graph)
    {
        EnsureLoaded();
        IntPtr exec;
        Check(_instantiate(&exec, graph, 0), "cuGraphInstantiateWithFlags");
        return exec;
    }

    public static void Launch(IntPtr exec, IntPtr stream)
    {
        EnsureLoaded();
        Check(_launch(exec, stream), "cuGraphLaunch");
    }

    public static void DestroyExec(IntPtr exec)
    {
        if (exec != IntPtr.Zero && _lib != IntPtr.Zero) Check(_destroyExec(exec), "cuGraphExecDestroy");
    }

    public static void DestroyGraph(IntPtr graph)
    {
        if (graph != IntPtr.Zero && _lib != IntPtr.Zero) Check(_destroyGraph(graph), "cuGraphDestroy");
    }

    private static void Check(int status, string call)
    {
        if (status == Success) return;
        string name = "unknown";
        if (_errorName is not null)
        {
            IntPtr p;
            if (_errorName(status, &p) == Success && p != IntPtr.Zero) name = Marshal.PtrToStringAnsi(p) ?? name;
        }
        throw new InvalidOperationException($"{call} failed with CUresult {status} ({name}).");
    }
}
