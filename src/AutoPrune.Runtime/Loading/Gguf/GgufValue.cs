using System.Globalization;

namespace AutoPrune.Loading.Gguf;

/// <summary>GGUF metadata value types (<c>enum gguf_type</c>), as stored in the file.</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One GGUF metadata value: a scalar, a string, or an array of one element type (arrays of arrays included). Arrays
/// are held as typed .NET arrays (<c>uint[]</c>, <c>string[]</c>, ..., <c>GgufValue[]</c> for nested arrays), so a value
/// read from a file writes back bit for bit.
/// </summary>
internal sealed class GgufValue
{
    private readonly object _value;

    private GgufValue(GgufValueType type, GgufValueType elementType, object value)
    {
        Type = type; ElementType = elementType; _value = value;
    }

    public GgufValueType Type { get; }

    /// <summary>For an array, the type of its elements; otherwise equal to <see cref="Type"/>.</summary>
    public GgufValueType ElementType { get; }

    /// <summary>The boxed scalar, the string, or the typed array.</summary>
    public object Raw => _value;

    public bool IsArray => Type == GgufValueType.Array;

    /// <summary>Element count of an array (0 for a scalar).</summary>
    public int ArrayLength => _value is Array a && IsArray ? a.Length : 0;

    public static GgufValue Of(byte v) => new(GgufValueType.UInt8, GgufValueType.UInt8, v);
    public static GgufValue Of(sbyte v) => new(GgufValueType.Int8, GgufValueType.Int8, v);
    public static GgufValue Of(ushort v) => new(GgufValueType.UInt16, GgufValueType.UInt16, v);
    public static GgufValue Of(short v) => new(GgufValueType.Int16, GgufValueType.Int16, v);
    public static GgufValue Of(uint v) => new(GgufValueType.UInt32, GgufValueType.UInt32, v);
    public static GgufValue Of(int v) => new(GgufValueType.Int32, GgufValueType.Int32, v);
    public static GgufValue Of(float v) => new(GgufValueType.Float32, GgufValueType.Float32, v);
    public static GgufValue Of(bool v) => new(GgufValueType.Bool, GgufValueType.Bool, v);
    public static GgufValue Of(string v) => new(GgufValueType.String, GgufValueType.String, v ?? throw new ArgumentNullException(nameof(v)));
    public static GgufValue Of(ulong v) => new(GgufValueType.UInt64, GgufValueType.UInt64, v);
    public static GgufValue Of(long v) => new(GgufValueType.Int64, GgufValueType.Int64, v);
    public static GgufValue Of(double v) => new(GgufValueType.Float64, GgufValueType.Float64, v);

    /// <summary>An array value; <typeparamref name="T"/> picks the element type (byte → UInt8, ..., GgufValue → nested arrays).</summary>
    public static GgufValue Array<T>(T[] items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var et = ElementTypeOf(typeof(T));
        if (items is GgufValue[] nested && nested.Any(v => v is null || !v.IsArray))
            throw new ArgumentException("Elements of a nested GGUF array must themselves be arrays.", nameof(items));
        if (items is string[] strings && strings.Any(s => s is null))
            throw new ArgumentException("A GGUF string array cannot hold null.", nameof(items));
        return new GgufValue(GgufValueType.Array, et, items);
    }

    internal static GgufValueType ElementTypeOf(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8 : t == typeof(sbyte) ? GgufValueType.Int8 :
        t == typeof(ushort) ? GgufValueType.UInt16 : t == typeof(short) ? GgufValueType.Int16 :
        t == typeof(uint) ? GgufValueType.UInt32 : t == typeof(int) ? GgufValueType.Int32 :
        t == typeof(float) ? GgufValueType.Float32 : t == typeof(bool) ? GgufValueType.Bool :
        t == typeof(string) ? GgufValueType.String : t == typeof(ulong) ? GgufValueType.UInt64 :
        t == typeof(long) ? GgufValueType.Int64 : t == typeof(double) ? GgufValueType.Float64 :
        t == typeof(GgufValue) ? GgufValueType.Array :
        throw new ArgumentException($"{t.Name} is not a GGUF element type.");

    /// <summary>Bytes of one scalar of this type in a file (0 for strings and arrays, whose size varies).</summary>
    public static int ScalarBytes(GgufValueType t) => t switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
        _ => 0,
    };

    public static bool IsKnownType(uint t) => t <= (uint)GgufValueType.Float64;

