using System.Net;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using YamlDotNet.RepresentationModel;

namespace AutoPrune.AspNetCore.Tests;

/// <summary>
/// There is no container runtime here, so the deployment files are checked as text against the server: ports, probe
/// paths (which must answer on the real server), GPU requests, the shutdown budget and the settings they pass.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class DeploymentTests(InProcessServer server) : IClassFixture<InProcessServer>
{
    private static string Deploy(string path) => Path.Combine(TestData.RepoRoot, "deploy", path);

    private static YamlMappingNode Map(YamlNode node, string key) => (YamlMappingNode)node[key];
    private static string Scalar(YamlNode node, string key) => ((YamlScalarNode)node[key]).Value!;

    [Fact]
    public async Task Kubernetes_manifest_ports_probes_gpu_requests_and_settings_match_the_server()
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(Deploy("kubernetes/autoprune.yaml"))) yaml.Load(reader);
        var docs = yaml.Documents.Select(d => (YamlMappingNode)d.RootNode).ToList();
        var deployment = docs.Single(d => Scalar(d, "kind") == "Deployment");
        var service = docs.Single(d => Scalar(d, "kind") == "Service");

        var pod = Map(Map(deployment, "spec"), "template");
        var labels = Map(Map(pod, "metadata"), "labels");
        var container = (YamlMappingNode)((YamlSequenceNode)Map(pod, "spec")["containers"]).Single();
        var port = (YamlMappingNode)((YamlSequenceNode)container["ports"]).Single();
        int containerPort = int.Parse(Scalar(port, "containerPort"));
        string portName = Scalar(port, "name");

        var env = ((YamlSequenceNode)container["env"]).Cast<YamlMappingNode>().ToDictionary(e => Scalar(e, "name"), e => Scalar(e, "value"));
        Assert.Equal($"http://0.0.0.0:{containerPort}", env["ASPNETCORE_URLS"]);
        Assert.Contains("AutoPrune__Server__ApiKeyFile", env.Keys); // listening on every interface needs a key

        // The settings, read as ASP.NET Core reads environment variables, bind to valid server options.
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(env.Select(kv => KeyValuePair.Create(kv.Key.Replace("__", ":"), (string?)kv.Value))).Build();
        var options = configuration.GetSection(AutoPruneServerOptions.SectionName).Get<AutoPruneServerOptions>()!;
        Assert.All(options.Validate(), p => Assert.Contains("API key file", p)); // the key file exists only in the pod
        Assert.True(options.QueueLimit > 0 && options.MaxConcurrentRequests >= 1);
        Assert.True(int.Parse(Scalar(Map(pod, "spec"), "terminationGracePeriodSeconds")) > options.ShutdownTimeoutSeconds,
            "the pod must get longer to stop than the server takes to finish in-flight requests");

        // Probes: named port = the container port; paths that the server answers (/health at once, /ready once warmed).
        using var client = await server.ReadyClientAsync();
        foreach (var (probe, path) in new[] { ("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health") })
        {
            var get = Map(Map(container, probe), "httpGet");
            Assert.Equal(path, Scalar(get, "path"));
            Assert.Equal(portName, Scalar(get, "port"));
            using var response = await client.GetAsync(path);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }

        foreach (var section in new[] { "requests", "limits" })
            Assert.Equal("1", Scalar(Map(Map(container, "resources"), section), "nvidia.com/gpu"));

        // The Service selects the pods and sends to their named port.
        var serviceSpec = Map(service, "spec");
        foreach (var (key, value) in Map(serviceSpec, "selector").Children)
            Assert.Equal(((YamlScalarNode)value).Value, Scalar(labels, ((YamlScalarNode)key).Value!));
        var servicePort = (YamlMappingNode)((YamlSequenceNode)serviceSpec["ports"]).Single();
        Assert.Equal(portName, Scalar(servicePort, "targetPort"));

        // The images listen on the same port, run `serve`, and are multi-stage builds of the CLI.
        foreach (var file in new[] { "Dockerfile", "Dockerfile.cuda" })
        {
            var text = File.ReadAllText(Deploy(file));
            Assert.True(Regex.Matches(text, @"^FROM ", RegexOptions.Multiline).Count >= 2, $"{file}: not a multi-stage build");
            Assert.Matches(new Regex($@"^EXPOSE {containerPort}$", RegexOptions.Multiline), text);
            Assert.Contains($"ASPNETCORE_URLS=http://0.0.0.0:{containerPort}", text);
            Assert.Contains("AutoPrune__Server__ApiKeyFile=" + env["AutoPrune__Server__ApiKeyFile"], text);
            Assert.Matches(new Regex(@"^ENTRYPOINT \[.*""serve""\]$", RegexOptions.Multiline), text);
            Assert.Contains("samples/AutoPrune.Cli/AutoPrune.Cli.csproj", text);
        }
        var cuda = File.ReadAllText(Deploy("Dockerfile.cuda"));
        Assert.Matches(new Regex(@"^FROM nvidia/cuda:12[^\s]*-runtime-", RegexOptions.Multiline), cuda); // the CUDA runtime image carries cuBLAS
        Assert.Contains("AutoPrune__Device=cuda", cuda);
    }
}
