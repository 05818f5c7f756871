using Microsoft.ML;
using Microsoft.ML.Data;

namespace AutoPrune.MLNet;

/// <summary>
/// Per-cursor state: reads the current row's image and question, asks the model once per row position (only when an
/// output column is read), and serves the answer and report columns. A failed row yields an empty answer, NaN report
/// values and the reason in the error column; the cursor goes on. A model that cannot be loaded fails the cursor.
/// </summary>
internal sealed class RowAnswerer
{
    private const int OutputColumns = 5;
    private readonly VisualQuestionTransformer _parent;
    private readonly DataViewRow _input;
    private readonly int _inputCount;
    private readonly ValueGetter<MLImage>? _imageGetter;
    private readonly ValueGetter<ReadOnlyMemory<char>>? _pathGetter;
    private readonly ValueGetter<ReadOnlyMemory<char>>? _questionGetter;
    private long _cachedPosition = -1;
    private Result _result;

    private readonly record struct Result(string Answer, float KeptVisualTokens, float FlopsRatio, float PrefillMs, string Error);

    public RowAnswerer(VisualQuestionTransformer parent, DataViewRow input, ImageColumnKind kind, bool[] active)
    {
        _parent = parent; _input = input; _inputCount = input.Schema.Count;
        bool anyOutput = false;
        for (int i = _inputCount; i < active.Length; i++) anyOutput |= active[i];
        if (!anyOutput) return;
        var image = input.Schema[parent.ImageColumnName];
        if (kind == ImageColumnKind.Image) _imageGetter = input.GetGetter<MLImage>(image);
        else _pathGetter = input.GetGetter<ReadOnlyMemory<char>>(image);
        _questionGetter = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[parent.QuestionColumnName]);
    }

    /// <summary>Which input columns a set of output columns needs, and which output columns are active.</summary>
    public static (IEnumerable<DataViewSchema.Column> Input, bool[] Active) Dependencies(
        VisualQuestionTransformer parent, DataViewSchema inputSchema, DataViewSchema outputSchema, IEnumerable<DataViewSchema.Column> needed)
    {
        var active = new bool[outputSchema.Count];
        var input = new Dictionary<int, DataViewSchema.Column>();
        bool anyOutput = false;
        foreach (var c in needed)
        {
            active[c.Index] = true;
            if (c.Index < inputSchema.Count) input[c.Index] = inputSchema[c.Index];
            else anyOutput = true;
        }
        if (anyOutput)
        {
            var image = inputSchema[parent.ImageColumnName];
            var question = inputSchema[parent.QuestionColumnName];
            input[image.Index] = image;
            input[question.Index] = question;
        }
        return (input.Values.ToList(), active);
    }

    public ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
    {
        if (column.Index < _inputCount) return _input.GetGetter<TValue>(_input.Schema[column.Index]);
        int k = column.Index - _inputCount;
        if (k >= OutputColumns) throw new ArgumentOutOfRangeException(nameof(column), $"Column '{column.Name}' (index {column.Index}) is not in this row's schema.");
        if (_questionGetter is null) throw new InvalidOperationException($"Column '{column.Name}' was not requested when the cursor was created.");
        Delegate getter = k switch
        {
            0 => (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> v) => v = Current().Answer.AsMemory()),
            1 => (ValueGetter<float>)((ref float v) => v = Current().KeptVisualTokens),
            2 => (ValueGetter<float>)((ref float v) => v = Current().FlopsRatio),
            3 => (ValueGetter<float>)((ref float v) => v = Current().PrefillMs),
            _ => (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> v) => v = Current().Error.AsMemory()),
        };
        return getter as ValueGetter<TValue> ?? throw new InvalidOperationException(
            $"Column '{column.Name}' has type {column.Type} (raw {column.Type.RawType.Name}); a getter of {typeof(TValue).Name} was asked for.");
    }

    private Result Current()
    {
        long position = _input.Position;
        if (position < 0) throw new InvalidOperationException("The cursor is not on a row; call MoveNext first.");
        if (position != _cachedPosition)
        {
            _result = Answer(position);
            _cachedPosition = position;
        }
        return _result;
    }

    private Result Answer(long position)
    {
        var model = _parent.GetModelForRow(); // a model that cannot load fails the cursor, not each row
        try
        {
            ReadOnlyMemory<char> q = default;
            _questionGetter!(ref q);
            var image = ReadImage(position);
            var request = VisionRequest.Create(q.ToString(), image) with
            {
                Generation = _parent.Options.Generation,
                Pruning = _parent.Options.Pruning,
            };
            var answer = model.AskAsync(request).GetAwaiter().GetResult();
            var report = answer.Report;
            return new Result(answer.Text, (float)report.AvgVisualTokensProcessed, (float)report.FlopsRatio, (float)answer.Timings.PrefillMs, "");
        }
        catch (Exception e) when (e is not OperationCanceledException and not ObjectDisposedException)
        {
            return new Result("", float.NaN, float.NaN, float.NaN, $"{e.GetType().Name}: {e.Message}");
        }
    }

    private ImageInput ReadImage(long position)
    {
        if (_imageGetter is not null)
        {
            MLImage? img = null;
            _imageGetter(ref img!);
            if (img is null) throw new ArgumentException($"Row {position} has no image (the {_parent.ImageColumnName} value is missing; LoadImages could not read it).");
            return ImageInput.FromBytes(MLImageEncoding.ToPng(img), string.IsNullOrEmpty(img.Tag) ? $"row {position} image" : img.Tag);
        }
        ReadOnlyMemory<char> p = default;
        _pathGetter!(ref p);
        string path = p.ToString().Trim();
        if (path.Length == 0) throw new ArgumentException($"Row {position} has an empty image path in column '{_parent.ImageColumnName}'.");
        string full = Path.GetFullPath(_parent.Options.ImageFolder is { Length: > 0 } folder ? Path.Combine(folder, path) : path);
        if (!File.Exists(full)) throw new FileNotFoundException($"Image file '{full}' does not exist.", full);
        return ImageInput.FromFile(full);
    }
}
