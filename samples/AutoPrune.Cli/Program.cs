using System.CommandLine;
using AutoPrune.Cli;

var root = new RootCommand("AutoPrune.NET: ask a LLaVA-family vision-language model about images, locally, with adaptive visual-token pruning.");
root.Subcommands.Add(AskCommand.Create());
root.Subcommands.Add(ExplainCommand.Create());
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(VerifyCommand.Create());
root.Subcommands.Add(CalibrateCommand.Create());
root.Subcommands.Add(RecommendCommand.Create());
root.Subcommands.Add(ServeCommand.Create());
// serve: ASP.NET Core's host handles SIGINT/SIGTERM itself, with its own (configured) time to finish in-flight requests.
var invocation = new InvocationConfiguration();
if (args.Length > 0 && args[0] == "serve") invocation.ProcessTerminationTimeout = null;
return await root.Parse(args).InvokeAsync(invocation);
