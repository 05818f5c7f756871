#!/usr/bin/env bash
# Packs the CLI (autoprune) with a .NET runtime into .devicepack/ for a GPU machine that has the NVIDIA driver and
# CUDA but no .NET, using the workspace's device-pack tool (DEVICE_PACK, default ../shared/tools/device-pack.sh).
# Then, on that machine, from the repository root:
#   bash .devicepack/run.sh verify --device cuda --data tests/data/shapes-vqa-dev/dev.jsonl --out $OUT/verify.json
#   bash .devicepack/run.sh bench --random-weights llava-1.5-7b --device cuda --out $OUT/speed-7b.json
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p "$(git rev-parse --git-dir)/info"
bash "${DEVICE_PACK:-../shared/tools/device-pack.sh}" samples/AutoPrune.Cli/AutoPrune.Cli.csproj
# The tool names the entry assembly after the project; the CLI's assembly is autoprune.dll.
sed -i 's|/tmp/app/AutoPrune.Cli.dll|/tmp/app/autoprune.dll|' .devicepack/run.sh
echo "packed: bash .devicepack/run.sh <autoprune arguments>"
