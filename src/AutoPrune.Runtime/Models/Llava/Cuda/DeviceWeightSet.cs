namespace AutoPrune.Models.Llava.Cuda;

/// <summary>Buffers a device component uploaded at load (weights, constant tables) and frees together, the last first.</summary>
internal abstract class DeviceWeightSet : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    protected T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    public virtual void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }
}
