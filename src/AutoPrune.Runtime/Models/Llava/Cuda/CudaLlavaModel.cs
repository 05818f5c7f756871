using AutoPrune.Compute;
using System.Numerics.Tensors;
using AutoPrune.Compute.Cpu;
using AutoPrune.Compute.Cuda;
using AutoPrune.Loading;
using ILGPU;
using ILGPU.Runtime;
using CudaDevice = AutoPrune.Compute.Cuda.CudaDevice;
using Half = System.Half;

namespace AutoPrune.Models.Llava.Cuda;

/// <summary>
/// LLaVA on an NVIDIA GPU (or, for checking, on ILGPU's CPU accelerator): the CLIP tower (<see cref="CudaVisionTower"/>),
/// the projector (<see cref="CudaProjector"/>) and the Llama decoder (<see cref="CudaLlamaDecoder"/>, run per request
/// by <see cref="CudaGeneration"/>) with fp16 weights uploaded once, activations that stay on the device, GEMMs through
/// cuBLAS (fp16 inputs, fp32 accumulation) and every other operation in ILGPU kernels, all on one stream
/// (<see cref="DeviceQueue"/>). Pixels and token ids go up; the logits of the prompt's last position, one id per
/// generated token, the pruning report and small per-prefill scalars come back. <see cref="Counters"/> counts it all.
/// </summary>
/// <remarks>
/// One request runs on the device at a time (a lock around each call): the kernels share the model's stream.
/// </remarks>
internal sealed class CudaLlavaModel : ILlavaBackend
{
    private readonly CudaDevice _device;
    private readonly DeviceBuffer<byte>? _blasWorkspace;
    internal readonly object Sync = new();

    internal CudaVisionTower Vision { get; }
    internal CudaProjector Projector { get; }
    internal CudaLlamaDecoder Decoder { get; }
    private NormWeights? _hostFinalNorm;

    /// <summary>The final RMSNorm's weights copied to the host once (for host policies that compare normalised hidden states).</summary>
    internal NormWeights HostFinalNorm => _hostFinalNorm ??= new NormWeights(Queue.Download(Decoder.FinalNorm.Weight.View, Decoder.FinalNorm.Weight.Length), null, Decoder.FinalNorm.Eps);

    internal CudaOps Ops { get; }
    internal Accelerator Accelerator => _device.Accelerator;
    internal DeviceBlas Blas { get; }
    internal DeviceArena Memory { get; }
    internal DeviceQueue Queue { get; }

    /// <summary>Host syncs, launches, cuBLAS calls, copies and allocations of everything this model does on its device.</summary>
    public Diagnostics.DeviceCounterSet Counters { get; } = new();

    /// <summary>Decode steps and the vision tower replay CUDA graphs (captured on their second run).</summary>
    internal bool UseCudaGraphs { get; }

    /// <summary>Largest attention score block (heads × query rows × keys, fp32 elements); longer prompts run in query chunks.</summary>
    internal long AttentionBlockElements { get; set; } = 64L << 20;

    /// <summary>
    /// Causal attention over at least twice this many query rows runs in chunks of it, each against the keys its rows can
    /// see only (the upper triangle is never computed); shorter prompts take one block (the launches would cost more).
    /// </summary>
    internal int CausalChunkRows { get; set; } = 1024;

    /// <summary>
    /// Attention whose queries × keys stay at or under this runs as one fused launch
    /// (<see cref="CudaOps.FusedAttention"/>) instead of two cuBLAS calls and a softmax: a pruned prefill's short layers
    /// (about 114 rows at budget 64 on LLaVA-1.5) are launch-bound. Above it the GEMMs' tensor cores win. The value
    /// (181² pairs) comes from an estimate (each group streams its keys and values through L2: at this size about as
    /// long as the two launches it saves) and wants tuning on a GPU; 0 turns the fused path off.
    /// </summary>
    internal long FusedAttentionMaxPairs { get; set; } = DeviceNumerics.FusedAttentionMaxPairs;

