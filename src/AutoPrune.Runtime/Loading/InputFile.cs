using System.Text;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace AutoPrune.Loading;

/// <summary>
/// Thrown when an input file cannot be used: it does not exist, is not a regular file (a FIFO, a device, a directory,
/// a socket), is larger than its limit, or cannot be opened. <see cref="FilePath"/> names it.
/// </summary>
public sealed class InputFileException : IOException
{
    public InputFileException(string message, string filePath, Exception? inner = null) : base(message, inner) => FilePath = filePath;

    /// <summary>The file as it was given.</summary>
    public string FilePath { get; }
}

/// <summary>
/// Opens and reads the files the runtime is given (model folder files, images, data and options files) so that a
/// hostile path cannot hang or exhaust the process: the file must be a regular file, checked on the handle that is then
/// read (opened without blocking, so a FIFO cannot stall the open; symbolic links are followed), and reads stop at a
/// hard byte limit enforced while reading, whatever the file's length says.
/// </summary>
public static class InputFile
{
    /// <summary>
    /// Opens a regular file for reading with no size limit (safetensors shards, which are memory-mapped).
    /// </summary>
    /// <param name="what">What the file is, for messages (e.g. "Config", "Image file").</param>
    /// <exception cref="InputFileException">Missing, not a regular file, or not readable.</exception>
    public static FileStream OpenRegular(string path, string what)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(what);
        if (path.IndexOf('\0') >= 0) throw new InputFileException($"{what} path contains a NUL character.", path);
        return OperatingSystem.IsWindows() ? OpenWindows(path, what) : OpenUnix(path, what);
    }

    /// <summary>
    /// Opens a regular file of at most <paramref name="maxBytes"/> bytes. The returned stream throws
    /// <see cref="InputFileException"/> as soon as a read would go past the limit (a file that grows while read).
    /// </summary>
    /// <param name="limitName">The setting that holds the limit, named in the message (e.g. "ModelOptions.FileLimits.ImageBytes").</param>
    public static Stream OpenRead(string path, long maxBytes, string what, string? limitName = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxBytes);
        var fs = OpenRegular(path, what);
        try
        {
            long length = fs.Length;
            if (length > maxBytes) throw TooLarge(path, what, maxBytes, limitName, $"is {length:N0} bytes");
            return new LimitedStream(fs, maxBytes, path, what, limitName);
        }
        catch
        {
            fs.Dispose();
            throw;
        }
    }

    /// <summary>Reads a whole regular file of at most <paramref name="maxBytes"/> bytes.</summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string what, string? limitName = null)
    {
        using var s = OpenRead(path, maxBytes, what, limitName);
        long hint = s.Length; // a regular file's size: a starting capacity, never trusted as the limit
        var buffer = new byte[(int)Math.Min(Math.Max(hint, 0), Math.Min(maxBytes, Array.MaxLength))];
        int n = 0;
        while (true)
        {
            if (n == buffer.Length)
            {
                // The file grew (or lied): one probe byte tells whether there is more; LimitedStream refuses past the limit.
                int b = s.ReadByte();
                if (b < 0) break;
                Array.Resize(ref buffer, (int)Math.Min(Math.Max(16, (long)buffer.Length * 2), Math.Min(maxBytes, Array.MaxLength)));
                buffer[n++] = (byte)b;
                continue;
            }
            int read = s.Read(buffer, n, buffer.Length - n);
            if (read == 0) break;
            n += read;
        }
        if (n != buffer.Length) Array.Resize(ref buffer, n);
        return buffer;
    }

    /// <summary>Reads a whole regular file of at most <paramref name="maxBytes"/> bytes as UTF-8 text (a BOM is skipped).</summary>
    public static string ReadAllText(string path, long maxBytes, string what, string? limitName = null)
    {
        var bytes = ReadAllBytes(path, maxBytes, what, limitName);
        var span = bytes.AsSpan();
        if (span.StartsWith(Encoding.UTF8.Preamble)) span = span[Encoding.UTF8.Preamble.Length..];
        return Encoding.UTF8.GetString(span);
    }

    /// <summary>
    /// Reads a text file line by line (streamed, never whole), at most <paramref name="maxBytes"/> bytes in all. A line
    /// longer than <paramref name="maxLineChars"/> characters is skipped without being held in memory and comes back as
    /// <see cref="InputLine.TooLong"/>; line numbers are 1-based.
    /// </summary>
    public static IEnumerable<InputLine> ReadLines(string path, long maxBytes, int maxLineChars, string what, string? limitName = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLineChars, 1);
        var stream = OpenRead(path, maxBytes, what, limitName); // opened here, so that a bad path fails at the call
        return Lines(stream, maxLineChars);
    }

    private static IEnumerable<InputLine> Lines(Stream stream, int maxLineChars)
    {
        using var reader = new StreamReader(stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
        var buffer = new char[1 << 16];
        var line = new StringBuilder();
        bool tooLong = false;
        int number = 1, count;
        while ((count = reader.Read(buffer, 0, buffer.Length)) > 0)
        {
            int start = 0;
            for (int i = 0; i < count; i++)
            {
                if (buffer[i] != '\n') continue;
                Append(buffer.AsSpan(start, i - start));
                yield return Finish();
                start = i + 1;
            }
            Append(buffer.AsSpan(start, count - start));
        }
        if (line.Length > 0 || tooLong) yield return Finish();

        void Append(ReadOnlySpan<char> part)
        {
            if (tooLong) return;
            if (line.Length + part.Length > maxLineChars) { tooLong = true; line.Clear(); return; }
            line.Append(part);
        }

        InputLine Finish()
        {
            if (line.Length > 0 && line[^1] == '\r') line.Length--;
            var result = new InputLine(number++, tooLong ? null : line.ToString());
            line.Clear();
            tooLong = false;
            return result;
        }
    }

    private static InputFileException TooLarge(string path, string what, long maxBytes, string? limitName, string how)
        => new($"{what} '{path}' {how}, above the {maxBytes:N0}-byte limit{(limitName is null ? "" : $" ({limitName})")}.", path);

    private static FileStream OpenUnix(string path, string what)
    {
        int fd;
        try
        {
            // O_NONBLOCK: opening a FIFO must not wait for a writer. It changes nothing for regular files.
            fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException)
        {
            // No native helper for this platform: the size limit while reading still holds, the file type is not checked.
            return OpenWindows(path, what);
        }
        if (fd < 0)
        {
            var errno = Stdlib.GetLastError();
            string why = errno switch
            {
                Errno.ENOENT => "does not exist",
                Errno.EACCES or Errno.EPERM => "cannot be read (permission denied)",
                Errno.ENOTDIR => "does not exist (a part of its path is not a folder)",
                Errno.ELOOP => "is a loop of symbolic links",
                Errno.ENAMETOOLONG => "has a name that is too long",
                Errno.ENXIO => "is a socket or a device without a reader, not a regular file",
                _ => $"cannot be opened ({errno})",
            };
            throw new InputFileException($"{what} '{path}' {why}.", path);
        }
        var handle = new SafeFileHandle((IntPtr)fd, ownsHandle: true);
        try
        {
            if (Syscall.fstat(fd, out var st) != 0)
                throw new InputFileException($"{what} '{path}' cannot be examined ({Stdlib.GetLastError()}).", path);
            var type = st.st_mode & FilePermissions.S_IFMT;
            if (type != FilePermissions.S_IFREG)
            {
                string kind = type switch
                {
                    FilePermissions.S_IFDIR => "a directory",
                    FilePermissions.S_IFIFO => "a FIFO (named pipe)",
                    FilePermissions.S_IFCHR => "a character device",
                    FilePermissions.S_IFBLK => "a block device",
                    FilePermissions.S_IFSOCK => "a socket",
                    _ => "not a regular file",
                };
                throw new InputFileException($"{what} '{path}' is {kind}, not a regular file.", path);
            }
            return new FileStream(handle, FileAccess.Read, bufferSize: 0);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static FileStream OpenWindows(string path, string what)
    {
        if (path.StartsWith(@"\\.\", StringComparison.Ordinal) || path.StartsWith(@"\\?\GLOBALROOT", StringComparison.OrdinalIgnoreCase))
            throw new InputFileException($"{what} '{path}' is a device path, not a regular file.", path);
        if (Directory.Exists(path)) throw new InputFileException($"{what} '{path}' is a directory, not a regular file.", path);
        try
        {
            var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
            if (!fs.CanSeek)
            {
                fs.Dispose();
                throw new InputFileException($"{what} '{path}' is a pipe or a device, not a regular file.", path);
            }
            return fs;
        }
        catch (FileNotFoundException e) { throw new InputFileException($"{what} '{path}' does not exist.", path, e); }
        catch (DirectoryNotFoundException e) { throw new InputFileException($"{what} '{path}' does not exist.", path, e); }
        catch (UnauthorizedAccessException e) { throw new InputFileException($"{what} '{path}' cannot be read: {e.Message}", path, e); }
    }

    /// <summary>A read-only view of a file that refuses to read past a byte limit.</summary>
    private sealed class LimitedStream(FileStream inner, long limit, string path, string what, string? limitName) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => false;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => Seek(value, SeekOrigin.Begin); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            long pos = inner.Position;
            if (pos >= limit)
            {
                // At the limit: the file may end exactly here; one more byte means it is too large.
                Span<byte> probe = stackalloc byte[1];
                if (buffer.Length == 0 || inner.Read(probe) == 0) return 0;
                throw new InputFileException($"{what} '{path}' grew while it was read, past the {limit:N0}-byte limit{(limitName is null ? "" : $" ({limitName})")}.", path);
            }
            return inner.Read(buffer[..(int)Math.Min(buffer.Length, limit - pos)]);
        }

        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);
        public override void Flush() { }
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>One line of a text file read by <see cref="InputFile.ReadLines"/>: its 1-based number and text, or null text when it was too long.</summary>
public readonly record struct InputLine(int Number, string? Text)
{
    /// <summary>The line was longer than the limit and was skipped.</summary>
    public bool TooLong => Text is null;
}
