using AutoPrune.Compute.Cpu;
using Xunit;

namespace AutoPrune.Tests.Compute;

public sealed class AttentionTests
{
    /// <summary>The blocked GEMM prefill path agrees with a double-precision reference: causal and not, GQA, a cache longer than the queries.</summary>
    [Theory]
    [InlineData(70, 70, 4, 2, 16, true)]
    [InlineData(130, 200, 4, 4, 24, true)]
    [InlineData(65, 65, 2, 1, 32, false)]
    [InlineData(5, 9, 4, 2, 8, true)] // decode-sized: the row-by-row path
    public void MatchesReference(int nq, int nk, int qHeads, int kvHeads, int hd, bool causal)
    {
        var rng = new Random(nq * 31 + nk);
        float[] R(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var q = R(nq * qHeads * hd);
        var k = R(nk * kvHeads * hd);
        var v = R(nk * kvHeads * hd);
        var o = new float[nq * qHeads * hd];
        Attention.MultiHead(q, k, v, o, nq, nk, qHeads, kvHeads, hd, causal);
        int group = qHeads / kvHeads;
        for (int h = 0; h < qHeads; h++)
            for (int i = 0; i < nq; i++)
            {
                int visible = causal ? nk - nq + i + 1 : nk;
                var s = new double[visible];
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += (double)q[(i * qHeads + h) * hd + d] * k[(j * kvHeads + h / group) * hd + d];
                    s[j] = dot / Math.Sqrt(hd);
                }
                double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
                for (int d = 0; d < hd; d++)
                {
                    double expected = 0;
                    for (int j = 0; j < visible; j++) expected += Math.Exp(s[j] - max) / sum * v[(j * kvHeads + h / group) * hd + d];
                    Assert.Equal(expected, o[(i * qHeads + h) * hd + d], 1e-5);
                }
            }
    }
}
