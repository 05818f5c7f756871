using AutoPrune.Pruning;

namespace AutoPrune.Diagnostics;

/// <summary>One question answered on the reference device and on the device under test.</summary>
public sealed record DeviceComparisonRow(string Image, string Question, string ReferenceAnswer, string DeviceAnswer,
    bool SameAnswer, bool SameTopToken, double MaxAbsLogitDifference)
{
    /// <summary>Whether both devices kept exactly the same visual tokens at every layer (the pruning decisions agree).</summary>
    public bool SameKeptTokens { get; init; } = true;

    /// <summary>The first layer whose kept visual tokens differ, or -1.</summary>
    public int FirstDifferentLayer { get; init; } = -1;

    /// <summary>The smallest share, over layers, of the reference's kept visual tokens the device also kept (1 when equal).</summary>
    public double MinKeptOverlap { get; init; } = 1;
}

/// <summary>Summary of <see cref="DeviceComparison.RunAsync"/>.</summary>
public sealed record DeviceComparisonReport(string Model, string ReferenceDevice, string Device, string Method, double Budget,
    int Rows, int SameAnswers, int SameTopTokens, double MaxAbsLogitDifference, double MeanMaxAbsLogitDifference,
    IReadOnlyList<DeviceComparisonRow> Details)
{
    /// <summary>How the CPU reference computed (<see cref="CpuPrecision"/>): "MatchDevice" unless asked for "Fp32".</summary>
    public string ReferencePrecision { get; init; } = nameof(CpuPrecision.MatchDevice);

    /// <summary>True when the tested device replayed decode steps and the vision tower as CUDA graphs (<see cref="ModelOptions.CudaGraphs"/>).</summary>
    public bool CudaGraphs { get; init; }

    /// <summary>Rows on which both devices kept the same visual tokens at every layer.</summary>
    public int SameKeptTokens => Details.Count(d => d.SameKeptTokens);

    /// <summary>The smallest share of kept visual tokens the devices agree on, over every row and layer.</summary>
    public double MinKeptOverlap => Details.Count == 0 ? 1 : Details.Min(d => d.MinKeptOverlap);

    /// <summary>
    /// Every answer equal, every last-position logit within <paramref name="tolerance"/>, and the pruning decisions equal
    /// (by default), or overlapping by at least <paramref name="minKeptOverlap"/> at every layer of every row: fp16
    /// activations can swap two tokens whose scores sit closer than their rounding (a uniform background's patches), which
    /// methods that rank many near-equal scores show and exact comparison would call a failure.
    /// </summary>
    public bool Agrees(double tolerance, double minKeptOverlap = 1)
        => SameAnswers == Rows && MaxAbsLogitDifference <= tolerance && (SameKeptTokens == Rows || MinKeptOverlap >= minKeptOverlap);
}

/// <summary>
/// Answers the same questions on two devices (by default the CPU as the reference and a GPU) and compares the
/// greedy answers, the kept visual tokens and the full last-position logits: how to check that a GPU gives the CPU's
/// answers and makes its pruning decisions on your data. The CPU reference computes with the GPU code path's fp16
/// storage points (<see cref="CpuPrecision.MatchDevice"/>) unless <c>referencePrecision</c> says
/// <see cref="CpuPrecision.Fp32"/>: in fp32, tokens whose scores sit closer than fp16 rounding swap, and a later layer
/// inherits the swap.
/// </summary>
public static class DeviceComparison
{
    public static async Task<DeviceComparisonReport> RunAsync(string modelDirectory, string device, IReadOnlyList<(string Image, string Question)> rows,
        PruningOptions? pruning = null, int maxNewTokens = 8, string referenceDevice = "cpu", IProgress<int>? progress = null, CancellationToken ct = default,
        CpuPrecision referencePrecision = CpuPrecision.MatchDevice, bool cudaGraphs = false)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Count == 0) throw new ArgumentException("No rows to compare.", nameof(rows));
        pruning ??= new PruningOptions { Method = PruningMethod.None };
        using var reference = VisionLanguageModel.Load(modelDirectory, new ModelOptions { Device = referenceDevice, MaxConcurrentRequests = 1, VisionCacheSize = 0, CpuPrecision = referencePrecision });
        using var tested = VisionLanguageModel.Load(modelDirectory, new ModelOptions { Device = device, MaxConcurrentRequests = 1, VisionCacheSize = 0, CudaGraphs = cudaGraphs });
        var details = new List<DeviceComparisonRow>(rows.Count);
        foreach (var (image, question) in rows)
        {
            ct.ThrowIfCancellationRequested();
            var request = VisionRequest.Create(question, ImageInput.FromFile(image)) with
            {
                Generation = new GenerationOptions { MaxNewTokens = maxNewTokens },
                Pruning = pruning,
            };
            var (a, la) = await reference.AskWithLogitsAsync(request, ct).ConfigureAwait(false);
            var (b, lb) = await tested.AskWithLogitsAsync(request, ct).ConfigureAwait(false);
            double max = 0;
            for (int i = 0; i < la.Length; i++) max = Math.Max(max, Math.Abs(la[i] - lb[i]));
            int firstDiff = FirstDifferentLayer(a.Report.KeptIndicesPerLayer, b.Report.KeptIndicesPerLayer);
            details.Add(new DeviceComparisonRow(image, question, a.Text, b.Text, a.Text == b.Text, a.TopLogits[0].Id == b.TopLogits[0].Id, max)
            {
                SameKeptTokens = firstDiff < 0,
                FirstDifferentLayer = firstDiff,
                MinKeptOverlap = MinOverlap(a.Report.KeptIndicesPerLayer, b.Report.KeptIndicesPerLayer),
            });
            progress?.Report(details.Count);
        }
        return new DeviceComparisonReport(reference.Info.Directory, reference.Info.Device, tested.Info.Device, pruning.Method.ToString(), pruning.Budget,
            details.Count, details.Count(d => d.SameAnswer), details.Count(d => d.SameTopToken),
            details.Max(d => d.MaxAbsLogitDifference), details.Average(d => d.MaxAbsLogitDifference), details)
        {
            ReferencePrecision = referencePrecision.ToString(),
            CudaGraphs = cudaGraphs,
        };
    }

    /// <summary>The smallest share, over layers, of <paramref name="reference"/>'s kept indices that <paramref name="tested"/> also kept.</summary>
    public static double MinOverlap(IReadOnlyList<int[]> reference, IReadOnlyList<int[]> tested)
    {
        if (reference.Count != tested.Count) return 0;
        double min = 1;
        for (int l = 0; l < reference.Count; l++)
            if (reference[l].Length > 0) min = Math.Min(min, (double)reference[l].Intersect(tested[l]).Count() / reference[l].Length);
        return min;
    }

    /// <summary>The first layer at which two reports' kept visual indices differ (-1 when they agree everywhere).</summary>
    public static int FirstDifferentLayer(IReadOnlyList<int[]> a, IReadOnlyList<int[]> b)
    {
        int layers = Math.Max(a.Count, b.Count);
        for (int l = 0; l < layers; l++)
        {
            if (l >= a.Count || l >= b.Count) return l;
            if (!a[l].AsSpan().SequenceEqual(b[l])) return l;
        }
        return -1;
    }
}
