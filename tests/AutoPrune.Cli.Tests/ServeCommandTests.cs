using Xunit;

namespace AutoPrune.Cli.Tests;

/// <summary><c>serve</c> refuses what cannot be served safely, and passes configuration through to ASP.NET Core.</summary>
public class ServeCommandTests
{
    private static async Task<(int Code, string Error)> Serve(params string[] args)
    {
        var error = new StringWriter();
        var previous = Console.Error;
        Console.SetError(error);
        try
        {
            int code = await Repo.Cli().Parse(["serve", "--model", Repo.Model, "--device", "cpu", .. args]).InvokeAsync();
            return (code, error.ToString());
        }
        finally
        {
            Console.SetError(previous);
        }
    }

    [Fact]
    public async Task Without_an_API_key_serve_refuses_to_listen_beyond_loopback()
    {
        var (code, error) = await Serve("--urls", "http://0.0.0.0:0", "--AutoPrune:Server:Warmup=false");
        Assert.Equal(1, code);
        Assert.Contains("No API key is configured", error);
        Assert.Contains("--api-key-file", error);
    }

    [Fact]
    public async Task Settings_pass_through_to_configuration_and_are_validated_at_start()
    {
        var (code, error) = await Serve("--urls", "http://127.0.0.1:0", "--AutoPrune:Server:QueueLimit=-1", "--AutoPrune:Server:Warmup=false");
        Assert.Equal(1, code);
        Assert.Contains("'AutoPrune:Server:QueueLimit' must be 0 or more (got -1)", error);

        var (missing, keyError) = await Serve("--urls", "http://127.0.0.1:0", "--api-key-file", Path.Combine(Repo.TempDir(), "no-such-file"));
        Assert.Equal(1, missing);
        Assert.Contains("API key file", keyError);
    }
}