    /// <summary>
    /// Longer attention runs as one tiled launch on the tensor cores (<see cref="CudaOps.TiledAttention"/>) where the
    /// head dimension and the device allow it (<see cref="CudaOps.TiledAttentionRuns"/>), instead of two cuBLAS calls
    /// and a softmax; false keeps the GEMMs (tests compare the two).
    /// </summary>
    internal bool TiledAttention { get; set; } = true;

    public LlavaConfig Config { get; }
    public string Device => _device.Description;
    public int TokensPerImage => Vision.TokensOut;
    public int Grid => Vision.Grid;
    public int DecoderLayers => Decoder.Layers.Length;
    public int Hidden => Decoder.Hidden;
    internal int Heads => Decoder.Heads;
    internal int KvHeads => Decoder.KvHeads;
    internal int HeadDim => Decoder.HeadDim;
    internal int Intermediate => Decoder.Intermediate;
    internal int Vocab => Decoder.Vocab;
    internal int MaxPositions => Decoder.MaxPositions;

    /// <summary>
    /// Uploads the weights of <paramref name="store"/> to <paramref name="device"/>, which the model then owns.
    /// <paramref name="cudaGraphs"/> replays decode steps and the vision tower as CUDA graphs (emulated on ILGPU's CPU accelerator).
    /// </summary>
    public CudaLlavaModel(ITensorSource store, LlavaConfig config, CudaDevice device, Action<double>? progress = null, bool cudaGraphs = false)
    {
        _device = device;
        Config = config;
        UseCudaGraphs = cudaGraphs;
        _ = config.VisionConfig.Activation; // an unsupported activation fails at load
        var acc = device.Accelerator;
        // CUDA calls need the accelerator's context current on the calling thread: every entry point binds it.
        using var bind = acc.BindScoped();
        Queue = new DeviceQueue(acc, Counters);
        Memory = new DeviceArena(Queue);
        // On ILGPU's CPU accelerator every emulated thread and barrier costs microseconds: one thread per row group.
        Ops = new CudaOps(acc, rowGroupSize: device.IsCuda ? 0 : 1, queue: Queue);
        try
        {
            if (device.IsCuda)
            {
                _blasWorkspace = Memory.Allocate<byte>(CuBlasExecutor.WorkspaceBytes);
                Blas = new DeviceBlas(new CuBlasExecutor(Queue.NativeStream, DeviceBlas.Ptr(_blasWorkspace.View)), Queue);
            }
            else Blas = new DeviceBlas(new HostGemmExecutor(acc), Queue);
            Vision = new CudaVisionTower(this, store, config);
            Projector = new CudaProjector(this, store, config);
            progress?.Invoke(0.1);
            Decoder = new CudaLlamaDecoder(Memory, store, config, f => progress?.Invoke(0.1 + 0.85 * f));
            if (device.IsCuda)
            {
                Ops.CompileAll();
                CheckTiledAttention();
            }
            Queue.Synchronize();
            progress?.Invoke(1.0);
        }
        catch
        {
            Decoder?.Dispose();
            Projector?.Dispose();
            Vision?.Dispose();
            Blas?.Dispose();
            _blasWorkspace?.Dispose();
            Memory.Dispose();
            Queue.Dispose();
            throw;
        }
    }

    /// <summary>Largest difference the tiled attention may show against its host twin at load (fp16 outputs of about 1).</summary>
    internal const double TiledAttentionTolerance = 1e-2;

    /// <summary>Why long attention runs through cuBLAS on this GPU although the tiled kernel could run (null when it does not).</summary>
    public string? TiledAttentionWarning { get; private set; }

    /// <summary>"tiled" when long attention is the tensor-core kernel for the decoder's head dimension, else "gemm: " and why.</summary>
    public string LongAttention => TiledAttention && Ops.TiledAttentionRuns(HeadDim) ? "tiled"
        : "gemm: " + (TiledAttentionWarning ?? (TiledAttention ? $"head dimension {HeadDim} or this device does not take the tiled kernel" : "switched off"));

