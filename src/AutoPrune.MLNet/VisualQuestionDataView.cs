using Microsoft.ML;
using Microsoft.ML.Data;

namespace AutoPrune.MLNet;

/// <summary>The lazy output of <see cref="VisualQuestionTransformer.Transform"/>: the input's rows plus the answer columns.</summary>
internal sealed class VisualQuestionDataView : IDataView
{
    private readonly VisualQuestionTransformer _parent;
    private readonly IDataView _input;
    private readonly ImageColumnKind _kind;

    public VisualQuestionDataView(VisualQuestionTransformer parent, IDataView input, ImageColumnKind kind)
    {
        _parent = parent; _input = input; _kind = kind;
        Schema = SchemaChecks.Append(input.Schema, parent.OutputColumnName);
    }

    public DataViewSchema Schema { get; }
    public bool CanShuffle => _input.CanShuffle;
    public long? GetRowCount() => _input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var (inputColumns, active) = RowAnswerer.Dependencies(_parent, _input.Schema, Schema, columnsNeeded);
        return new Cursor(this, _input.GetRowCursor(inputColumns, rand), active);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null)
    {
        var (inputColumns, active) = RowAnswerer.Dependencies(_parent, _input.Schema, Schema, columnsNeeded);
        return _input.GetRowCursorSet(inputColumns, n, rand).Select(c => (DataViewRowCursor)new Cursor(this, c, active)).ToArray();
    }

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly DataViewRowCursor _input;
        private readonly RowAnswerer _answerer;
        private readonly bool[] _active;

        public Cursor(VisualQuestionDataView view, DataViewRowCursor input, bool[] active)
        {
            _input = input; _active = active; Schema = view.Schema;
            _answerer = new RowAnswerer(view._parent, input, view._kind, active);
        }

        public override DataViewSchema Schema { get; }
        public override long Position => _input.Position;
        public override long Batch => _input.Batch;
        public override bool MoveNext() => _input.MoveNext();
        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];
        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column) => _answerer.GetGetter<TValue>(column);

        protected override void Dispose(bool disposing)
        {
            if (disposing) _input.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>Row-to-row mapping (used by PredictionEngine and by ML.NET's row-mapper plumbing).</summary>
internal sealed class VisualQuestionRowMapper : IRowToRowMapper
{
    private readonly VisualQuestionTransformer _parent;
    private readonly ImageColumnKind _kind;

    public VisualQuestionRowMapper(VisualQuestionTransformer parent, DataViewSchema inputSchema, ImageColumnKind kind)
    {
        _parent = parent; _kind = kind; InputSchema = inputSchema;
        OutputSchema = SchemaChecks.Append(inputSchema, parent.OutputColumnName);
    }

    public DataViewSchema InputSchema { get; }
    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
        => RowAnswerer.Dependencies(_parent, InputSchema, OutputSchema, dependingColumns).Input;

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
    {
        var active = new bool[OutputSchema.Count];
        foreach (var c in activeColumns) active[c.Index] = true;
        return new Row(this, input, active);
    }

    private sealed class Row : DataViewRow
    {
        private readonly DataViewRow _input;
        private readonly RowAnswerer _answerer;
        private readonly bool[] _active;

        public Row(VisualQuestionRowMapper mapper, DataViewRow input, bool[] active)
        {
            _input = input; _active = active; Schema = mapper.OutputSchema;
            _answerer = new RowAnswerer(mapper._parent, input, mapper._kind, active);
        }

        public override DataViewSchema Schema { get; }
        public override long Position => _input.Position;
        public override long Batch => _input.Batch;
        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];
        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column) => _answerer.GetGetter<TValue>(column);
    }
}