    /// <summary>The value when it is a string.</summary>
    public bool TryGetString(out string value)
    {
        if (Type == GgufValueType.String) { value = (string)_value; return true; }
        value = ""; return false;
    }

    /// <summary>Any integer scalar (u8 … i64) as a 64-bit value; false for other types and for u64 values above <see cref="long.MaxValue"/>.</summary>
    public bool TryGetInteger(out long value)
    {
        switch (_value)
        {
            case byte b when !IsArray: value = b; return true;
            case sbyte sb when !IsArray: value = sb; return true;
            case ushort us when !IsArray: value = us; return true;
            case short s when !IsArray: value = s; return true;
            case uint u when !IsArray: value = u; return true;
            case int i when !IsArray: value = i; return true;
            case ulong ul when !IsArray && ul <= long.MaxValue: value = (long)ul; return true;
            case long l when !IsArray: value = l; return true;
            default: value = 0; return false;
        }
    }

    /// <summary>A float32 or float64 scalar as a double; a float32 becomes the double of its shortest round-trip decimal
    /// (1e-5f gives 1e-05, as the config it was converted from said, not 9.99999974737875e-06).</summary>
    public bool TryGetReal(out double value)
    {
        switch (_value)
        {
            case float f when !IsArray: value = double.Parse(f.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture); return true;
            case double d when !IsArray: value = d; return true;
            default: value = 0; return false;
        }
    }

    public bool TryGetBool(out bool value)
    {
        if (Type == GgufValueType.Bool) { value = (bool)_value; return true; }
        value = false; return false;
    }

    /// <summary>The typed array when this is an array of <typeparamref name="T"/> elements.</summary>
    public bool TryGetArray<T>(out T[] items)
    {
        if (IsArray && _value is T[] a) { items = a; return true; }
        items = System.Array.Empty<T>(); return false;
    }

    /// <summary>An array of any integer element type as 64-bit values.</summary>
    public bool TryGetIntegerArray(out long[] items)
    {
        items = System.Array.Empty<long>();
        if (!IsArray) return false;
        switch (_value)
        {
            case byte[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case sbyte[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case ushort[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case short[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case uint[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case int[] a: items = a.Select(x => (long)x).ToArray(); return true;
            case long[] a: items = (long[])a.Clone(); return true;
            case ulong[] a when a.All(x => x <= long.MaxValue): items = a.Select(x => (long)x).ToArray(); return true;
            default: return false;
        }
    }

    /// <summary>An array of float32 or float64 elements as floats (float64 rounded).</summary>
    public bool TryGetFloatArray(out float[] items)
    {
        items = System.Array.Empty<float>();
        if (!IsArray) return false;
        switch (_value)
        {
            case float[] a: items = (float[])a.Clone(); return true;
            case double[] a: items = a.Select(x => (float)x).ToArray(); return true;
            default: return false;
        }
    }

    /// <summary>The type as the GGUF spec spells it (<c>uint32</c>, <c>array[string]</c>, ...), for messages.</summary>
    public string TypeName => IsArray ? $"array[{TypeNameOf(ElementType)}]" : TypeNameOf(Type);

    public static string TypeNameOf(GgufValueType t) => t switch
    {
        GgufValueType.UInt8 => "uint8", GgufValueType.Int8 => "int8", GgufValueType.UInt16 => "uint16", GgufValueType.Int16 => "int16",
        GgufValueType.UInt32 => "uint32", GgufValueType.Int32 => "int32", GgufValueType.Float32 => "float32", GgufValueType.Bool => "bool",
        GgufValueType.String => "string", GgufValueType.Array => "array", GgufValueType.UInt64 => "uint64", GgufValueType.Int64 => "int64",
        GgufValueType.Float64 => "float64", _ => $"type {(uint)t}",
    };

    /// <summary>A short rendering for messages and dumps (arrays show their length and first items).</summary>
    public override string ToString()
    {
        if (!IsArray) return _value is string s ? $"\"{(s.Length > 80 ? s[..80] + "…" : s)}\"" : Convert.ToString(_value, CultureInfo.InvariantCulture) ?? "";
        var a = (Array)_value;
        var first = a.Cast<object>().Take(4).Select(o => o is string s ? $"\"{s}\"" : Convert.ToString(o, CultureInfo.InvariantCulture));
        return $"{TypeName}[{a.Length}] [{string.Join(", ", first)}{(a.Length > 4 ? ", …" : "")}]";
    }
}
