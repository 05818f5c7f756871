namespace AutoPrune.Loading;

/// <summary>
/// Where a model's weights come from: a checkpoint folder (<see cref="SafeTensorStore"/>) or generated weights for
/// speed measurements (RandomTensorSource). Names are canonical (see the family's tensor-name map, e.g. LLaVA's TensorNames); when
/// an expected shape is given the tensor must have exactly that shape.
/// </summary>
internal interface ITensorSource
{
    /// <summary>True when the source holds (or can produce) a tensor of that name.</summary>
    bool Contains(string name);

    /// <summary>The tensor as fp32 (fp16 and bf16 widened exactly).</summary>
    float[] ReadFloat32(string name, params long[] expectedShape);

    /// <summary>The tensor as fp16 (fp16 copied; bf16 and fp32 rounded to nearest even, overflow to ±inf).</summary>
    Half[] ReadFloat16(string name, params long[] expectedShape);

    /// <summary>
    /// The tensor as stored, for weights the CPU backend keeps (and widens per tile when it computes): a checkpoint's
    /// fp16/bf16/fp32 data mapped from its file, generated weights as fp16.
    /// </summary>
    WeightData ReadWeight(string name, params long[] expectedShape) => WeightData.Of(ReadFloat32(name, expectedShape));

    /// <summary>Names never read so far, so a model can report tensors it does not use.</summary>
    IReadOnlyList<string> UnusedTensors();
}
