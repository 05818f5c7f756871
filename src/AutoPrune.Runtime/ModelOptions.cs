using AutoPrune.Pruning;
using Microsoft.Extensions.Logging;

namespace AutoPrune;

/// <summary>How the CPU backend computes activations.</summary>
public enum CpuPrecision
{
    /// <summary>fp32 activations throughout (weights widened from the checkpoint's fp16/bf16 exactly): the closest to an fp32 reference.</summary>
    Fp32 = 0,

    /// <summary>
    /// The CUDA code path's arithmetic on the CPU: activations rounded to fp16 wherever the GPU path stores them as fp16
    /// (GEMM inputs, q/k/v, attention probabilities and outputs, the MLP's activations), row sums in index order, biases
    /// added after an accumulating GEMM, short attention and decode steps with the fused kernel's order of operations.
    /// With an fp16 checkpoint the whole model (tower, projector, prefill, decode, pruning decisions) then equals the
    /// GPU code path on ILGPU's CPU accelerator bit for bit, where fp32 activations swap near-tied tokens (see <c>verify</c>). On a real GPU, cuBLAS and the kernels sum in their own order, so
    /// values agree to fp16 rounding rather than bit for bit. Slower than <see cref="Fp32"/> (one-row GEMMs use the tiled kernel).
    /// </summary>
    MatchDevice = 1,
}

/// <summary>Runtime knobs for loading a model (kept apart from the checkpoint's own config).</summary>
public sealed record ModelOptions
{
    /// <summary>
    /// "auto" (CUDA device 0 when the NVIDIA driver, a device and cuBLAS are present, else the CPU), "cpu", "cuda" or
    /// "cuda:N" (that GPU; loading fails naming what is missing), or "ilgpu-cpu" (the GPU code path emulated on the CPU,
    /// for checking it on a machine without a GPU).
    /// </summary>
    public string Device { get; init; } = "auto";

    /// <summary>LLaVA-1.5's original "pad to square with the mean colour" preprocessing; off by default, as in Hugging Face's processor. LLaVA-NeXT models tile the image instead and ignore it.</summary>
    public bool PadToSquare { get; init; }

    /// <summary>
    /// How conversations are written into the prompt. <see cref="PromptFormat.Auto"/> (the default) takes it from the
    /// checkpoint: its chat template when one names a format, else its text model (llama: Vicuna, mistral: Mistral).
    /// </summary>
    public PromptFormat PromptFormat { get; init; } = PromptFormat.Auto;

    /// <summary>Largest decoded image, in pixels (width × height), checked before decoding.</summary>
    public long MaxImagePixels { get; init; } = 50_000_000;

    /// <summary>Requests that compute at once; further requests wait in a queue.</summary>
    public int MaxConcurrentRequests { get; init; } = 2;

    /// <summary>Upper bound on <see cref="GenerationOptions.MaxNewTokens"/> a request may ask for.</summary>
    public int MaxNewTokensLimit { get; init; } = 1024;

    /// <summary>Longest prompt accepted, in tokens; null means the model's context length.</summary>
    public int? MaxPromptTokens { get; init; }

    /// <summary>Longest time one request may take, queueing included; null means no limit. Past it the request fails with <see cref="TimeoutException"/>.</summary>
    public TimeSpan? RequestTimeout { get; init; }

    /// <summary>Recent images whose vision-tower output is kept, so asking again about the same image skips the tower.</summary>
    public int VisionCacheSize { get; init; } = 4;

    /// <summary>
    /// Pruning used by requests that set neither <see cref="VisionRequest.Pruning"/> nor <see cref="VisionRequest.DefaultPruning"/>:
    /// <see cref="PruningOptions.Default"/> (AutoPrune, budget 128) unless set; null means no pruning. A budget set here is
    /// checked against the model at <see cref="VisionLanguageModel.Load"/>; a request it cannot serve (no image, several
    /// images) runs unpruned and the report says why. The built-in default also runs unpruned, with a note, on a model or
    /// image where its budget is not feasible, instead of failing the load or the request.
    /// </summary>
    public PruningOptions? DefaultPruning { get; init; } = PruningOptions.Default;

    /// <summary>Largest file of each kind the runtime reads (config, tokenizer, index, image files); see <see cref="InputFileLimits"/>.</summary>
    public InputFileLimits FileLimits { get; init; } = new();

    /// <summary>
    /// On a CUDA GPU, replay each decode step and the vision tower as a CUDA graph (captured on their second run): one
    /// launch instead of hundreds. Off by default until it has run on a GPU. On <c>ilgpu-cpu</c> the graphs are emulated:
    /// the launches recorded at capture, with the arguments they had then, are replayed in order, which computes what a
    /// real graph would. The CPU backend has none: loading fails with a <see cref="NotSupportedException"/> saying so.
    /// </summary>
    public bool CudaGraphs { get; init; }

    /// <summary>
    /// How the CPU backend computes (ignored on a GPU): <see cref="CpuPrecision.Fp32"/> (the default) or
    /// <see cref="CpuPrecision.MatchDevice"/>, the GPU code path's fp16 storage points, so the CPU makes the keep
    /// decisions a GPU makes (what <c>verify</c> compares against).
    /// </summary>
    public CpuPrecision CpuPrecision { get; init; } = CpuPrecision.Fp32;

    /// <summary>Logger factory for load and request logs; null logs nothing.</summary>
    public ILoggerFactory? LoggerFactory { get; init; }
}
