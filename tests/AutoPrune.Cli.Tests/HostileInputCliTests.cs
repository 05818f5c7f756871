using System.Text.Json;
using AutoPrune.Cli;
using AutoPrune.Loading;
using Mono.Unix.Native;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary>These tests replace Console.Error; nothing else may run meanwhile.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleCapture { public const string Name = "Console capture (serial)"; }

/// <summary>
/// Issue 16, rows 1-3, 13-15 and 17 through the command line: every command given a bad output path, a bad data path
/// or absurd numbers ends in exactly one line on stderr and exit code 1, without loading gigabytes or hanging.
/// </summary>
[Collection(ConsoleCapture.Name)]
public sealed class HostileInputCliTests : IDisposable
{
    private readonly string _dir = Repo.TempDir();
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private string Fifo(string name)
    {
        var path = Path.Combine(_dir, name);
        Assert.Equal(0, Syscall.mkfifo(path, FilePermissions.DEFFILEMODE));
        return path;
    }

    private static async Task<(int Rc, string Err)> Run(params string[] args)
    {
        var err = new StringWriter();
        var old = Console.Error;
        Console.SetError(err);
        try
        {
            var run = Repo.Cli().Parse(args).InvokeAsync();
            Assert.Same(run, await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(60)))); // never hangs
            return (await run, err.ToString());
        }
        finally { Console.SetError(old); }
    }

    /// <summary>Exit code 1 and one line, "error: ...", with the expected words and no stack trace.</summary>
    private static async Task FailsCleanly(string expected, params string[] args)
    {
        var (rc, err) = await Run(args);
        var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(rc == 1, $"exit code {rc} for {string.Join(' ', args)}; stderr: {err}");
        Assert.True(lines.Length == 1 && lines[0].StartsWith("error: ", StringComparison.Ordinal), $"stderr is not one error line: {err}");
        Assert.Contains(expected, lines[0]);
    }

    private string Dev => Path.Combine(Repo.DevDir, "dev.jsonl");
    private string Img => Repo.Image(0);

    [Fact]
    public async Task Ask_with_files_that_are_not_files_and_absurd_numbers()
    {
        await FailsCleanly("'/dev/zero' is a character device, not a regular file", "ask", "-i", "/dev/zero", "-q", "What?", "-m", Repo.Model, "--device", "cpu");
        await FailsCleanly("is a FIFO (named pipe), not a regular file", "ask", "-i", Fifo("img.png"), "-q", "What?", "-m", Repo.Model, "--device", "cpu");
        await FailsCleanly("MaxNewTokens must be between 1 and 1024 (got 2000000000)", "ask", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "--max-tokens", "2000000000");
        await FailsCleanly("Temperature must be a number in [0, 100]", "ask", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "--temperature", "1e30");
        await FailsCleanly("budget", "ask", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "--budget", "1e300");
        await FailsCleanly("PruningOptions.Budget = NaN", "ask", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "--method", "none", "--budget", "NaN", "--json");
    }

    [Fact]
    public async Task Ask_with_a_broken_checkpoint_is_one_line_even_with_json()
    {
        // Row 9: NaN weights used to give an empty answer with exit code 0, and --json failed on an infinite logit.
        var model = Path.Combine(_dir, "nan-model");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(Repo.Model)) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        var shard = Path.Combine(model, "model-00002-of-00002.safetensors");
        PoisonNorm(shard);
        await FailsCleanly("non-finite logits", "ask", "-i", Img, "-q", "How many?", "-m", model, "--device", "cpu", "--json");
    }

    /// <summary>Writes fp16 NaN over the final norm's weights, wherever they are in the shard.</summary>
    private static void PoisonNorm(string shard)
    {
        var bytes = File.ReadAllBytes(shard);
        int headerLen = (int)BitConverter.ToUInt64(bytes, 0);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, headerLen));
        if (!doc.RootElement.TryGetProperty("language_model.model.norm.weight", out var entry))
            entry = doc.RootElement.EnumerateObject().First(p => p.Name.EndsWith("model.norm.weight", StringComparison.Ordinal)).Value;
        var off = entry.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        for (long o = 8 + headerLen + off[0]; o < 8 + headerLen + off[1]; o += 2) { bytes[o] = 0x00; bytes[o + 1] = 0x7E; }
        File.WriteAllBytes(shard, bytes);
    }

    [Fact]
    public async Task Explain_with_a_directory_as_output_and_bad_images()
    {
        await FailsCleanly($"--out '{_dir}' is a directory", "explain", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "-o", _dir);
        await FailsCleanly("'/dev/zero' is a character device", "explain", "-i", "/dev/zero", "-q", "What?", "-m", Repo.Model, "--device", "cpu", "-o", Path.Combine(_dir, "x.png"));
        await FailsCleanly("Layer 99 is outside 0..7", "explain", "-i", Img, "-q", "What?", "-m", Repo.Model, "--device", "cpu", "--layers", "99", "-o", Path.Combine(_dir, "y.png"));
    }

    [Fact]
    public async Task Eval_with_bad_data_paths_bad_output_paths_and_absurd_numbers()
    {
        var outDir = Path.Combine(_dir, "out");
        await FailsCleanly("Data file '/dev/zero' is a character device", "eval", "--data", "/dev/zero", "-m", Repo.Model, "--out", outDir);
        await FailsCleanly("is a FIFO (named pipe)", "eval", "--data", Fifo("rows.jsonl"), "-m", Repo.Model, "--out", outDir);
        await FailsCleanly("is a directory, not a regular file", "eval", "--data", _dir, "-m", Repo.Model, "--out", outDir);
        await FailsCleanly("does not exist", "eval", "--data", Path.Combine(_dir, "none.jsonl"), "-m", Repo.Model, "--out", outDir);
        await FailsCleanly($"--out '{Img}' is a file", "eval", "--data", Dev, "-m", Repo.Model, "--out", Img);
        await FailsCleanly("--parallel must be between 1 and 256 (got 2,000,000,000)", "eval", "--data", Dev, "-m", Repo.Model, "--out", outDir, "--parallel", "2000000000");
        await FailsCleanly("--max-tokens must be between 1 and 1,024", "eval", "--data", Dev, "-m", Repo.Model, "--out", outDir, "--max-tokens", "-3");
        await FailsCleanly("Budget '1e999' in --budgets is not a positive number", "eval", "--data", Dev, "-m", Repo.Model, "--out", outDir, "--budgets", "1e999");
    }

    [Fact]
    public async Task Bench_with_absurd_repeats_is_refused_before_anything_is_sized()
    {
        long before = GC.GetTotalAllocatedBytes(precise: true);
        await FailsCleanly("--repeats must be between 1 and 10,000 (got 2,000,000,000)", "bench", "-i", Img, "-m", Repo.Model, "--device", "cpu", "-r", "2000000000");
        Assert.True(GC.GetTotalAllocatedBytes(precise: true) - before < (64L << 20), "bench -r 2000000000 allocated more than 64 MB before refusing");
        await FailsCleanly("--warmup must be between 0 and 10,000", "bench", "-i", Img, "-m", Repo.Model, "--device", "cpu", "-w", "-1");
        await FailsCleanly("--decode-tokens must be between 1 and 1,048,576", "bench", "--random-weights", "tiny-test", "--device", "cpu", "--decode-tokens", "2000000000");
        await FailsCleanly($"--out '{_dir}' is a directory", "bench", "-i", Img, "-m", Repo.Model, "--device", "cpu", "-o", _dir);
        await FailsCleanly("'/dev/zero' is a character device", "bench", "-i", "/dev/zero", "-m", Repo.Model, "--device", "cpu", "-r", "1", "-w", "0", "--methods", "none");
    }

    [Fact]
    public async Task Verify_with_bad_data_paths_bad_output_paths_and_absurd_numbers()
    {
        await FailsCleanly("Data file '/dev/zero' is a character device", "verify", "--data", "/dev/zero", "-m", Repo.Model, "--device", "ilgpu-cpu");
        await FailsCleanly("--tolerance must be a finite number", "verify", "--data", Dev, "-m", Repo.Model, "--device", "ilgpu-cpu", "--tolerance", "NaN");
        await FailsCleanly($"--out '{_dir}' is a directory", "verify", "--data", Dev, "-m", Repo.Model, "--device", "ilgpu-cpu", "-o", _dir);
        await FailsCleanly("--max-tokens must be between 1 and 1,024", "verify", "--data", Dev, "-m", Repo.Model, "--device", "ilgpu-cpu", "--max-tokens", "2000000000");
    }

    /// <summary>Rows 2, 3 and 17: eval rows whose image is a device, a FIFO or a path outside the images root are bad rows.</summary>
    [Fact]
    public async Task Eval_rows_with_hostile_image_paths_are_skipped_and_the_good_ones_answered()
    {
        var root = Path.Combine(_dir, "root");
        Directory.CreateDirectory(Path.Combine(root, "images"));
        File.Copy(Img, Path.Combine(root, "images", "a.png"));
        var fifo = Fifo("fifo.png");
        var data = Path.Combine(_dir, "rows.jsonl");
        File.WriteAllLines(data,
        [
            """{"id": 1, "image": "images/a.png", "question": "Is there a green circle?", "answer": "no"}""",
            """{"id": 2, "image": "/dev/zero", "question": "q", "answer": "a"}""",
            $$"""{"id": 3, "image": "{{fifo}}", "question": "q", "answer": "a"}""",
            """{"id": 4, "image": "../../../../etc/passwd", "question": "q", "answer": "a"}""",
        ]);
        var outDir = Path.Combine(_dir, "eval-out");
        var (rc, err) = await Run("eval", "--data", data, "--images-root", root, "--allow-absolute-image-paths", "-m", Repo.Model, "--device", "cpu",
            "--methods", "none", "--max-tokens", "1", "--out", outDir);
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        Assert.Equal(1, doc.RootElement.GetProperty("rows_used").GetInt32());
        Assert.Equal([2, 3, 4], doc.RootElement.GetProperty("skipped_rows").EnumerateArray().Select(b => b.GetProperty("line").GetInt32()));
        var md = File.ReadAllText(Path.Combine(outDir, "results.md"));
        Assert.Contains("line 2: could not be answered: Image file '/dev/zero' is a character device", md);
        Assert.Contains($"line 3: could not be answered: Image file '{fifo}' is a FIFO", md);
        Assert.Contains("line 4: image path '../../../../etc/passwd' leaves the images root", md);
    }
}