    /// <summary>
    /// The tiled tensor-core attention against its host twin for each head dimension the model uses (the vision tower's
    /// and the decoder's), once at load; past <see cref="TiledAttentionTolerance"/> the model keeps the GEMM path and
    /// says why in <see cref="TiledAttentionWarning"/>.
    /// </summary>
    private void CheckTiledAttention()
    {
        foreach (int hd in new[] { Vision.Hidden / Vision.Heads, HeadDim }.Distinct())
        {
            if (!TiledAttention || !Ops.TiledAttentionRuns(hd)) continue;
            double diff = Ops.TiledAttentionSelfCheck(hd);
            if (diff <= TiledAttentionTolerance) continue;
            TiledAttention = false;
            TiledAttentionWarning = $"The tiled tensor-core attention differs from its reference by {diff:G3} (more than {TiledAttentionTolerance:G3}) " +
                $"at head dimension {hd} on {_device.Description}; long attention runs through cuBLAS GEMMs instead (slower, 2 more launches per layer).";
        }
    }

    public void Embed(ReadOnlySpan<int> ids, Span<float> dst)
    {
        int h = Hidden;
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            for (int i = 0; i < ids.Length; i++)
            {
                int id = ids[i];
                if ((uint)id >= (uint)Vocab)
                    throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary (size {Vocab}).");
                var row = Queue.Download(Decoder.EmbedTokens.Slice((long)id * h, h), h);
                TensorPrimitives.ConvertToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<ushort, Half>(row.AsSpan()), dst.Slice(i * h, h));
            }
        }
    }

    /// <summary>y (+)= x·Wᵀ (+ b) with x fp16 on the device.</summary>
    internal void Linear(DeviceLinear l, ArrayView<ushort> x, int rows, ArrayView<float> y, bool accumulate = false)
    {
        Blas.Linear(x, rows, l.In, l.Weight.View, l.Out, y, accumulate);
        if (l.Bias is not null && rows > 0) Ops.AddBias(y, rows, l.Out, l.Bias.View);
    }

    /// <summary>Rounds <paramref name="length"/> fp32 values to fp16 on the device.</summary>
    internal void ToHalf(ArrayView<float> src, ArrayView<ushort> dst, long length)
    {
        if (length > 0) Ops.ToHalf(src.SubView(0, length), dst.SubView(0, length));
    }

    /// <summary>A counted download (one host synchronisation), taking the model's lock and binding.</summary>
    internal T[] Download<T>(ArrayView<T> src, long length) where T : unmanaged
    {
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            return Queue.Download(src, length);
        }
    }

    /// <summary>Score rows are padded to a multiple of 8 keys, so the attention GEMMs keep 16-byte aligned rows (tensor cores).</summary>
    internal static int PaddedKeys(int nk) => (nk + 7) & ~7;

    /// <summary>
    /// Multi-head attention in one launch: short attention (at most <see cref="FusedAttentionMaxPairs"/> query × key
    /// pairs) fused (<see cref="CudaOps.FusedAttention"/>), longer attention tiled on the tensor cores
    /// (<see cref="CudaOps.TiledAttention"/>, no score matrix) where the head dimension and the device allow. Otherwise
    /// through cuBLAS: scores = q·kᵀ per head (batched GEMM), scaled masked softmax to fp16, out = p·v (batched GEMM,
    /// fp16 out), queries in chunks so the score block stays under <see cref="AttentionBlockElements"/> (and, for long
    /// causal prompts, of <see cref="CausalChunkRows"/>), each chunk computing only the keys its rows can see.
    /// q: fp16 [nq, heads·hd]; k, v: fp16 rows 0..nk-1 of [*, kvHeads·hd]; out: fp16 [nq, heads·hd].
    /// <paramref name="causalOffset"/> ≥ 0: query i sees keys ≤ causalOffset + i; -1: all.
    /// </summary>
    internal void Attend(ArrayView<ushort> q, ArrayView<ushort> k, ArrayView<ushort> v, ArrayView<ushort> output,
        int nq, int nk, int heads, int kvHeads, int hd, int causalOffset, Scratch<float> scores, Scratch<ushort> probs)
    {
        if (nq == 0) return;
        if ((long)nq * nk <= FusedAttentionMaxPairs)
        {
            var shape = AttentionShape.Create(nq, nk, heads, kvHeads, hd, causal: false);
            Ops.FusedAttention(q, k, v, scores.Get((long)heads * nq * nk), output, shape, causalOffset);
            return;
        }
        if (TiledAttention && Ops.TiledAttentionRuns(hd))
        {
            Ops.TiledAttention(q, k, v, output, AttentionShape.Create(nq, nk, heads, kvHeads, hd, causal: false), causalOffset);
            return;
        }
        int group = heads / kvHeads, qd = heads * hd, kvd = kvHeads * hd;
        int block = (int)Math.Clamp(AttentionBlockElements / ((long)heads * PaddedKeys(nk)), 1, nq);
        if (causalOffset >= 0 && nq >= 2 * CausalChunkRows) block = Math.Min(block, CausalChunkRows);
        float scale = 1f / MathF.Sqrt(hd);
        for (int i0 = 0; i0 < nq; i0 += block)
        {
            int b = Math.Min(block, nq - i0);
            int visible = causalOffset < 0 ? nk : Math.Min(nk, causalOffset + i0 + b);
            int ld = PaddedKeys(visible);
            long per = (long)b * ld;
            var s = scores.Get(heads * per);
            var p = probs.Get(heads * per);
            for (int g = 0; g < group; g++)
            {
                // Query heads kvh·group + g, for every kv head kvh: one strided batch over kv heads.
                Blas.BatchedTransB(b, hd, visible, kvHeads,
                    q.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd,
                    k.SubView(0, (long)(visible - 1) * kvd + kvd), kvd, hd,
                    s.SubView(g * per, (kvHeads - 1) * group * per + per), ld, group * per);
            }
            Ops.ScaledMaskedSoftmaxToHalf(s, p, heads, b, visible, causalOffset < 0 ? -1 : causalOffset + i0, scale, ld);
            for (int g = 0; g < group; g++)
            {
                Blas.BatchedNN(b, visible, hd, kvHeads,
                    p.SubView(g * per, (kvHeads - 1) * group * per + per), ld, group * per,
                    v.SubView(0, (long)(visible - 1) * kvd + kvd), kvd, hd,
                    output.SubView((long)i0 * qd + g * hd, (long)(b - 1) * qd + (kvHeads - 1) * group * hd + hd), qd, group * hd);
            }
        }
    }

    public VisionFeatures VisionForward(ReadOnlySpan<float> pixels, CancellationToken ct = default)
    {
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            return Vision.Forward(pixels, ct);
        }
    }

    /// <summary>A LLaVA-NeXT image's views through the tower as one batch: each layer's GEMMs over every view's rows at once.</summary>
    public VisionFeatures[] VisionForwardViews(ReadOnlySpan<float> pixels, int views, CancellationToken ct = default)
    {
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            return views == 1 ? [Vision.Forward(pixels, ct)] : Vision.ForwardViews(pixels, views, ct);
        }
    }

    /// <summary>Host features in, host rows out (an upload and a download; the request path uses <see cref="ProjectImage"/>).</summary>
    public float[] Project(ReadOnlySpan<float> features, int rows)
    {
        int vh = Projector.In, th = Hidden;
        if (features.Length != rows * vh)
            throw new ArgumentException($"Projector input has {features.Length} values; expected {rows} rows of {vh}.", nameof(features));
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            using var x = Memory.Allocate<float>(features.Length);
            Queue.Upload(x.View, features);
            using var y = Projector.Forward(x.View, rows);
            return Queue.Download(y.View, (long)rows * th);
        }
    }

    /// <summary>The image's decoder rows, projected and kept on the device.</summary>
    public ImageRows ProjectImage(VisionFeatures vision)
    {
        if (vision.Device is not { } dv) return ImageRows.OnHost(Project(vision.Features, vision.Tokens), Hidden);
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            return DeviceRows(Projector.Forward(dv.Features.View, dv.Tokens), null, dv.Tokens);
        }
    }

    /// <summary>Rows of decoder width owned by an <see cref="ImageRows"/>, copied to the host on request.</summary>
    internal ImageRows DeviceRows(DeviceBuffer<float> rows, DeviceBuffer<int>? visual, int count)
        => ImageRows.OnDevice(rows, visual, () => Download(rows.View, (long)count * Hidden), () =>
        {
            lock (Sync)
            {
                using var bind = Accelerator.BindScoped();
                rows.Dispose();
                visual?.Dispose();
            }
        }, count, Hidden);

    /// <summary>
    /// The prefill sequence built on the device: only the token ids (with the image rows' places) go up; the embedding
    /// rows come from the fp16 table on the device and the image rows from the projector's output.
    /// </summary>
    public SequenceState BuildSequence(ReadOnlySpan<int> ids, IReadOnlyList<ImageRows> images, IReadOnlyList<int[]>? visualIndices = null, int[]? given = null)
    {
        int n = ids.Length, h = Hidden;
        if (n == 0) throw new ArgumentException("The prompt is empty.", nameof(ids));
        bool deviceVisual = images.Any(i => i.Visual is not null);
        IReadOnlyList<int[]?>? known = deviceVisual
            ? images.Select((img, i) => img.Visual is null ? visualIndices?[i] ?? DefaultVisual(i, img.Rows) : null).ToList()
            : (IReadOnlyList<int[]?>?)visualIndices;
        var (source, vis) = SequenceBuilder.Map(this, ids, images.Select(i => i.Rows).ToArray(), known);
        int imageRows = images.Sum(i => i.Rows);
        int firstImageRow = Array.FindIndex(source, s => s < 0);
        bool devicePositions = given is null && images.Count == 1 && images[0].OriginalPositions && images[0].Visual is not null && firstImageRow >= 0;
        lock (Sync)
        {
            using var bind = Accelerator.BindScoped();
            var mem = Memory;
            var x = mem.Allocate<float>((long)n * h);
            var pos = mem.Allocate<int>(n);
            var visual = mem.Allocate<int>(n);
            using var src = mem.Allocate<int>(n);
            DeviceBuffer<float>? joined = null;
            DeviceBuffer<int>? imageVisual = null;
            try
            {
                // The images' rows end to end (one image on the device: used where it is).
                ArrayView<float> rows;
                if (images.Count == 1 && images[0].Device is { } only) rows = only.View;
                else
                {
                    joined = mem.Allocate<float>(Math.Max(1, (long)imageRows * h));
                    long at = 0;
                    foreach (var img in images)
                    {
                        var dst = joined.Slice(at, (long)img.Rows * h);
                        if (img.Device is { } d) Queue.Copy(d.Slice(0, (long)img.Rows * h), dst);
                        else Queue.Upload(dst, img.ToHost());
                        at += (long)img.Rows * h;
                    }
                    rows = joined.View;
                }
                // Each image row's visual index, unless it is simply the row number (one image of patches only): from the
                // device (VisionZip chose the rows there) or the host.
                if (deviceVisual || visualIndices is not null || images.Count != 1 || !Config.DropClsToken)
                {
                    imageVisual = mem.Allocate<int>(Math.Max(1, imageRows));
                    int at = 0;
                    for (int i = 0; i < images.Count; i++)
                    {
                        var dst = imageVisual.Slice(at, images[i].Rows);
                        if (images[i].Visual is { } dvis) Queue.Copy(dvis.Slice(0, images[i].Rows), dst);
                        else Queue.Upload(dst, visualIndices?[i] ?? DefaultVisual(i, images[i].Rows));
                        at += images[i].Rows;
                    }
                }
                Queue.Upload(src.View, source);
                Ops.EmbedSequence(Decoder.EmbedTokens.View, rows, src.View, n, h, x.View, pos.View, visual.View,
                    imageVisual is null ? default : imageVisual.View);
                // Original positions after a selection before the LLM: n ints go up with the token ids, or, when only the
                // device knows the chosen patches, they are computed there.
                if (given is not null) Queue.Upload(pos.View, SequenceBuilder.CheckedPositions(given, n).AsSpan());
                else if (devicePositions)
                    Ops.OriginalPositions(pos.View, visual.View, n, firstImageRow, imageRows, TokensPerImage, Config.DropClsToken ? 0 : 1, TokensPerImage - (Config.DropClsToken ? 0 : 1));
            }
            catch
            {
                x.Dispose(); pos.Dispose(); visual.Dispose();
                throw;
            }
            finally
            {
                joined?.Dispose();
                imageVisual?.Dispose();
            }
            var positions = given ?? new int[n];
            if (given is null) for (int i = 0; i < n; i++) positions[i] = i;
            // With positions computed on the device the host knows the last one when text follows the image (it always
            // does in a prompt); else the full run's end bounds it.
            int textAfter = n - firstImageRow - imageRows;
            int lastPosition = !devicePositions ? positions[n - 1]
                : textAfter > 0 ? firstImageRow + TokensPerImage + textAfter - 1 : firstImageRow + TokensPerImage - 1;
            var device = new DeviceSequence(x, pos, visual, n) { LastPosition = lastPosition };
            var state = new SequenceState { Length = n, Positions = PositionIds.OneComponent(positions), VisualIndex = vis ?? new int[n], Device = device };
            if (vis is null)
            {
                // Only the device knows which patches the rows are (VisionZip chose them there): the report reads them back at the end.
                int prefix = Array.FindIndex(source, s => s < 0);
                int run = 0;
                for (int i = prefix; i >= 0 && i < n && source[i] < 0; i++) run++;
                state.AppliedOnDevice(n, run, () => (PositionIds.OneComponent(devicePositions ? Download(pos.View, n) : positions), Download(visual.View, n)), newVersion: false);
            }
            state.HiddenOnDevice(() => Download(x.View, (long)n * h));
            return state;
        }

        // Image i's rows by default: its [CLS] first with the "full" strategy, then its patches after the earlier images'.
        int[] DefaultVisual(int image, int rows)
        {
            int cls = Config.DropClsToken ? 0 : 1, patches = TokensPerImage - cls;
            var r = new int[rows];
            for (int j = 0; j < rows; j++) r[j] = j < cls ? SequenceState.ClsToken : image * patches + j - cls;
            return r;
        }
    }

    public IGeneration StartGeneration(int extraCapacity) => new CudaGeneration(this, extraCapacity);

    private readonly Dictionary<string, DeviceBuffer<float>> _constants = new(StringComparer.Ordinal);

    /// <summary>
    /// A small constant table on the device (e.g. AdaptPrune's positional prior for a grid), uploaded the first time it is
    /// asked for and kept with the model, so later requests upload nothing. The caller holds the lock.
    /// </summary>
    internal ArrayView<float> Constant(string key, Func<float[]> make)
    {
        if (!_constants.TryGetValue(key, out var b)) _constants[key] = b = Memory.Upload<float>(make());
        return b.View;
    }

    public void Dispose()
    {
        lock (Sync)
        {
            using var bind = _device.Accelerator.BindScoped();
            foreach (var c in _constants.Values) c.Dispose();
            _constants.Clear();
            Decoder.Dispose();
            Projector.Dispose();
            Vision.Dispose();
            Blas.Dispose();
            _blasWorkspace?.Dispose();
            Memory.Dispose();
            Queue.Dispose();
            _device.Dispose();
        }
    }
}
