namespace AutoPrune.Benchmarks;

internal static class GemmShapes
{
    public static readonly GemmBenchmarks.Shape[] All =
    {
        new("clip-qkv", 577, 128, 128),
        new("clip-mlp", 577, 128, 512),
        new("llama-attn", 590, 192, 192),
        new("llama-mlp", 590, 192, 512),
        new("llama-lmhead", 590, 192, 402),
        new("decode-mlp", 1, 192, 512),
        new("7b-attn", 600, 4096, 4096),
        new("7b-mlp", 600, 4096, 11008),
        new("7b-decode", 1, 4096, 4096),
    };

    public static float[] Rand(Random r, int len)
    {
        var x = new float[len];
        for (int i = 0; i < len; i++) x[i] = (float)(r.NextDouble() * 2 - 1);
        return x;
    }
}
