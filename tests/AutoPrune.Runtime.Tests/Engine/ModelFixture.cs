namespace AutoPrune.Tests.Engine;

/// <summary>The public model loaded once per test class that asks for it.</summary>
public sealed class PublicModelFixture : IDisposable
{
    public VisionLanguageModel Model { get; } = VisionLanguageModel.Load(TestData.ModelDir, new ModelOptions { Device = "cpu", MaxConcurrentRequests = 2 });
    public void Dispose() => Model.Dispose();
}
