#!/usr/bin/env bash
# Packs the CLI (autoprune) with a .NET runtime into .devicepack/ for a GPU machine that has the NVIDIA driver and
# CUDA but no .NET, using the workspace's device-pack tool (DEVICE_PACK, default ../shared/tools/device-pack.sh).
# Then, on that machine, from the repository root:
#   bash .devicepack/run.sh verify --device cuda --data tests/data/shapes-vqa-dev/dev.jsonl --out $OUT/verify.json
#   bash .devicepack/run.sh bench --random-weights llava-1.5-7b --device cuda --out $OUT/speed-7b.json
set -euo pipefail
export XZ_OPT=${XZ_OPT:--9e}   # the smallest archives: the tree and the pack share the device machine's 64 MiB
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p "$(git rev-parse --git-dir)/info"
bash "${DEVICE_PACK:-../shared/tools/device-pack.sh}" samples/AutoPrune.Cli/AutoPrune.Cli.csproj
# The tool names the entry assembly after the project; the CLI's assembly is autoprune.dll.
sed -i 's|/tmp/app/AutoPrune.Cli.dll|/tmp/app/autoprune.dll|' .devicepack/run.sh
# The tool packs Microsoft.NETCore.App only; the CLI also needs ASP.NET Core's shared framework (for `serve`), without
# which it does not start at all. It goes in its own archive, unpacked next to the runtime when missing there.
droot=$(dirname "$(readlink -f "$(command -v dotnet)")")
ver=$(dotnet --list-runtimes | awk '/Microsoft.AspNetCore.App/{v=$2} END{print v}')
[ -n "$ver" ] || { echo "no Microsoft.AspNetCore.App runtime next to $droot/dotnet" >&2; exit 1; }
tar -cJf .devicepack/aspnet.tar.xz -C "$droot" "shared/Microsoft.AspNetCore.App/$ver"
sed -i 's|^rm -rf /tmp/app/\*|[ -d /tmp/dn/shared/Microsoft.AspNetCore.App/'"$ver"' ] \|\| tar -xJf "$here/aspnet.tar.xz" -C /tmp/dn\nrm -rf /tmp/app/*|' .devicepack/run.sh
grep -q aspnet.tar.xz .devicepack/run.sh || { echo "could not add the ASP.NET Core runtime to run.sh" >&2; exit 1; }
du -sh .devicepack/aspnet.tar.xz
# The published app carries the demo model, which the repository on the GPU machine has already (the CLI finds it
# from the working directory): without the copy the tree and the pack stay under the device machine's 64 MiB.
stage=$(mktemp -d)
tar -xJf .devicepack/app.tar.xz -C "$stage"
rm -rf "$stage/samples/models"
tar -cJf .devicepack/app.tar.xz -C "$stage" .
rm -rf "$stage"
du -sh .devicepack/app.tar.xz
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
pack=$(du -cb .devicepack/* | tail -1 | cut -f1)
echo "tracked files $((tree / 1048576)) MiB + .devicepack $((pack / 1048576)) MiB = $(((tree + pack) / 1048576)) MiB (the device machine takes 64 MiB)"
[ $((tree + pack)) -lt $((64 * 1048576)) ] || { echo "over the device machine's 64 MiB" >&2; exit 1; }
echo "packed: bash .devicepack/run.sh <autoprune arguments>"
