#!/usr/bin/env bash
# Runs the README's install commands exactly as written (the bash block under "Until they are on a feed you use" in
# README.md, read from the README itself), as a new user would: `~` is a temporary home, so the feed
# (~/autoprune-packages), the NuGet source it adds and the global tool are new on every run, and the consumer's
# restores use a temporary NuGet cache (NUGET_PACKAGES), so no package cached by an earlier run can be used. Then it
# checks that only the expected packages were packed, each with its metadata, builds and runs tests/PackageConsumer (a
# copy outside the repository, its AutoPrune packages added by the README's `dotnet add package` lines) and asks the
# installed tool a question. Third-party packages come through the machine's own NuGet configuration. The pack's
# restore of the repository's own projects keeps the machine's cache (it restores no AutoPrune package, and a fresh
# cache would download every test dependency again). Usage: scripts/check-packages.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-$(mktemp -d)}
machine_cache=${NUGET_PACKAGES:-$HOME/.nuget/packages}
machine_config=$HOME/.nuget/NuGet/NuGet.Config
home="$out/home"
rm -rf "$home" && mkdir -p "$home/.nuget/NuGet"
[ -f "$machine_config" ] && cp "$machine_config" "$home/.nuget/NuGet/NuGet.Config"
export DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 DOTNET_CLI_TELEMETRY_OPTOUT=1

# The install block: the first ```bash block after the line that introduces it.
mapfile -t commands < <(awk '/Until they are on a feed you use/ {found=1} found && /^ *```bash/ {inblock=1; next} inblock && /^ *```/ {exit} inblock {sub(/^ +/, ""); print}' README.md)
[ "${#commands[@]}" -ge 3 ] || { echo "README.md: no install block under 'Until they are on a feed you use'" >&2; exit 1; }
printf '%s\n' "${commands[@]}" | grep -q '^dotnet pack ' || { echo "README.md: the install block has no 'dotnet pack' line" >&2; exit 1; }

app="$out/consumer"
rm -rf "$app" && mkdir -p "$app"
cp tests/PackageConsumer/PackageConsumer.csproj tests/PackageConsumer/Program.cs "$app/"
if grep -q "ProjectReference" "$app/PackageConsumer.csproj"; then echo "the consumer must not reference projects" >&2; exit 1; fi

# Runs one README line as written, with ~ the temporary home: the pack in the repository, "in your project" lines in
# the consumer app, the others in the home folder.
run() {
  local line=$1 dir=$home cache=$home/nuget-cache
  case "$line" in
    "dotnet pack "*) dir=$root; cache=$machine_cache ;;
    *"# in your project"*) dir=$app ;;
  esac
  echo "== $line"
  (cd "$dir" && HOME="$home" NUGET_PACKAGES="$cache" bash -euo pipefail -c "$line") >"$out/step.log" 2>&1 || { cat "$out/step.log"; echo "failed: $line" >&2; exit 1; }
}
for line in "${commands[@]}"; do run "$line"; done

feed="$home/autoprune-packages"
expected="AutoPrune.AspNetCore AutoPrune.Cli AutoPrune.Extensions.AI AutoPrune.MLNet AutoPrune.Runtime AutoPrune.SemanticKernel"
packed=$(cd "$feed" && ls *.nupkg | sed -E 's/\.[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?\.nupkg$//' | sort | xargs)
if [ "$packed" != "$expected" ]; then echo "dotnet pack gave: $packed; expected exactly: $expected" >&2; exit 1; fi
for id in $expected; do
  pkg=$(ls "$feed"/$id.[0-9]*.nupkg)
  version=$(basename "$pkg" .nupkg); version=${version#"$id".}
  # Stable versions, but AutoPrune.AspNetCore's, a prerelease while its Prometheus exporter is one (see the README).
  if [ "$id" = AutoPrune.AspNetCore ]; then [[ "$version" == *-* ]] || { echo "$id $version: expected a prerelease version" >&2; exit 1; }
  else [[ "$version" != *-* ]] || { echo "$id $version: expected a stable version" >&2; exit 1; }; fi
  nuspec=$(unzip -p "$pkg" "$id.nuspec")
  for field in "<description>" "<license type=\"expression\">" "<repository " "<tags>" "<readme>README.md</readme>" "<projectUrl>"; do
    grep -qF "$field" <<<"$nuspec" || { echo "$id: the nuspec has no $field" >&2; exit 1; }
  done
  files=$(unzip -Z1 "$pkg")
  grep -qx "README.md" <<<"$files" || { echo "$id: no README.md in the package" >&2; exit 1; }
  if [ "$id" != AutoPrune.Cli ]; then
    grep -qx "lib/net10.0/$id.xml" <<<"$files" || { echo "$id: no XML documentation" >&2; exit 1; }
  fi
done
grep -q '<packageType name="DotnetTool"' <<<"$(unzip -p "$feed"/AutoPrune.Cli.[0-9]*.nupkg AutoPrune.Cli.nuspec)" \
  || { echo "AutoPrune.Cli is not a .NET tool package" >&2; exit 1; }
echo "packed: $(cd "$feed" && ls *.nupkg | xargs)"

echo "== consumer app from the packages"
# The packages the README's lines did not add, added the same way ("likewise" in the README).
for id in AutoPrune.Runtime AutoPrune.SemanticKernel AutoPrune.MLNet; do
  grep -q "\"$id\"" "$app/PackageConsumer.csproj" || run "dotnet add package $id  # in your project"
done
(cd "$app" && HOME="$home" NUGET_PACKAGES="$home/nuget-cache" dotnet build -c Release -nologo -v:q >"$out/consumer-build.log" 2>&1) \
  || { cat "$out/consumer-build.log"; exit 1; }
for id in $expected; do
  [ "$id" = AutoPrune.Cli ] || grep -q "Include=\"$id\"" "$app/PackageConsumer.csproj" || { echo "the consumer does not reference $id" >&2; exit 1; }
done
HOME="$home" dotnet "$app/bin/Release/net10.0/PackageConsumer.dll" "$root/samples/models/shapes-llava-tiny" "$root/tests/data/shapes-vqa-dev/images/0002.png"

echo "== the installed tool"
tool="$home/.dotnet/tools/autoprune"
[ -x "$tool" ] || { echo "the README's tool install left no $tool" >&2; exit 1; }
(cd "$out" && HOME="$home" "$tool" ask -i "$root/tests/data/shapes-vqa-dev/images/0002.png" -q "How many blue objects are there?" --device cpu >"$out/tool.out" 2>"$out/tool.err") \
  || { cat "$out/tool.err"; exit 1; }
answer=$(cat "$out/tool.out")
[ "$answer" = "0" ] || { echo "autoprune (the installed tool, its bundled model) answered '$answer', expected 0" >&2; cat "$out/tool.err"; exit 1; }
echo "autoprune tool: answered $answer with its bundled model"
echo "packages: ok"