/// <summary>Rows 15 and 17 in the data reader: caps on lines and rows, and paths that stay inside the images root.</summary>
public sealed class EvalDataLimitTests : IDisposable
{
    private readonly string _dir = Repo.TempDir();
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    [Fact]
    public void Image_paths_outside_the_root_are_refused_without_saying_whether_they_exist()
    {
        var data = Path.Combine(_dir, "rows.jsonl");
        File.WriteAllLines(data,
        [
            """{"id": 1, "image": "../../../../etc/passwd", "question": "q", "answer": "a"}""",
            """{"id": 2, "image": "../../../../etc/no-such-file-here", "question": "q", "answer": "a"}""",
            """{"id": 3, "image": "/etc/hostname", "question": "q", "answer": "a"}""",
            """{"id": 4, "image": "/etc/no-such-file-here", "question": "q", "answer": "a"}""",
            """{"id": 5, "image": "images/0000.png", "question": "q", "answer": "a"}""",
            """{"id": 6, "image": "images/../images/0001.png", "question": "q", "answer": "a"}""",
            """{"id": 7, "image": "images/missing.png", "question": "q", "answer": "a"}""",
        ]);
        var (rows, bad) = EvalData.Read(data, Repo.DevDir);
        Assert.Equal([5, 6], rows.Select(r => r.Line));
        Assert.Equal(
        [
            "image path '../../../../etc/passwd' leaves the images root",
            "image path '../../../../etc/no-such-file-here' leaves the images root",
            "image path '/etc/hostname' is absolute; image paths are relative to the images root (--allow-absolute-image-paths allows absolute ones)",
            "image path '/etc/no-such-file-here' is absolute; image paths are relative to the images root (--allow-absolute-image-paths allows absolute ones)",
            "image file 'images/missing.png' not found under the images root",
        ], bad.Select(b => b.Reason));
        // With the flag, absolute paths are looked up.
        var (allowed, badAllowed) = EvalData.Read(data, Repo.DevDir, allowAbsolutePaths: true);
        Assert.Equal([3, 5, 6], allowed.Select(r => r.Line));
        Assert.Contains(badAllowed, b => b.Line == 4 && b.Reason == "image file '/etc/no-such-file-here' not found");
    }

