using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Models.Llava;

namespace AutoPrune.Pruning;

/// <summary>Creates the policy object for a method.</summary>
internal static class PruningPolicies
{
    public static IPruningPolicy Create(ModelShape shape, PruningOptions options) => options.Method switch
    {
        PruningMethod.None => new NoPruningPolicy(shape, options),
        PruningMethod.FastV => new FastVPolicy(shape, options),
        PruningMethod.AdaptPrune => new AdaptPrunePolicy(shape, options),
        PruningMethod.PDrop => new PDropPolicy(shape, options),
        PruningMethod.SparseVLM => new SparseVlmPolicy(shape, options),
        PruningMethod.VisionZip => new VisionZipPolicy(shape, options),
        PruningMethod.AutoPrune => new AutoPrunePolicy(shape, options),
        PruningMethod.DivPrune => new DivPrunePolicy(shape, options),
        PruningMethod.Dart => new DartPolicy(shape, options),
        _ => throw new ArgumentOutOfRangeException(nameof(options), options.Method, "Unknown pruning method."),
    };
}
