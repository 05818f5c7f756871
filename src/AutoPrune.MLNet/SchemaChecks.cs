using System.Reflection;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace AutoPrune.MLNet;

/// <summary>What kind of image column the stage reads.</summary>
internal enum ImageColumnKind { Image, Path }

/// <summary>Input-column validation shared by the estimator (<see cref="SchemaShape"/>) and the transformer (<see cref="DataViewSchema"/>).</summary>
internal static class SchemaChecks
{
    private const string Stage = "AnswerVisualQuestion";
    private const string ExpectedImage = "Image (an MLImage, e.g. from LoadImages) or String (an image file path)";
    private const string ExpectedText = "String (text)";

    public static ImageColumnKind Check(DataViewSchema schema, string imageColumn, string questionColumn)
    {
        var image = schema.GetColumnOrNull(imageColumn) ?? throw Missing(imageColumn, "image", ExpectedImage, schema.Select(c => c.Name));
        var kind = image.Type switch
        {
            ImageDataViewType => ImageColumnKind.Image,
            TextDataViewType => ImageColumnKind.Path,
            var t => throw WrongType(imageColumn, "image", ExpectedImage, t.ToString() ?? t.GetType().Name),
        };
        var question = schema.GetColumnOrNull(questionColumn) ?? throw Missing(questionColumn, "question", ExpectedText, schema.Select(c => c.Name));
        if (question.Type is not TextDataViewType) throw WrongType(questionColumn, "question", ExpectedText, question.Type.ToString() ?? question.Type.GetType().Name);
        return kind;
    }

    public static ImageColumnKind Check(SchemaShape shape, string imageColumn, string questionColumn)
    {
        if (!TryFind(shape, imageColumn, out var image)) throw Missing(imageColumn, "image", ExpectedImage, shape.Select(c => c.Name));
        var kind = (image.Kind, image.ItemType) switch
        {
            (SchemaShape.Column.VectorKind.Scalar, ImageDataViewType) => ImageColumnKind.Image,
            (SchemaShape.Column.VectorKind.Scalar, TextDataViewType) => ImageColumnKind.Path,
            _ => throw WrongType(imageColumn, "image", ExpectedImage, Describe(image)),
        };
        if (!TryFind(shape, questionColumn, out var question)) throw Missing(questionColumn, "question", ExpectedText, shape.Select(c => c.Name));
        if (question.Kind != SchemaShape.Column.VectorKind.Scalar || question.ItemType is not TextDataViewType)
            throw WrongType(questionColumn, "question", ExpectedText, Describe(question));
        return kind;
    }

    private static bool TryFind(SchemaShape shape, string name, out SchemaShape.Column column)
    {
        // The last column of a name is the visible one, as in DataViewSchema.
        for (int i = shape.Count - 1; i >= 0; i--)
            if (shape[i].Name == name) { column = shape[i]; return true; }
        column = default;
        return false;
    }

    private static string Describe(SchemaShape.Column c) => c.Kind switch
    {
        SchemaShape.Column.VectorKind.Vector => $"Vector<{c.ItemType}>",
        SchemaShape.Column.VectorKind.VariableVector => $"VarVector<{c.ItemType}>",
        _ => c.IsKey ? $"Key<{c.ItemType}>" : c.ItemType?.ToString() ?? "?",
    };

    private static ArgumentOutOfRangeException Missing(string name, string role, string expected, IEnumerable<string> present) =>
        new("inputSchema", $"{Stage}: the {role} column '{name}' was not found in the input; expected a column of type {expected}. " +
                           $"Columns present: {string.Join(", ", present.Distinct().Select(n => $"'{n}'"))}.");

    private static ArgumentOutOfRangeException WrongType(string name, string role, string expected, string actual) =>
        new("inputSchema", $"{Stage}: the {role} column '{name}' has type {actual}; expected {expected}.");

    /// <summary>The stage's output columns, in order: answer, kept visual tokens, FLOPs ratio, prefill ms, error.</summary>
    public static DataViewSchema OutputColumns(string output)
    {
        var b = new DataViewSchema.Builder();
        b.AddColumn(output, TextDataViewType.Instance);
        b.AddColumn(VisualQuestionColumns.KeptVisualTokens(output), NumberDataViewType.Single);
        b.AddColumn(VisualQuestionColumns.FlopsRatio(output), NumberDataViewType.Single);
        b.AddColumn(VisualQuestionColumns.PrefillMs(output), NumberDataViewType.Single);
        b.AddColumn(VisualQuestionColumns.Error(output), TextDataViewType.Instance);
        return b.ToSchema();
    }

    public static DataViewSchema Append(DataViewSchema input, string output)
    {
        var b = new DataViewSchema.Builder();
        b.AddColumns(input);
        b.AddColumns(OutputColumns(output));
        return b.ToSchema();
    }

    // SchemaShape.Column has no public constructor (ML.NET builds them through an internal one); this is the one
    // place that reaches it, checked by the estimator tests against the pinned Microsoft.ML version.
    private static readonly ConstructorInfo s_columnCtor = typeof(SchemaShape.Column)
        .GetConstructors(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
        .Where(c => c.GetParameters() is var p && p.Length >= 4 && p[0].ParameterType == typeof(string)
                    && p[1].ParameterType == typeof(SchemaShape.Column.VectorKind) && p[2].ParameterType == typeof(DataViewType) && p[3].ParameterType == typeof(bool))
        .OrderBy(c => c.GetParameters().Length)
        .FirstOrDefault()
        ?? throw new MissingMethodException("This version of Microsoft.ML has no SchemaShape.Column(name, kind, type, isKey, ...) constructor.");

    private static SchemaShape.Column ShapeColumn(string name, DataViewType type, SchemaShape.Column.VectorKind kind = SchemaShape.Column.VectorKind.Scalar)
    {
        var ps = s_columnCtor.GetParameters();
        var args = new object?[ps.Length];
        args[0] = name; args[1] = kind; args[2] = type; args[3] = false;
        for (int i = 4; i < ps.Length; i++) args[i] = ps[i].HasDefaultValue ? ps[i].DefaultValue : null;
        return (SchemaShape.Column)s_columnCtor.Invoke(args);
    }

    /// <summary>The shape of a schema (ML.NET's own SchemaShape.Create is internal); scalar and vector columns, no annotations.</summary>
    internal static SchemaShape ShapeOf(DataViewSchema schema) => new(schema.Where(c => !c.IsHidden).Select(c => c.Type switch
    {
        VectorDataViewType v => ShapeColumn(c.Name, v.ItemType, v.IsKnownSize ? SchemaShape.Column.VectorKind.Vector : SchemaShape.Column.VectorKind.VariableVector),
        var t => ShapeColumn(c.Name, t),
    }));

    public static SchemaShape Append(SchemaShape input, string output)
    {
        var added = OutputColumns(output).Select(c => ShapeColumn(c.Name, c.Type)).ToList();
        var names = added.Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        return new SchemaShape(input.Where(c => !names.Contains(c.Name)).Concat(added));
    }
}
