using System.Reflection;
using AutoPrune.Compute.Cuda;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Xunit;

namespace AutoPrune.Tests.Cuda;

/// <summary>
/// Every kernel goes through ILGPU's PTX backend (asked for sm_90 / PTX ISA 8.0; ILGPU 1.5.3 emits ".target sm_80", which the driver JITs for an H100) without a GPU: this catches constructs the CPU
/// accelerator accepts but the CUDA code generator rejects. It does not load the PTX into a driver (no ptxas / JIT
/// here), so it proves the kernels compile to PTX, not that the PTX runs or is correct on a GPU.
/// </summary>
public sealed class PtxCompileTests
{
    /// <summary>The classes holding device code: the layer kernels and the sequence, decode, fused attention, MLP, pruning-signal and selection kernels, AutoPrune's, DivPrune's and DART's, and the segment (vision window) kernels.</summary>
    private static readonly Type[] KernelClasses =
        [typeof(CudaKernels), typeof(SequenceKernels), typeof(DecodeKernels), typeof(HalfMlpKernels), typeof(SignalKernels), typeof(SelectionKernels),
         typeof(CoverageKernels), typeof(AttentionFreeKernels), typeof(FusedAttentionKernels), typeof(TiledAttentionKernels), typeof(SegmentKernels)];

    private static IEnumerable<MethodInfo> KernelMethods() => KernelClasses
        .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public))
        .Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal));

    public static TheoryData<string> Kernels()
    {
        var d = new TheoryData<string>();
        foreach (var m in KernelMethods()) d.Add($"{m.DeclaringType!.Name}.{m.Name}");
        return d;
    }

    [Fact]
    public void AllFiftyThreeKernelsAreListed() => Assert.Equal(53, Kernels().Count);

    /// <summary>CudaOps.CompileAll (run at GPU model load) loads every kernel of every kernel class, none forgotten.</summary>
    [Fact]
    public void CompileAllLoadsEveryKernel()
    {
        using var device = AutoPrune.Compute.Cuda.CudaDevice.CreateForTests();
        Assert.Equal(Kernels().Count, new CudaOps(device.Accelerator).CompileAll());
    }

    /// <summary>Kernels without an index parameter are explicitly grouped (one group per row or one group in all, barriers).</summary>
    private static bool IsExplicitlyGrouped(MethodInfo m)
    {
        var p = m.GetParameters();
        return p.Length == 0 || p[0].ParameterType != typeof(Index1D);
    }

    [Fact]
    public void TheRowKernelsAreExplicitlyGrouped()
    {
        var explicitKernels = KernelMethods().Where(IsExplicitlyGrouped).Select(m => m.Name).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(new[]
        {
            "AdaptiveNmsKernel", "ArgMaxRowsKernel", "AttentionRowsGroupedKernel", "AttentionWindowKernel", "CosineToPivotKernel",
            "CoverageNmsKernel", "DartKernel", "DecodeRopeAttentionKernel", "FusedAttentionKernel", "GatherSequenceNormedKernel", "GreedyMaxMinKernel", "KeyL1NormsKernel", "L2NormalizeRowsToHalfKernel",
            "LayerNormToHalfKernel", "MutualInformationKernel", "ReceivedColumnsKernel", "ReceivedRowStatsKernel", "RecycleClusterMergeKernel", "RmsNormRowsKernel",
            "RmsNormToHalfKernel", "ScaledMaskedSoftmaxToHalfKernel", "SparseVlmKernel", "TiledAttentionKernel", "TopKPlanKernel", "VarlenFusedAttentionKernel", "ZipRestKernel",
        }, explicitKernels);
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesToPtxForSm90(string name)
    {
        var method = KernelMethods().Single(m => $"{m.DeclaringType!.Name}.{m.Name}" == name);
        using var context = Context.Create(b => b.CPU().EnableAlgorithms());
        var arch = CudaArchitecture.SM_90;
        var backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, CudaInstructionSet.ISA_80, null);
        bool grouped = IsExplicitlyGrouped(method);
        var entry = grouped ? EntryPointDescription.FromExplicitlyGroupedKernel(method) : EntryPointDescription.FromImplicitlyGroupedKernel(method);
        var compiled = (PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty);
        Assert.Contains(".entry", compiled.PTXAssembly);
        Assert.Contains(".target", compiled.PTXAssembly);
        if (grouped) Assert.Contains("bar.sync", compiled.PTXAssembly);  // Group.Barrier
        // scripts/ptxas-check.sh sets this to assemble every kernel with NVIDIA's ptxas for sm_90.
        if (Environment.GetEnvironmentVariable("AUTOPRUNE_PTX_DIR") is { Length: > 0 } dir)
            File.WriteAllText(Path.Combine(dir, name + ".ptx"), compiled.PTXAssembly);
    }

    /// <summary>The tiled attention kernel reaches the tensor cores: its PTX has the m16n8k16 mma (fp16 in, fp32 accumulators).</summary>
    [Fact]
    public void TiledAttentionIssuesTensorCoreMma()
    {
        using var context = Context.Create(b => b.CPU().EnableAlgorithms());
        var arch = CudaArchitecture.SM_90;
        var backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, CudaInstructionSet.ISA_80, null);
        var method = typeof(TiledAttentionKernels).GetMethod(nameof(TiledAttentionKernels.TiledAttentionKernel), BindingFlags.Static | BindingFlags.NonPublic)!;
        var ptx = ((PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(method), KernelSpecialization.Empty)).PTXAssembly;
        Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", ptx);
    }
}
