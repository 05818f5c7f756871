namespace AutoPrune.Tests.Engine;

/// <summary>The public model loaded once per test class that asks for it, unpruned unless a request asks (the parity tests compare with transformers).</summary>
public sealed class PublicModelFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", MaxConcurrentRequests = 2, DefaultPruning = null });
    public void Dispose() => Model.Dispose();
}
