namespace AutoPrune.AspNetCore.Tests;

/// <summary>Remote-image allow-list entries: a host means its scheme's default port only; <c>host:port</c> that port.</summary>
public sealed class AllowListTests
{
    [Fact]
    public void An_entry_names_a_host_and_optionally_a_port_and_bad_entries_are_refused_at_validation()
    {
        Assert.True(RemoteImageOptions.Allows("images.example.com", new Uri("https://images.example.com/a.png")));
        Assert.True(RemoteImageOptions.Allows("images.example.com", new Uri("http://IMAGES.example.com:80/a.png")));
        Assert.False(RemoteImageOptions.Allows("images.example.com", new Uri("https://images.example.com:8443/a.png")));
        Assert.True(RemoteImageOptions.Allows("images.example.com:8443", new Uri("https://images.example.com:8443/a.png")));
        Assert.False(RemoteImageOptions.Allows("images.example.com:8443", new Uri("https://images.example.com/a.png")));
        Assert.True(RemoteImageOptions.Allows("[::1]:8080", new Uri("http://[::1]:8080/a.png")));
        Assert.True(RemoteImageOptions.Allows("::1", new Uri("http://[::1]/a.png")));
        Assert.False(RemoteImageOptions.Allows("::1", new Uri("http://[::1]:8080/a.png")));
        foreach (var bad in new[] { "host:0", "host:65536", "host:http", "[::1", "a b", "" })
            Assert.Null(RemoteImageOptions.Parse(bad));
        var options = new AutoPruneServerOptions { RemoteImages = { AllowedHosts = ["images.example.com:99999"] } };
        Assert.Contains(options.Validate(), p => p.Contains("RemoteImages:AllowedHosts") && p.Contains("images.example.com:99999"));
    }
}
