// Runs the README's C# blocks from the repository root: dotnet run --project samples/ReadmeSnippets -- all
using ReadmeSnippets;

var which = args.Length > 0 ? args[0] : "all";
bool all = which == "all";
if (all || which == "library") await Library.RunAsync();
if (all || which == "chat") await ChatClient.RunAsync();
if (all || which == "sk") await SemanticKernel.RunAsync();
if (all || which == "di") await DependencyInjection.RunAsync(["--AutoPrune:ModelDirectory=samples/models/shapes-llava-tiny", "--AutoPrune:Method=autoprune"]);
if (all || which == "telemetry") Telemetry.Run([]);
if (all || which == "mlnet") MLNet.Run();
if (all || which == "structured") { await StructuredOutput.RunAsync(); await StructuredOutputSkAndServer.RunAsync(); }
// Not in "all": the server runs until stopped, and the OpenAI SDK example needs it running (autoprune serve).
if (which == "server") await Server.RunAsync(["--AutoPrune:ModelDirectory=samples/models/shapes-llava-tiny"]);
if (which == "openai") await OpenAISdk.RunAsync();
return 0;
