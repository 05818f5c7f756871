// ILGPU's CPU accelerator emits its kernel launchers into a dynamic assembly named "ILGPURuntime"; kernels that take
// internal types (e.g. AttentionShape) need that assembly to see our internals.
[assembly: System.Runtime.CompilerServices.InternalsVisibleTo("ILGPURuntime")]
