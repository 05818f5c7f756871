using Mono.Unix.Native;
using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary>
/// <c>serve</c> refuses what cannot be served safely, passes configuration through to ASP.NET Core, and says at start
/// what it serves with. (It replaces Console.Out and Console.Error, so it runs with the other console tests, serially.)
/// </summary>
[Collection(ConsoleCapture.Name)]
public sealed class ServeCommandTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60); // only so that a hang fails instead of blocking the suite
    private readonly string _dir = Repo.TempDir();

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    /// <summary>Runs serve until it exits (a refusal) or <paramref name="until"/> holds for its output; then stops it.</summary>
    private static async Task<(int Code, string Out, string Error)> Serve(Func<string, bool>? until, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var (previousOut, previousError) = (Console.Out, Console.Error);
        Console.SetOut(TextWriter.Synchronized(output));
        Console.SetError(TextWriter.Synchronized(error));
        using var stop = new CancellationTokenSource();
        try
        {
            // On a thread of its own: a start that blocks (reading a FIFO, say) must fail the test, not hang it.
            var run = Task.Run(() => Repo.Cli().Parse(["serve", "--model", Repo.Model, "--device", "cpu", .. args]).InvokeAsync(null, stop.Token));
            var deadline = Task.Delay(Patience);
            while (!run.IsCompleted && !deadline.IsCompleted)
            {
                if (until is not null && until(output.ToString())) stop.Cancel();
                await Task.WhenAny(run, Task.Delay(50));
            }
            Assert.True(run.IsCompleted, "serve neither refused nor started within " + Patience + ":\n" + output + error);
            return (await run, output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(previousOut);
            Console.SetError(previousError);
        }
    }

    [Fact]
    public async Task Without_an_API_key_serve_refuses_to_listen_beyond_loopback()
    {
        var (code, _, error) = await Serve(null, "--urls", "http://0.0.0.0:0", "--AutoPrune:Server:Warmup=false");
        Assert.Equal(1, code);
        Assert.Contains("No API key is configured", error);
        Assert.Contains("--api-key-file", error);
    }

    [Fact]
    public async Task Settings_pass_through_to_configuration_and_are_validated_at_start()
    {
        var (code, _, error) = await Serve(null, "--urls", "http://127.0.0.1:0", "--AutoPrune:Server:QueueLimit=-1", "--AutoPrune:Server:Warmup=false");
        Assert.Equal(1, code);
        Assert.Contains("'AutoPrune:Server:QueueLimit' must be 0 or more (got -1)", error);

        var (missing, _, keyError) = await Serve(null, "--urls", "http://127.0.0.1:0", "--api-key-file", Path.Combine(_dir, "no-such-file"));
        Assert.Equal(1, missing);
        Assert.Contains("API key file", keyError);
    }

    [Fact]
    public async Task A_bad_model_setting_is_one_clean_error_line()
    {
        foreach (var (args, words) in new[]
                 {
                     (new[] { "--method", "magic" }, "Unknown pruning method 'magic' in 'AutoPrune:Method'"),
                     (["--method", "sparsevlm", "--budget", "3"], "The smallest feasible budget is 148."),
                 })
        {
            var (code, _, error) = await Serve(null, [.. args, "--urls", "http://127.0.0.1:0", "--AutoPrune:Server:Warmup=false"]);
            Assert.Equal(1, code);
            var lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.StartsWith("error: ", lines[0]);
            Assert.Contains(words, lines[0]);
            // Once, without the exception's type, its " (Parameter 'x')" tail, or a name quoted twice.
            Assert.Equal(1, CountOf(lines[0], words));
            foreach (var leftover in new[] { "OptionsValidationException", "(Parameter", "''" })
                Assert.DoesNotContain(leftover, lines[0]);
        }
    }

    private static int CountOf(string text, string words)
    {
        int n = 0;
        for (int i = text.IndexOf(words, StringComparison.Ordinal); i >= 0; i = text.IndexOf(words, i + words.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    [Fact]
    public async Task The_API_key_file_is_refused_when_it_is_a_fifo_or_a_device_without_blocking_or_reading_it()
    {
        string fifo = Path.Combine(_dir, "keys.fifo");
        Assert.Equal(0, Syscall.mkfifo(fifo, FilePermissions.DEFFILEMODE));
        foreach (var (file, words) in new[] { (fifo, "is a FIFO"), ("/dev/zero", "not a regular file") })
        {
            var (code, _, error) = await Serve(null, "--urls", "http://127.0.0.1:0", "--api-key-file", file, "--AutoPrune:Server:Warmup=false");
            Assert.Equal(1, code);
            Assert.Contains(file, error);
            Assert.Contains(words, error);
        }
    }

    [Fact]
    public async Task At_start_serve_prints_the_model_device_default_pruning_limits_and_whether_a_key_is_required_in_one_block()
    {
        string keys = Path.Combine(_dir, "keys.txt");
        File.WriteAllText(keys, "# one key\nkey-0123456789\n");
        var (code, output, error) = await Serve(o => o.Contains("  listening: "),
            "--urls", "http://127.0.0.1:0", "--method", "fastv", "--budget", "0.5", "--api-key-file", keys,
            "--AutoPrune:Server:QueueLimit=5", "--AutoPrune:Server:MaxRequestBodyBytes=8388608", "--AutoPrune:Server:Warmup=false");
        Assert.True(code == 0, error);
        var lines = output.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        int at = lines.FindIndex(l => l.StartsWith("autoprune serve: ", StringComparison.Ordinal));
        Assert.True(at >= 0, output);
        // One block: the header, then one line per aspect, in this order.
        string[] expected = ["model:", "device:", "pruning:", "limits:", "queue:", "timeouts:", "API key:", "listening:"];
        Assert.True(lines.Count > at + expected.Length, output);
        for (int i = 0; i < expected.Length; i++)
            Assert.StartsWith("  " + expected[i], lines[at + 1 + i]);
        string Line(string key) => lines.Skip(at + 1).First(l => l.TrimStart().StartsWith(key, StringComparison.Ordinal));
        Assert.Contains($"shapes-llava-tiny ({Repo.Model})", Line("model:"));
        Assert.Contains("cpu", Line("device:"));
        Assert.Contains("fastv, budget 0.5 of the visual tokens", Line("pruning:"));
        Assert.Contains("requests that name no method", Line("pruning:"));
        Assert.Contains("body 8 MiB (32 MiB of bodies at once)", Line("limits:"));
        Assert.Contains("4 image(s) of 16 MiB", Line("limits:"));
        Assert.Contains("2 running + 5 waiting", Line("queue:"));
        Assert.Contains("request 300 s, body 60 s, shutdown 30 s", Line("timeouts:"));
        Assert.Contains("required (1 key(s)", Line("API key:"));
        Assert.Matches(@"listening: http://127\.0\.0\.1:\d+", Line("listening:"));

        // Without a key, and with the default pruning as configured (whatever it is, it is what requests get).
        var (plain, plainOut, plainError) = await Serve(o => o.Contains("  listening: "), "--urls", "http://127.0.0.1:0", "--AutoPrune:Server:Warmup=false");
        Assert.True(plain == 0, plainError);
        Assert.Contains("API key:   not required (no key configured): loopback clients only", plainOut);
        Assert.Contains("body 32 MiB (128 MiB of bodies at once)", plainOut);
    }
}
