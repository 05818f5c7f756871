using System.Runtime.CompilerServices;

namespace AutoPrune.Tests;

/// <summary>
/// Every unmanaged host buffer the engine allocates during the tests starts as NaN (<see cref="AutoPrune.Compute.Cpu.NativeFloats"/>
/// is not zeroed): a read of a value nobody wrote turns the logits into NaN and fails the comparisons against the
/// references, instead of passing on whatever the allocator left there.
/// </summary>
internal static class PoisonedHostBuffers
{
    [ModuleInitializer]
    internal static void Enable() => AutoPrune.Compute.Cpu.NativeFloats.PoisonNewBuffers = true;
}
