using AutoPrune.Pruning;
using Microsoft.Extensions.Logging;

namespace AutoPrune;

/// <summary>Runtime knobs for loading a model (kept apart from the checkpoint's own config).</summary>
public sealed record ModelOptions
{
    /// <summary>"cpu" or "auto" (the CUDA backend is not part of this build yet, so "auto" means the CPU).</summary>
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

    /// <summary>Pruning used by requests that do not set their own; null means no pruning.</summary>
    public PruningOptions? DefaultPruning { get; init; }

    /// <summary>Largest file of each kind the runtime reads (config, tokenizer, index, image files); see <see cref="InputFileLimits"/>.</summary>
    public InputFileLimits FileLimits { get; init; } = new();

    /// <summary>Logger factory for load and request logs; null logs nothing.</summary>
    public ILoggerFactory? LoggerFactory { get; init; }
}

/// <summary>How to generate the answer.</summary>
public sealed record GenerationOptions
{
    /// <summary>Largest number of tokens to generate.</summary>
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>0 (the default) decodes greedily; above 0 samples with this temperature.</summary>
    public float Temperature { get; init; }
    /// <summary>Nucleus sampling mass (used when sampling).</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Seed for sampling; null picks a random one.</summary>
    public int? Seed { get; init; }
    /// <summary>Generation stops when the text ends with one of these (not included in the answer).</summary>
    public IReadOnlyList<string>? StopSequences { get; init; }
}

/// <summary>Roles of a conversation turn.</summary>
public enum TurnRole { System, User, Assistant }

/// <summary>One turn; a user turn's text holds an <c>&lt;image&gt;</c> placeholder where each of its images goes.</summary>
public sealed record ConversationTurn(TurnRole Role, string Text);

/// <summary>An image given to the model: a file or encoded bytes (PNG, JPEG, WebP, …).</summary>
public sealed class ImageInput
{
    private ImageInput(string? path, ReadOnlyMemory<byte> bytes, string name)
    {
        Path = path; Bytes = bytes; Name = name;
    }

    public string? Path { get; }
    public ReadOnlyMemory<byte> Bytes { get; }
    /// <summary>What error messages call the image.</summary>
    public string Name { get; }

    public static ImageInput FromFile(string path) => new(path ?? throw new ArgumentNullException(nameof(path)), default, path);
    public static ImageInput FromBytes(ReadOnlyMemory<byte> bytes, string? name = null) => new(null, bytes, name ?? $"<{bytes.Length} bytes>");
}

/// <summary>A question about images, or a whole conversation.</summary>
public sealed record VisionRequest
{
    public required IReadOnlyList<ConversationTurn> Turns { get; init; }
    public IReadOnlyList<ImageInput> Images { get; init; } = [];
    public GenerationOptions Generation { get; init; } = new();
    /// <summary>Visual-token pruning for this request; null uses <see cref="ModelOptions.DefaultPruning"/>.</summary>
    public PruningOptions? Pruning { get; init; }

    /// <summary>A single question about zero or more images (each image placed before the question).</summary>
    public static VisionRequest Create(string question, params ImageInput[] images) => new()
    {
        // Null question or image list: ArgumentNullException here; a null image in the list: when the request is asked.
        Turns = [new ConversationTurn(TurnRole.User, string.Concat(Enumerable.Repeat(Prompting.ImagePlaceholder + "\n", (images ?? throw new ArgumentNullException(nameof(images))).Length))
            + (question ?? throw new ArgumentNullException(nameof(question))))],
        Images = images,
    };
}

/// <summary>Why generation ended.</summary>
public enum AnswerFinishReason { Stop, Length, StopSequence }

/// <summary>A token id with its logit.</summary>
public readonly record struct TokenLogit(int Id, float Logit);

/// <summary>Where the time went, in milliseconds.</summary>
public sealed record AnswerTimings(double PreprocessMs, double VisionMs, double PrefillMs, double DecodeMs, double TotalMs);

/// <summary>The model's answer with what it cost.</summary>
public sealed record VisionAnswer
{
    public required string Text { get; init; }
    public required IReadOnlyList<int> TokenIds { get; init; }
    public required AnswerFinishReason FinishReason { get; init; }
    public required int PromptTokens { get; init; }
    /// <summary>Visual tokens in the prompt (before any pruning).</summary>
    public required int VisualTokens { get; init; }
    /// <summary>The largest logits at the last prompt position, largest first.</summary>
    public required IReadOnlyList<TokenLogit> TopLogits { get; init; }
    public required AnswerTimings Timings { get; init; }
    public required string Device { get; init; }
    /// <summary>What pruning did (always present; method None when the model ran unpruned).</summary>
    public required PruningReport Report { get; init; }
}

/// <summary>A piece of a streamed answer; the last one carries the whole <see cref="Answer"/>.</summary>
public sealed record AnswerChunk(string Text, int? TokenId, VisionAnswer? Answer);

/// <summary>Prompt conventions shared by every surface.</summary>
public static class Prompting
{
    public const string ImagePlaceholder = "<image>";
}
