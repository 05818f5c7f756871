using AutoPrune.Compute;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>
/// Qwen2.5-VL's M-RoPE position ids, by the rules of transformers' <c>get_rope_index</c> (images; videos are refused):
/// text tokens get the same position in all three components, counting on from the largest position so far + 1; the
/// merged tokens of an image with an LLM grid (t, h/m, w/m) get (st + ti, st + hi, st + wi) where st is where the
/// preceding text left off. <c>rope_deltas</c> = largest position + 1 − sequence length, and a decode step at cache
/// position c (0-based index of the token in the whole sequence) has position c + rope_deltas in every component.
/// </summary>
internal static class Qwen2VLRopeIndex
{
    /// <summary>Position components of M-RoPE: temporal, height, width.</summary>
    public const int Components = 3;

    /// <summary>Token ids the rules look at.</summary>
    internal readonly record struct TokenIds(int Image, int Video, int VisionStart)
    {
        public static TokenIds Of(Qwen2VLConfig c) => new(c.ImageTokenId, c.VideoTokenId, c.VisionStartTokenId);
    }

    /// <summary>
    /// Positions of a prompt. <paramref name="imageGrids"/> are the images' <c>image_grid_thw</c> in prompt order; each
    /// image's <c>&lt;|image_pad|&gt;</c> run must follow a <c>&lt;|vision_start|&gt;</c> and hold t·h·w / merge² tokens.
    /// </summary>
    /// <exception cref="ArgumentException">The image runs and the grids disagree, or the prompt holds video tokens.</exception>
    public static (PositionIds Positions, int RopeDelta) Compute(ReadOnlySpan<int> inputIds, IReadOnlyList<(int T, int H, int W)> imageGrids, TokenIds ids, int mergeSize)
    {
        ArgumentNullException.ThrowIfNull(imageGrids);
        ArgumentOutOfRangeException.ThrowIfLessThan(mergeSize, 1);
        int n = inputIds.Length;
        if (inputIds.Contains(ids.Video))
            throw new ArgumentException("The prompt holds video tokens: video inputs are not supported yet for Qwen2.5-VL.", nameof(inputIds));
        if (imageGrids.Count == 0)
        {
            if (inputIds.Contains(ids.Image))
                throw new ArgumentException("The prompt holds image tokens but no image grid was given.", nameof(imageGrids));
            return (PositionIds.Sequential(n, Components), 0);
        }

        // transformers counts the images as the vision-start tokens followed by an image token.
        int starts = 0;
        for (int i = 0; i + 1 < n; i++)
            if (inputIds[i] == ids.VisionStart && inputIds[i + 1] == ids.Image) starts++;
        if (starts != imageGrids.Count)
            throw new ArgumentException($"The prompt has {starts} image(s) (a vision-start token followed by image tokens) but {imageGrids.Count} image grid(s) were given.", nameof(imageGrids));

        var v = new int[checked(n * Components)];
        int st = 0, next = 0; // st: first token not placed yet; next: max position so far + 1
        for (int k = 0; k < imageGrids.Count; k++)
        {
            var (t, h, w) = imageGrids[k];
            if (t < 1 || h < 1 || w < 1 || h % mergeSize != 0 || w % mergeSize != 0)
                throw new ArgumentException($"Image {k}'s grid ({t}, {h}, {w}) is not a positive grid whose sides are multiples of the merge size {mergeSize}.", nameof(imageGrids));
            int lh = h / mergeSize, lw = w / mergeSize, count = checked(t * lh * lw);
            int ed = inputIds[st..].IndexOf(ids.Image);
            if (ed < 0) throw new ArgumentException($"Image {k} has no image tokens in the prompt after token {st}.", nameof(inputIds));
            ed += st;
            if (ed + count > n || inputIds.Slice(ed, count).IndexOfAnyExcept(ids.Image) >= 0 || (ed + count < n && inputIds[ed + count] == ids.Image))
            {
                int run = 0;
                while (ed + run < n && inputIds[ed + run] == ids.Image) run++;
                throw new ArgumentException($"Image {k}'s grid ({t}, {h}, {w}) gives {count} merged tokens, but the prompt has {run} image tokens at {ed}.", nameof(inputIds));
            }
            for (int i = st; i < ed; i++, next++)
                Fill(v, i, next, next, next);
            int origin = next;
            int idx = ed;
            for (int ti = 0; ti < t; ti++)
                for (int hi = 0; hi < lh; hi++)
                    for (int wi = 0; wi < lw; wi++, idx++)
                        // The temporal index of an image is t · second_per_grid_t (0) · tokens_per_second: 0 for every frame.
                        Fill(v, idx, origin, origin + hi, origin + wi);
            next = origin + Math.Max(0, Math.Max(lh, lw) - 1) + 1;
            st = ed + count;
        }
        for (int i = st; i < n; i++, next++)
            Fill(v, i, next, next, next);
        var positions = PositionIds.FromValues(Components, n, v);
        return (positions, positions.Max() + 1 - n);
    }

    /// <summary>Token <paramref name="token"/>'s (t, h, w) into component-major values of <paramref name="v"/>.Length / 3 tokens.</summary>
    private static void Fill(int[] v, int token, int t, int h, int w)
    {
        int n = v.Length / Components;
        v[token] = t; v[n + token] = h; v[2 * n + token] = w;
    }

    /// <summary>The position (every component) of the token at <paramref name="cachePosition"/> in a decode step.</summary>
    public static int DecodePosition(int cachePosition, int ropeDelta) => checked(cachePosition + ropeDelta);
}
