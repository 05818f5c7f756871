using AutoPrune.Compute.Cuda;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>Device selection and error messages; runs on machines with or without a GPU.</summary>
public sealed class CudaDeviceTests
{
    [Theory]
    [InlineData("cuda", 0)]
    [InlineData(" CUDA:0 ", 0)]
    [InlineData("cuda:3", 3)]
    public void ParsesCudaNames(string name, int index) => Assert.Equal(index, CudaDevice.ParseIndex(name));

    [Theory]
    [InlineData("cpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:x")]
    [InlineData("gpu")]
    public void RejectsOtherNames(string name) => Assert.Throws<ArgumentException>(() => CudaDevice.ParseIndex(name));

    [Fact]
    public void DiagnoseNamesTheFirstMissingPiece()
    {
        Assert.Contains("no NVIDIA driver", CudaDevice.Diagnose(false, 0, 0, null));
        Assert.Contains("libcuda.so.1", CudaDevice.Diagnose(false, 0, 0, null));
        Assert.Contains("no CUDA device", CudaDevice.Diagnose(true, 0, 0, "libcublas.so.12"));
        var range = CudaDevice.Diagnose(true, 2, 5, "libcublas.so.12");
        Assert.Contains("index 5 is out of range", range);
        Assert.Contains("2 device(s)", range);
        var blas = CudaDevice.Diagnose(true, 1, 0, null);
        Assert.Contains("no cuBLAS", blas);
        Assert.Contains("libcublas.so.13, libcublas.so.12, libcublas.so.11", blas);
        Assert.Null(CudaDevice.Diagnose(true, 1, 0, "libcublas.so.13"));
    }

    [Fact]
    public void ProbeNeverThrowsAndOpenExplainsWhatIsMissing()
    {
        var probe = CudaDevice.Probe(0);
        Assert.Equal(probe.Problem is null, probe.Usable);
        Assert.False(string.IsNullOrEmpty(probe.Describe()));
        if (probe.Usable) return; // a GPU machine: Open is exercised by the GPU checks, not here
        var e = Assert.Throws<NotSupportedException>(() => CudaDevice.Open("cuda:0"));
        Assert.Contains(probe.Problem!, e.Message);
        Assert.Contains("cuda:0", e.Message);
    }

    [Fact]
    public void ProbeOfAnIndexPastTheDevicesSaysSo()
    {
        var probe = CudaDevice.Probe(999);
        Assert.False(probe.Usable);
        if (probe.DriverFound && probe.DeviceCount > 0)
            Assert.Contains("out of range", probe.Problem);
    }
}

/// <summary>What of the cuBLAS layer can be checked without a GPU: library resolution and the argument mapping.</summary>
public sealed class CuBlasMappingTests
{
    [Fact]
    public void ResolvesNewestAvailableLibrary()
    {
        var tried = new List<string>();
        Assert.Equal("libcublas.so.12", CuBlas.ResolveLibraryName(n => { tried.Add(n); return n is "libcublas.so.12" or "libcublas.so.11"; }));
        Assert.Equal(["libcublas.so.13", "libcublas.so.12"], tried);
        Assert.Equal("libcublas.so.13", CuBlas.ResolveLibraryName(_ => true));
        Assert.Equal("libcublas.so.11", CuBlas.ResolveLibraryName(n => n.EndsWith(".11")));
        Assert.Null(CuBlas.ResolveLibraryName(_ => false));
    }

    [Fact]
    public void ResolverIgnoresOtherLibraries()
        => Assert.Equal(IntPtr.Zero, CuBlas.Resolve("libSkiaSharp", typeof(CuBlas).Assembly, null));

    /// <summary>Column-major GEMM as cuBLAS defines it: C(m×n, ldc) = op(A)(m×k) · op(B)(k×n).</summary>
    private static void ColumnMajorGemm(int transA, int transB, int m, int n, int k, float[] a, int lda, float[] b, int ldb, float[] c, int ldc)
    {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA == CuBlas.OpN ? a[i + p * lda] : a[p + i * lda];
                    float bv = transB == CuBlas.OpN ? b[p + j * ldb] : b[j + p * ldb];
                    s += (double)av * bv;
                }
                c[i + j * ldc] = (float)s;
            }
    }

    /// <summary>The mappings of <see cref="DeviceBlas"/>, checked with an independent column-major GEMM as cuBLAS defines it.</summary>
    [Theory]
    [InlineData(1, 8, 5)]
    [InlineData(7, 3, 4)]
    [InlineData(4, 16, 1)]
    public void RowMajorGemmsMapToColumnMajorCalls(int m, int k, int n)
    {
        var rng = new Random(m * 100 + k * 10 + n);
        var a = Enumerable.Range(0, m * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray(); // row-major [m, k]
        var w = Enumerable.Range(0, n * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray(); // row-major [n, k]
        var b = Enumerable.Range(0, k * n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray(); // row-major [k, n]
        var t = DeviceBlas.MapTransB(m, k, n, aRowStride: k, wRowStride: k, cRowStride: n);
        var c = new float[m * n];
        ColumnMajorGemm(t.TransA, t.TransB, t.M, t.N, t.K, w, t.Lda, a, t.Ldb, c, t.Ldc); // cuBLAS "A" = W, "B" = A
        var nn = DeviceBlas.MapNN(m, k, n, aRowStride: k, bRowStride: n, cRowStride: n);
        var c2 = new float[m * n];
        ColumnMajorGemm(nn.TransA, nn.TransB, nn.M, nn.N, nn.K, b, nn.Lda, a, nn.Ldb, c2, nn.Ldc); // cuBLAS "A" = B, "B" = A
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double expected = 0, expected2 = 0;
                for (int p = 0; p < k; p++) { expected += (double)a[i * k + p] * w[j * k + p]; expected2 += (double)a[i * k + p] * b[p * n + j]; }
                Assert.Equal(expected, c[i * n + j], 5); // read back as row-major [m, n]
                Assert.Equal(expected2, c2[i * n + j], 5);
            }
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceBlas.MapTransB(0, k, n, k, k, n));
    }
}
