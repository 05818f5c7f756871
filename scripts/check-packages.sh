#!/usr/bin/env bash
# Packs the libraries and the CLI tool into a local feed, checks that only those are packed and that each has its
# metadata, then builds and runs tests/PackageConsumer from the packages alone (a copy outside the repository, so no
# project reference or repository build setting can help it), and installs the tool and asks it a question.
# Third-party packages come through the machine's own NuGet configuration. Usage: scripts/check-packages.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-$(mktemp -d)}
feed="$out/feed"
rm -rf "$feed" && mkdir -p "$feed"
# A version of its own, so the restore can only find the packages packed here (never a copy cached by an earlier run).
version="0.1.0-ci.$(date -u +%Y%m%d%H%M%S).$$"

echo "== dotnet pack ($version)"
dotnet pack AutoPrune.sln -c Release -o "$feed" -p:Version="$version" -nologo -v:q >"$out/pack.log" 2>&1 || { cat "$out/pack.log"; exit 1; }
expected="AutoPrune.AspNetCore AutoPrune.Cli AutoPrune.Extensions.AI AutoPrune.MLNet AutoPrune.Runtime AutoPrune.SemanticKernel"
packed=$(cd "$feed" && ls *.nupkg | sed -E "s/\.$version\.nupkg$//" | sort | xargs)
if [ "$packed" != "$expected" ]; then echo "dotnet pack gave: $packed; expected exactly: $expected" >&2; exit 1; fi
for id in $expected; do
  nuspec=$(unzip -p "$feed/$id.$version.nupkg" "$id.nuspec")
  for field in "<description>" "<license type=\"expression\">" "<repository " "<tags>" "<readme>README.md</readme>" "<projectUrl>"; do
    grep -qF "$field" <<<"$nuspec" || { echo "$id: the nuspec has no $field" >&2; exit 1; }
  done
  files=$(unzip -Z1 "$feed/$id.$version.nupkg")
  grep -qx "README.md" <<<"$files" || { echo "$id: no README.md in the package" >&2; exit 1; }
  if [ "$id" != AutoPrune.Cli ]; then
    grep -qx "lib/net10.0/$id.xml" <<<"$files" || { echo "$id: no XML documentation" >&2; exit 1; }
  fi
done
grep -q '<packageType name="DotnetTool"' <<<"$(unzip -p "$feed/AutoPrune.Cli.$version.nupkg" AutoPrune.Cli.nuspec)" \
  || { echo "AutoPrune.Cli is not a .NET tool package" >&2; exit 1; }
echo "packed: $packed"

echo "== consumer app from the packages"
app="$out/consumer"
rm -rf "$app" && mkdir -p "$app"
cp tests/PackageConsumer/PackageConsumer.csproj tests/PackageConsumer/Program.cs "$app/"
cat >"$app/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="autoprune-local" value="$feed" />
  </packageSources>
</configuration>
XML
(cd "$app" && dotnet build -c Release -p:AutoPruneVersion="$version" -nologo -v:q >"$out/consumer-build.log" 2>&1) \
  || { cat "$out/consumer-build.log"; exit 1; }
if grep -q "ProjectReference" "$app/PackageConsumer.csproj"; then echo "the consumer must not reference projects" >&2; exit 1; fi
dotnet "$app/bin/Release/net10.0/PackageConsumer.dll" "$root/samples/models/shapes-llava-tiny" "$root/tests/data/shapes-vqa-dev/images/0002.png"

echo "== dotnet tool install AutoPrune.Cli"
tools="$out/tools"
rm -rf "$tools"
dotnet tool install AutoPrune.Cli --version "$version" --tool-path "$tools" --add-source "$feed" >/dev/null
(cd "$out" && "$tools/autoprune" ask -i "$root/tests/data/shapes-vqa-dev/images/0002.png" -q "How many blue objects are there?" --device cpu >"$out/tool.out" 2>"$out/tool.err") \
  || { cat "$out/tool.err"; exit 1; }
answer=$(cat "$out/tool.out")
[ "$answer" = "0" ] || { echo "autoprune (the installed tool, its bundled model) answered '$answer', expected 0" >&2; cat "$out/tool.err"; exit 1; }
echo "autoprune tool: answered $answer with its bundled model"
echo "packages: ok"