    [Fact]
    public void A_300_MB_single_line_is_a_bad_row_read_in_bounded_memory()
    {
        var data = Path.Combine(_dir, "long.jsonl");
        var good = $$"""{"id": 1, "image": "images/0000.png", "question": "q", "answer": "a"}""" + "\n";
        using (var fs = new FileStream(data, FileMode.Create))
        {
            fs.Write(System.Text.Encoding.UTF8.GetBytes(good));
            fs.SetLength(good.Length + 300_000_000L); // 300 MB of zero bytes on one line (sparse: no disk used)
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        var (rows, bad) = EvalData.Read(data, Repo.DevDir);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Single(rows);
        Assert.Equal("line is longer than 1,048,576 characters", Assert.Single(bad).Reason);
        Assert.True(allocated < (16L << 20), $"reading a 300 MB line allocated {allocated:N0} bytes");
    }

    [Fact]
    public void More_rows_than_the_cap_are_refused_and_a_file_over_the_byte_limit_before_reading()
    {
        var data = Path.Combine(_dir, "many.jsonl");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("{}\n", EvalData.MaxRows + 1)));
        var e = Assert.Throws<ArgumentException>(() => EvalData.Read(data, Repo.DevDir));
        Assert.Contains("has more than 1,000,000 rows", e.Message);

        var huge = Path.Combine(_dir, "huge.jsonl");
        using (var fs = new FileStream(huge, FileMode.Create)) fs.SetLength(EvalData.MaxDataBytes + 1);
        var big = Assert.Throws<InputFileException>(() => EvalData.Read(huge, Repo.DevDir));
        Assert.Contains("above the 1,073,741,824-byte limit", big.Message);
    }
}
